//! The command line: subcommands and their flags, as clap parses them.

use clap::{Parser, Subcommand};

use crate::emulator;

#[derive(Parser, Debug)]
#[command(
    name = "sendsms-whitelister",
    version,
    about = "Keeps a sendSMS.ro API key's IP whitelist in step with this host's egress IP."
)]
pub(crate) struct Cli {
    /// What to do; `run` when omitted, as the container image runs it.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// The sidecar: follow the egress IP, keep it whitelisted and verified, serve status (default).
    Run,
    /// Exit 0 when the local sidecar's /readyz answers 200 (a HEALTHCHECK for images without curl).
    Health {
        /// The readiness URL; defaults to SENDSMS_HEALTH_URL, else /readyz on SENDSMS_LISTEN's port.
        #[arg(long, env = "SENDSMS_HEALTH_URL")]
        url: Option<String>,
    },
    /// One pass: detect the egress IP, whitelist it through the bootstrap path if needed, verify it.
    Once,
    /// Read-only: is the egress IP whitelisted and does the key work from here? Exit 0 or 1.
    Check,
    /// Read-only, no credentials: the egress address per family, and which operators agreed.
    Detect,
    /// The whole flow against an in-process emulator, with no account and no network.
    Demo,
    /// Send one test event to every SENDSMS_NOTIFY_URLS target; exit 0 only if all accepted it.
    NotifyTest,
    /// Serve the offline sendSMS API emulator.
    Emulator(Box<emulator::args::Args>),
}
