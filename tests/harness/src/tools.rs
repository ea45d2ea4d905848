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

/// A test network's /24, `198.18.N.0/24` (RFC 2544's benchmarking range), held exclusively
/// by this test until dropped. Two test runs on one machine (a developer's and CI's, or two
/// worktrees) would otherwise put the same subnet on two host links, and the kernel would
/// route one run's packets into the other's namespace. The claim is an advisory lock on a
/// file per subnet, so it holds across processes and threads and ends with the process.
#[derive(Debug)]
pub struct Subnet {
    /// The third octet.
    pub n: u8,
    _lock: std::fs::File,
}

/// The first free subnet from `preferred` on (198.18.250.0/24 and above are left to tests that
/// need an address no link has).
pub fn claim_subnet(preferred: u8) -> Subnet {
    const SUBNETS: u16 = 250;
    let dir = std::env::temp_dir().join("sendsms-whitelister-test-subnets");
    std::fs::create_dir_all(&dir).expect("the subnet lock directory");
    (0..SUBNETS)
        .map(|offset| ((u16::from(preferred) + offset) % SUBNETS) as u8)
        .find_map(|n| {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(n.to_string()))
                .expect("a subnet lock file");
            file.try_lock().ok().map(|()| Subnet { n, _lock: file })
        })
        .expect("a free test subnet: all 250 are claimed")
}
