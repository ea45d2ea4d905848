//! The binary under test: where cargo put it, and one-shot runs of its commands.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::child::Watched;
use crate::secrets::register_env;

/// Longer than any run a test makes (the slowest ride out a minute of rate limiting), short
/// enough that a hung run fails the test instead of the CI job's time limit.
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

/// The `sendsms-whitelister` binary cargo built beside this test: a test executable lives in
/// `<target>/<profile>/deps/`, the binary in `<target>/<profile>/` (as `assert_cmd` finds it).
/// That holds in any target directory, cargo-mutants' copied trees included.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let test = std::env::current_exe().expect("the test executable's path");
        let mut dir = test
            .parent()
            .expect("the test executable's directory")
            .to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let binary = dir.join(format!(
            "sendsms-whitelister{}",
            std::env::consts::EXE_SUFFIX
        ));
        assert!(
            binary.is_file(),
            "{} is missing: run the tests through cargo, which builds it",
            binary.display()
        );
        binary
    })
}

/// The binary (after `prefix`, a command that runs it, such as `ip netns exec NS`) with `args`
/// and exactly `env` plus PATH; every secret in `env` joins the leak check.
pub(crate) fn command(prefix: &[&str], args: &[&str], env: &[(String, String)]) -> Command {
    register_env(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut command = match prefix.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(binary());
            command
        }
        None => Command::new(binary()),
    };
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs the binary with exactly `env` (plus PATH) to its end; no secret may be in its output.
pub async fn run(args: &[&str], env: &[(String, String)]) -> Run {
    let started = Instant::now();
    let label = format!("sendsms-whitelister {}", args.join(" "));
    let mut child = Watched::spawn(label, command(&[], args, env));
    let exited = child.wait(RUN_LIMIT).await;
    Run {
        code: exited.code,
        stdout: exited.stdout,
        stderr: exited.stderr,
        elapsed: started.elapsed(),
    }
}
