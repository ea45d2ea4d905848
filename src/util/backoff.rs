//! The one backoff: exponential delays (backon) with one jitter, for every retry and wait.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays that double from `min` up to `max`, each spread by `jitter` (0.1 is ±10 %), so a fleet
/// that failed together does not retry in step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Backoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
}

impl Backoff {
    /// The delays in order, without end.
    pub(crate) fn delays(self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_factor(2.0)
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .without_max_times()
            .build()
            .map(move |delay| jittered(delay, self.jitter))
    }

    /// The delay after `failures` failures in a row (the first failure waits `min`).
    pub(crate) fn after(self, failures: u32) -> Duration {
        self.delays()
            .nth(failures.saturating_sub(1).min(64) as usize)
            .unwrap_or(self.max)
    }
}

/// `delay` spread uniformly over ±`spread` of itself (`spread` is clamped to 0..=1).
pub(crate) fn jittered(delay: Duration, spread: f64) -> Duration {
    let spread = spread.clamp(0.0, 1.0);
    if spread == 0.0 {
        return delay;
    }
    delay.mul_f64(rand::random_range(1.0 - spread..=1.0 + spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn delays_double_up_to_the_cap() {
        let backoff = Backoff {
            min: SECOND,
            max: 5 * SECOND,
            jitter: 0.0,
        };
        let first: Vec<u64> = backoff.delays().take(5).map(|d| d.as_secs()).collect();
        assert_eq!(first, [1, 2, 4, 5, 5]);
        assert_eq!(backoff.after(0), SECOND);
        assert_eq!(backoff.after(1), SECOND);
        assert_eq!(backoff.after(3), 4 * SECOND);
        assert_eq!(backoff.after(u32::MAX), 5 * SECOND);
    }

    #[test]
    fn jitter_stays_within_its_spread_and_moves() {
        let samples: Vec<Duration> = (0..200).map(|_| jittered(10 * SECOND, 0.1)).collect();
        assert!(
            samples
                .iter()
                .all(|d| (9 * SECOND..=11 * SECOND).contains(d))
        );
        assert!(samples.iter().any(|d| *d != samples[0]), "no jitter at all");
        assert_eq!(jittered(10 * SECOND, 0.0), 10 * SECOND);
    }
}
