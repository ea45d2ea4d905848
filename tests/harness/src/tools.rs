//! Free ports, the tools and privileges a test needs, and the NOT RUN record of a test that
//! could not run here.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// A free loopback port below the kernel's ephemeral range, never the same twice in one test
/// binary: a port the kernel handed out could be taken by any outgoing connection (of a fleet
/// of 100 sidecars, say) before the test's listener binds it.
pub fn free_port() -> u16 {
    static NEXT: Mutex<u16> = Mutex::new(0);
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_100));
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    if *next == 0 {
        // Test binaries running side by side start far apart.
        *next = low + (std::process::id() % u32::from(high - low)) as u16;
    }
    for _ in low..high {
        let port = *next;
        *next = if port + 1 >= high { low } else { port + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {high}");
}

/// A tool the test needs, found on PATH; None after `not_run` when it is missing.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        not_run(&format!(
            "`{name}` is not installed (scripts/test.sh installs it as root)"
        ));
    }
    found
}

/// Whether the test runs as root; false after `not_run` when it does not.
pub fn require_root() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    if !root {
        not_run("it needs root");
    }
    root
}

/// Records that the current test could not run here, and why; under `CI` it fails instead.
///
/// libtest captures what a passing test prints with `print!` and `eprint!`, so the line is
/// written to the standard error handle itself, which it does not capture, and appended to
/// the file `NOT_RUN_LOG` names (scripts/test.sh lists that file after the run).
pub fn not_run(reason: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    let line = format!("NOT RUN: {test}: {reason}\n");
    assert!(std::env::var_os("CI").is_none(), "{}", line.trim_end());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("NOT_RUN_LOG") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(e) = appended {
            panic!("NOT_RUN_LOG {}: {e}", PathBuf::from(log).display());
        }
    }
}
