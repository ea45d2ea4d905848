//! sendsms-whitelister: keeps a sendSMS.ro API key's IP whitelist in step with this host's egress IP.
//!
//! The modules, one line each, in layers; each uses only the ones above it (checked by
//! `tests/architecture.rs`, which reads this list):
//!
//! - leaves:
//!   - `net`: address families and which addresses are public.
//!   - `secret`: credentials and URLs that are never shown whole.
//!   - `util`: one lock idiom, one clock, one backoff with jitter, deadlines that bound every wait, atomic file writes, visible waits.
//!   - `http`: the hardened HTTP client every outgoing call uses.
//!   - `netwatch`: this host's addresses, followed through rtnetlink as they change.
//!   - `metrics`: every count and gauge, for `/metrics` and `/status` alike.
//!   - `logging`: where logs go and how `RUST_LOG` filters them.
//!   - `emulator`: the offline stand-in for the sendSMS API (used only by commands).
//! - domain:
//!   - `detect`: the egress IP, by a quorum of independent operators.
//!   - `sendsms`: the API's wire format, the whitelist, and a client per route.
//!   - `budget`: this process's sliding-minute API budget.
//!   - `state`: verified IPs kept across restarts.
//! - flow:
//!   - `reconcile`: make one IP whitelisted and prove it (the `Api` trait is its contract).
//!   - `coord`: the fleet protocol over a file or Redis store.
//!   - `flow`: the one place that chooses coordinated or alone and wires budgets and metrics.
//! - loop:
//!   - `notify`: webhooks and heartbeats, fed by the loop without ever blocking it.
//!   - `status`: the state the loop writes and the servers read.
//!   - `sidecar`: the control loop of `run`.
//!   - `gateway`: the drop-in sendSMS API for the app, holding calls across an egress change.
//!   - `server`: the one hardened HTTP server (timeouts, size limits, connection cap, liveness lane) and the status routes.
//! - configuration:
//!   - `config`: the `SENDSMS_*` environment, checked, split into each part's settings.
//! - commands:
//!   - `cli`: the command line as clap parses it.
//!   - `cmd`: one module per command, and the error every command returns.
//! - main:
//!   - `app`: runs a command and maps its end to the documented exit code.
//!
//! Only [`main`] and the [`emulator`] (for embedding in other tests) are public: the binary is
//! the product, and everything else is `pub(crate)`.
#![warn(missing_docs)]

mod app;
mod budget;
mod cli;
mod cmd;
mod config;
mod coord;
mod detect;
pub mod emulator;
mod flow;
mod gateway;
mod http;
mod logging;
mod metrics;
mod net;
mod netwatch;
mod notify;
mod reconcile;
mod secret;
mod sendsms;
mod server;
mod sidecar;
mod state;
mod status;
mod util;

#[cfg(test)]
mod testing;

pub use app::main;
