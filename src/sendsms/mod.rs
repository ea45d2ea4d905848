//! The sendSMS JSON API: its wire format, the key's whitelist, and a hardened client per route.

pub(crate) mod api;
mod client;
pub(crate) mod whitelist;

pub(crate) use api::{ApiError, Verdict};
pub(crate) use client::{Added, BootstrapPath, BuildError, CallObserver, Routes, Settings};
pub(crate) use whitelist::Whitelist;
