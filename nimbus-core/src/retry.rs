//! Retrying outgoing calls that may fail for a moment — GitHub, the metadata
//! sink, the log sink, a store deadlock — with exponential back-off and jitter,
//! through [`backon`] rather than hand-written loops. Each caller says what is
//! worth retrying (`when`) and may stretch a wait to what the server asked for
//! (`adjust`, e.g. `Retry-After`).

use std::time::Duration;

pub use backon::{Backoff, BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};

/// At most `attempts` tries in all, the first wait `first`, doubling up to `cap`,
/// with jitter so that many clients failing together do not retry in step.
pub fn exponential(first: Duration, cap: Duration, attempts: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(cap)
        .with_max_times(attempts.saturating_sub(1))
        .with_jitter()
}

/// Waits of an endless retry (a queue that must not lose what it holds): `first`,
/// doubling up to `cap`, with jitter. Build a fresh one after each success.
pub fn forever(first: Duration, cap: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(cap)
        .without_max_times()
        .with_jitter()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_stop_after_the_attempts() {
        let waits: Vec<Duration> =
            exponential(Duration::from_millis(100), Duration::from_millis(300), 4)
                .build()
                .collect();
        assert_eq!(waits.len(), 3, "four attempts, three waits");
        for (wait, base) in waits.iter().zip([100u64, 200, 300]) {
            // Jitter adds up to the base wait again.
            assert!(
                *wait >= Duration::from_millis(base) && *wait <= Duration::from_millis(base * 2),
                "{wait:?} for {base} ms"
            );
        }
        let mut endless = forever(Duration::from_millis(1), Duration::from_millis(2));
        assert!((0..1000).all(|_| endless.next().is_some()));
    }
}
