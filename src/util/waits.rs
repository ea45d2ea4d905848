//! Visible waits: every pause longer than a moment is logged with its cause and length, and listed while it lasts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::clock::{rfc3339_ms, unix_now_ms};
use super::lock;

/// A wait up to this long is routine (a backoff step, a poll) and logged at debug only; a
/// longer one looks like a hang unless it says why, so it is logged at info and listed.
pub(crate) const VISIBLE: Duration = Duration::from_secs(2);

/// One wait in progress, as `/status` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Wait {
    /// Why, and the variable or party that decides it.
    pub(crate) cause: String,
    /// The wait's length, or its longest when it ends on someone else's move.
    pub(crate) seconds: f64,
    pub(crate) since: String,
    pub(crate) until: String,
}

/// The waits of one process: the flow creates one handle, the budgets, the coordinator and the
/// reconciler wait through it, and `/status` reads it.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    next: AtomicU64,
    current: Mutex<BTreeMap<u64, Wait>>,
}

/// A wait in progress; it leaves the list when dropped (the wait ended or was abandoned).
#[must_use = "the wait is listed only while this is held"]
pub(crate) struct Waiting<'a> {
    waits: &'a Waits,
    id: Option<u64>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.waits.current).remove(&id);
        }
    }
}

/// A length as a person reads it in a log line: `6.0s`, `1m 0.0s`.
pub(crate) fn shown(length: Duration) -> String {
    let secs = length.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m {:.1}s", (secs / 60.0).floor(), secs % 60.0)
    }
}

impl Waits {
    /// Marks the start of a wait of (at most) `length` for `cause`: longer than [`VISIBLE`], it
    /// is logged at info and listed until the returned guard drops.
    pub(crate) fn begin(&self, cause: impl fmt::Display, length: Duration) -> Waiting<'_> {
        if length <= VISIBLE {
            tracing::debug!(%cause, wait = %shown(length), "waiting");
            return Waiting {
                waits: self,
                id: None,
            };
        }
        tracing::info!(%cause, wait = %shown(length), "waiting");
        let now = unix_now_ms();
        let until = now.saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        let wait = Wait {
            cause: cause.to_string(),
            seconds: (length.as_secs_f64() * 10.0).round() / 10.0,
            since: rfc3339_ms(now),
            until: rfc3339_ms(until),
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.current).insert(id, wait);
        Waiting {
            waits: self,
            id: Some(id),
        }
    }

    /// Sleeps `length`, shown as a wait for `cause`.
    pub(crate) async fn sleep(&self, cause: impl fmt::Display, length: Duration) {
        let _waiting = self.begin(cause, length);
        tokio::time::sleep(length).await;
    }

    /// The waits in progress, oldest first.
    pub(crate) fn current(&self) -> Vec<Wait> {
        lock(&self.current).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_is_listed_while_it_lasts_and_a_short_one_never() {
        let waits = std::sync::Arc::new(Waits::default());
        let sleeper = {
            let waits = std::sync::Arc::clone(&waits);
            tokio::spawn(async move {
                waits
                    .sleep("the budget is spent", Duration::from_secs(6))
                    .await
            })
        };
        let short = waits.begin("a backoff step", VISIBLE);
        tokio::task::yield_now().await;
        let listed = waits.current();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].cause, "the budget is spent");
        assert!((listed[0].seconds - 6.0).abs() < f64::EPSILON, "{listed:?}");
        drop(short);
        sleeper.await.expect("sleeper");
        assert!(
            waits.current().is_empty(),
            "an ended wait is no longer listed"
        );
    }

    #[test]
    fn lengths_read_as_a_person_says_them() {
        assert_eq!(shown(Duration::from_millis(6_040)), "6.0s");
        assert_eq!(shown(Duration::from_secs(90)), "1m 30.0s");
    }
}
