//! sendsms-whitelister: keeps a sendSMS.ro API key's IP whitelist in step with this host's egress IP.

pub mod budget;
pub mod cli;
pub mod config;
pub mod coord;
pub mod demo;
pub mod detect;
pub mod emulator;
pub mod http;
pub mod metrics;
pub mod reconcile;
pub mod sendsms;
pub mod sidecar;
pub mod state;
pub mod status;
