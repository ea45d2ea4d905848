//! Build facts for `sendsms_whitelister_build_info`: the target triple, and the commit (from
//! `SENDSMS_WHITELISTER_COMMIT` as release builds set it, else `git`, else "unknown").

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SENDSMS_WHITELISTER_COMMIT");
    // Only paths that exist: a missing one would rerun this on every build (a worktree's
    // `.git` is a file, and an image build has none).
    for path in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let commit = std::env::var("SENDSMS_WHITELISTER_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SENDSMS_WHITELISTER_TARGET={target}");
    println!("cargo:rustc-env=SENDSMS_WHITELISTER_COMMIT={commit}");
}
