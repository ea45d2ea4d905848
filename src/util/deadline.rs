//! Deadlines that travel with the task: an operation sets one, and every wait inside it (budget, store, lease, renewal) is bounded by it.

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `operation` under `deadline`, or under the earlier deadline already in force: an inner
/// operation can shorten its caller's deadline, never extend it.
pub(crate) async fn within<F: Future>(deadline: Instant, operation: F) -> F::Output {
    let deadline = current().map_or(deadline, |outer| outer.min(deadline));
    DEADLINE.scope(deadline, operation).await
}

/// Runs `cleanup` (handing back a lease, sharing a record) under its own short deadline, even
/// when the operation's has passed: what an operation holds must be given back after it ran
/// out of time too.
pub(crate) async fn cleanup<F: Future>(limit: std::time::Duration, cleanup: F) -> F::Output {
    DEADLINE.scope(Instant::now() + limit, cleanup).await
}

/// The deadline in force in this task, if any.
pub(crate) fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// `at`, or the deadline in force if that comes first.
pub(crate) fn clamp(at: Instant) -> Instant {
    current().map_or(at, |deadline| deadline.min(at))
}

/// True when something ready at `at` is ready in time.
pub(crate) fn allows(at: Instant) -> bool {
    current().is_none_or(|deadline| at <= deadline)
}

/// The deadline in force passed before the wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the operation's deadline passed")]
pub(crate) struct Expired;

/// Waits for `future`, at most until the deadline in force.
pub(crate) async fn bounded<F: Future>(future: F) -> Result<F::Output, Expired> {
    match current() {
        Some(deadline) => tokio::time::timeout_at(deadline, future)
            .await
            .map_err(|_| Expired),
        None => Ok(future.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn inner_deadlines_only_shorten_and_waits_stop_at_them() {
        let start = Instant::now();
        assert_eq!(current(), None);
        assert!(bounded(async { 1 }).await.is_ok());
        let outer = start + Duration::from_secs(5);
        within(outer, async {
            assert_eq!(current(), Some(outer));
            within(start + Duration::from_secs(60), async {
                assert_eq!(current(), Some(outer), "never extended");
            })
            .await;
            assert!(allows(outer) && !allows(outer + Duration::from_millis(1)));
            assert_eq!(clamp(start + Duration::from_secs(9)), outer);
            let waited = bounded(tokio::time::sleep(Duration::from_secs(3600))).await;
            assert_eq!(waited, Err(Expired));
            assert_eq!(start.elapsed(), Duration::from_secs(5));
            let cleaned = cleanup(Duration::from_secs(2), async {
                bounded(tokio::time::sleep(Duration::from_secs(1))).await
            })
            .await;
            assert_eq!(
                cleaned,
                Ok(()),
                "clean-up has its own time after the deadline"
            );
        })
        .await;
    }
}
