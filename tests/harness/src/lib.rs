//! The integration tests' harness: the real binary and every process a test starts, each
//! checked for leaked secrets once its output is fully drained.
//!
//! Layout, one module per role:
//! - `secrets`: the secrets tests hand to processes, and the one leak check for all output;
//! - `child`: a child process whose output is drained by its own threads and checked when it
//!   ends, however it ends (exit, SIGTERM, SIGKILL, drop);
//! - `binary`: where the binary under test is, and one-shot command-line runs of it;
//! - `http`: HTTP clients for the tests' own requests;
//! - `emulator`: the sendSMS API emulator as a child process;
//! - `gateway`: sends through the gateway as an app would, and the message log's verdict;
//! - `sidecar`: `run` as a child process, and its status server as seen from a test;
//! - `servers`: small loopback servers a test controls (liars, traps, a switchable echo);
//! - `redis`: a throwaway `redis-server`;
//! - `env`: environment lists for a child;
//! - `tools`: free ports, test subnets claimed across processes, required tools and root, and
//!   the NOT RUN record of a skipped test.
//!
//! The harness never calls into the crate under test: it sees only the binary's command line,
//! environment, output, exit codes and HTTP endpoints.

mod binary;
mod child;
mod emulator;
mod env;
pub mod gateway;
mod http;
mod redis;
mod secrets;
mod servers;
mod sidecar;
mod tools;

pub use binary::{Run, binary, run};
pub use child::{Exited, Watched};
pub use emulator::{Emulator, USERNAME};
pub use env::{Env, with, without};
pub use http::http_client;
pub use redis::RedisServer;
pub use secrets::{KEY, assert_clean, secret};
pub use servers::{Recorded, SwitchableEcho, fixed_http, raw_server, wait_for_port};
pub use sidecar::{Sidecar, StatusClient};
pub use tools::{Subnet, claim_subnet, free_port, not_run, require_root, require_tool};
