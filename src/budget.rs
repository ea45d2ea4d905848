//! The process-wide sendSMS call budget: at most N calls in any sliding minute; calls beyond it wait, never past the deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::util::deadline;
use crate::util::waits::Waits;

/// No call fits in the budget before the deadline of the operation that wants it: the call is
/// not made, rather than made late.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "the API budget ({per_window} calls per {window:?}) has no room before the deadline (the next call fits in {wait:.1?})"
)]
pub(crate) struct Exhausted {
    pub(crate) per_window: usize,
    pub(crate) window: Duration,
    pub(crate) wait: Duration,
}

/// The provider allows 10 unbilled queries per minute per account, shared by every pod of the
/// fleet and the app itself; this keeps one sidecar well inside that.
pub(crate) struct ApiBudget {
    per_window: usize,
    window: Duration,
    /// When each call of the current window started; the lock is held while waiting, so callers
    /// are served in order.
    calls: Mutex<VecDeque<Instant>>,
    waits: Arc<Waits>,
}

impl ApiBudget {
    pub(crate) fn per_minute(calls: u32) -> Self {
        Self::new(calls, Duration::from_secs(60))
    }

    pub(crate) fn new(calls: u32, window: Duration) -> Self {
        ApiBudget {
            per_window: calls.max(1) as usize,
            window,
            calls: Mutex::new(VecDeque::new()),
            waits: Arc::default(),
        }
    }

    /// Shows its waits in `waits` (logged, and listed in `/status`).
    pub(crate) fn shown_in(mut self, waits: Arc<Waits>) -> Self {
        self.waits = waits;
        self
    }

    /// Waits until a call fits in the window, then books it; fails at once when it would not
    /// fit before the deadline in force. Time is the monotonic clock, so a step of the wall
    /// clock changes nothing.
    pub(crate) async fn acquire(&self) -> Result<(), Exhausted> {
        let exhausted = |wait| Exhausted {
            per_window: self.per_window,
            window: self.window,
            wait,
        };
        let mut calls = deadline::bounded(self.calls.lock())
            .await
            .map_err(|_| exhausted(Duration::ZERO))?;
        loop {
            let now = Instant::now();
            while calls
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                calls.pop_front();
            }
            if calls.len() < self.per_window {
                calls.push_back(now);
                return Ok(());
            }
            if let Some(oldest) = calls.front().copied() {
                let free = oldest + self.window;
                if !deadline::allows(free) {
                    return Err(exhausted(free - now));
                }
                let cause = format!(
                    "this process's API budget (SENDSMS_API_BUDGET={} calls a minute) is spent",
                    self.per_window
                );
                let _waiting = self.waits.begin(cause, free - now);
                tokio::time::sleep_until(free).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_beyond_the_budget_waits_for_the_window() {
        let budget = ApiBudget::new(3, Duration::from_secs(60));
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire().await.expect("room");
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        let refused = deadline::within(start + Duration::from_secs(5), budget.acquire()).await;
        let wait = refused.expect_err("no room before the deadline").wait;
        assert!(wait > Duration::from_secs(59), "{wait:?}");
        assert!(start.elapsed() < Duration::from_secs(1), "refused at once");
        budget.acquire().await.expect("room later");
        assert!(
            start.elapsed() >= Duration::from_secs(60),
            "the fourth call waited a window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_the_budget_is_shown_while_it_lasts() {
        let waits = Arc::new(Waits::default());
        let budget =
            Arc::new(ApiBudget::new(1, Duration::from_secs(60)).shown_in(Arc::clone(&waits)));
        budget.acquire().await.expect("room");
        let second = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.acquire().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let listed = waits.current();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(
            listed[0].cause.contains("SENDSMS_API_BUDGET=1"),
            "{listed:?}"
        );
        assert!(listed[0].seconds >= 59.0, "{listed:?}");
        second.await.expect("second call").expect("room");
        assert!(waits.current().is_empty());
    }
}
