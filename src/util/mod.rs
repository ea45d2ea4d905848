//! Small shared tools with no domain knowledge: one lock idiom, one clock, one backoff, deadlines, atomic writes, visible waits.

pub(crate) mod atomic;
pub(crate) mod backoff;
pub(crate) mod clock;
pub(crate) mod deadline;
pub(crate) mod waits;

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking over a poisoned one: every value guarded in this crate is replaced or
/// updated whole under its lock, so a panic elsewhere cannot leave it half-changed.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This host's name: the pod or container name in Kubernetes and Docker (`HOSTNAME`), else the
/// kernel's.
pub(crate) fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".into())
}
