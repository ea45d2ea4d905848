//! The program: parse the command line, run one command, and turn how it ended into an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};
use crate::cmd::{self, Error, Outcome};
use crate::flow::{BuildError, EnsureError};
use crate::logging;
use crate::reconcile::ReconcileError;

/// The exit codes the README documents, in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Exit {
    /// Whitelisted and verified (`check`: the current IP is usable).
    Success = 0,
    /// `check`: the current IP is not usable; `health`: the sidecar is not ready.
    NotUsable = 1,
    /// A configuration error; the message names the variable and a right value.
    Config = 2,
    /// The egress IP could not be determined.
    Detection = 3,
    /// The API refused the bootstrap path, or the bootstrap path cannot be reached.
    BootstrapRefused = 4,
    /// Verification did not succeed in time, or the API stayed unreachable, or another fleet
    /// member held the lease for too long.
    NotVerified = 5,
    /// The process could not start what it needs: the async runtime, a listener whose port is
    /// taken, or the emulator stopped.
    Startup = 6,
}

/// The one mapping from a failure to its exit code.
fn exit_code(error: &Error) -> Exit {
    match error {
        Error::Config(_) | Error::Build(BuildError::Client(_) | BuildError::Store(_)) => {
            Exit::Config
        }
        // Something answered at SENDSMS_API_URL, but not the API: the URL is wrong.
        Error::Ensure(EnsureError::Reconcile(ReconcileError::NotTheApi(_)))
        | Error::Check(ReconcileError::NotTheApi(_)) => Exit::Config,
        Error::Detect(_) => Exit::Detection,
        Error::Ensure(EnsureError::Reconcile(
            ReconcileError::BootstrapRefused { .. } | ReconcileError::BootstrapUnreachable { .. },
        )) => Exit::BootstrapRefused,
        Error::Ensure(_) | Error::Check(_) => Exit::NotVerified,
        Error::NotReady(_) => Exit::NotUsable,
        // An address this host does not have is a mistake in the configuration; a port that
        // another process holds is not.
        Error::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrNotAvailable => {
            Exit::Config
        }
        Error::Bind { .. } | Error::Startup { .. } => Exit::Startup,
        Error::Demo { source, .. } => exit_code(source),
    }
}

/// The command line, with the variables each configured command reads in its help.
fn command() -> clap::Command {
    let variables = crate::config::variables()
        .chunks(4)
        .map(|line| format!("  {}", line.join(", ")))
        .collect::<Vec<_>>()
        .join("\n");
    let help = format!(
        "Configured by the environment (see the README's Configuration table):\n{variables}"
    );
    ["run", "once", "check"]
        .into_iter()
        .fold(Cli::command(), |command, name| {
            command.mut_subcommand(name, |sub| sub.after_help(help.clone()))
        })
}

/// Runs the command the command line names and exits with its documented code.
pub fn main() -> ExitCode {
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let command = cli.command.unwrap_or(Command::Run);
    // `run` reads its configuration first: the gateway serves apps on every core, while
    // everything else is one thread's light work.
    let run_config = match command {
        Command::Run => Some(cmd::load_config("info")),
        _ => None,
    };
    let mut builder = match &run_config {
        Some(Ok(config)) if config.gateway.is_some() => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|source| Error::Startup {
            what: "the async runtime cannot start",
            source,
        });
    let result = runtime.and_then(|runtime| {
        runtime.block_on(async {
            match command {
                Command::Run => match run_config {
                    Some(config) => cmd::run::run(config?).await,
                    None => cmd::run::run(cmd::load_config("info")?).await,
                },
                Command::Health { url } => cmd::health::run(url).await,
                Command::Once => cmd::once::run(&cmd::load_config("info")?).await,
                Command::Check => cmd::check::run(&cmd::load_config("warn")?).await,
                Command::Detect => cmd::detect::run().await,
                Command::NotifyTest => cmd::notify_test::run().await,
                Command::Demo => {
                    logging::init(None, "warn");
                    cmd::demo::run().await
                }
                Command::Emulator(args) => {
                    let sub = matches
                        .subcommand_matches("emulator")
                        .cloned()
                        .unwrap_or_default();
                    cmd::emulator::run(*args, &sub).await
                }
            }
        })
    });
    let exit = match result {
        Ok(Outcome::Success) => Exit::Success,
        Ok(Outcome::NotUsable) => Exit::NotUsable,
        Err(error) => {
            // As for standard output (`say!`): a closed standard error must not turn the
            // documented exit code into a panic's.
            let _ = writeln!(std::io::stderr().lock(), "error: {error}");
            exit_code(&error)
        }
    };
    ExitCode::from(exit as u8)
}
