//! The commands: each builds what it needs from the configuration, runs, and says how it ended.

/// One line of a command's result on standard output, as `println!` takes it. A closed or
/// broken standard output is not a failure of the command: what it did stays done and its
/// exit code stands, so the write error is dropped instead of panicking.
macro_rules! say {
    () => {
        $crate::cmd::say_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cmd::say_line(format_args!($($arg)*))
    };
}

pub(crate) mod check;
pub(crate) mod demo;
pub(crate) mod detect;
pub(crate) mod emulator;
pub(crate) mod health;
pub(crate) mod notify_test;
pub(crate) mod once;
pub(crate) mod run;

use std::io::Write;

use crate::config::{Config, ConfigError};
use crate::detect::DetectError;
use crate::flow::{BuildError, EnsureError};
use crate::logging;
use crate::reconcile::ReconcileError;

/// How a command that ran to its end came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// `check`: the current IP is not usable.
    NotUsable,
}

/// Why a command failed; `app` maps each to its documented exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Ensure(#[from] EnsureError),
    /// A read-only check that found the API unusable.
    #[error(transparent)]
    Check(#[from] ReconcileError),
    /// `health`: the sidecar is not ready, or did not answer.
    #[error("{0}")]
    NotReady(String),
    /// A listener could not be bound: `what` names the variable or flag and the address.
    #[error("{what} cannot be bound: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    /// Something the process needs to start did not start, or stopped (the runtime, the emulator).
    #[error("{what}: {source}")]
    Startup {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("demo step '{step}' failed: {source}")]
    Demo {
        step: &'static str,
        source: Box<Error>,
    },
}

/// What `say!` expands to.
pub(crate) fn say_line(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// The configuration, then logging as it asks; a plain-http API URL on another host is
/// allowed only by an explicit override, and then said loudly on every start.
pub(crate) fn load_config(default_level: &str) -> Result<Config, Error> {
    let config = Config::from_env()?;
    config.check_host()?;
    logging::init(config.log_format, default_level);
    let url = &config.flow.api.url;
    if url.scheme() == "http" && !crate::config::host_is_loopback(url) {
        tracing::warn!(
            host = url.host_str().unwrap_or(""),
            "SENDSMS_ALLOW_INSECURE_API_URL is set: the API key travels in clear text"
        );
    }
    Ok(config)
}
