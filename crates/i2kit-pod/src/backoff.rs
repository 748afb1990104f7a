//! Container restart back-off, as the kubelet does it (`CrashLoopBackOff`):
//! 10 s after the first exit, doubling, capped at 5 minutes, and forgotten once
//! a container has run for 10 minutes without exiting.

use std::time::Duration;

/// The first delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The cap (kubelet's `MaxContainerBackOff`).
pub const MAX: Duration = Duration::from_secs(300);
/// A run this long resets the back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// Tracks one container's restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Consecutive quick failures.
    pub failures: u32,
}

impl Backoff {
    /// Record an exit after `ran` and return how long to wait before restarting.
    pub fn next_delay(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.failures = 0;
        }
        let delay = INITIAL
            .checked_mul(1u32 << self.failures.min(16))
            .unwrap_or(MAX)
            .min(MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let quick = Duration::from_secs(1);
        let got: Vec<u64> = (0..8).map(|_| b.next_delay(quick).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(
            b.next_delay(Duration::from_secs(601)).as_secs(),
            10,
            "a long run resets it"
        );
        assert_eq!(b.next_delay(quick).as_secs(), 20);
        for _ in 0..100 {
            b.next_delay(quick);
        }
        assert_eq!(b.next_delay(quick), MAX, "no overflow after many failures");
    }
}
