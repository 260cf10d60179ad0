//! Exponential backoff: `base`, `2 × base`, `4 × base`, … never above `max`.
//!
//! [`Backoff`] is the policy and a pure function of the attempt number, for
//! cores that keep their own count (and take `now` as an argument);
//! [`Retries`] keeps the count for a plain retry loop.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The wait before retry number `attempt`, counted from 0: `base × 2^attempt`,
    /// capped at `max`. Never overflows, whatever the attempt.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1u32 << attempt.min(31)).min(self.max)
    }

    /// A fresh count of attempts under this policy.
    pub fn retries(self) -> Retries {
        Retries { backoff: self, attempt: 0 }
    }
}

/// A retry loop's count of failed attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retries {
    backoff: Backoff,
    attempt: u32,
}

impl Retries {
    /// The wait after one more failure: `base` the first time, then doubling.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// After a success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_doubles_from_base_up_to_the_cap() {
        let backoff = Backoff::new(ms(200), ms(5_000));
        let delays: Vec<Duration> = (0..7).map(|attempt| backoff.delay(attempt)).collect();
        assert_eq!(delays, [ms(200), ms(400), ms(800), ms(1_600), ms(3_200), ms(5_000), ms(5_000)]);
    }

    #[test]
    fn delay_never_overflows() {
        let backoff = Backoff::new(ms(500), ms(30_000));
        for attempt in [31, 32, 64, 1_000, u32::MAX] {
            assert_eq!(backoff.delay(attempt), ms(30_000), "attempt {attempt}");
        }
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(u32::MAX), Duration::MAX);
    }

    #[test]
    fn a_cap_below_base_wins() {
        assert_eq!(Backoff::new(ms(100), ms(50)).delay(0), ms(50));
    }

    #[test]
    fn retries_count_failures_and_start_over_after_a_reset() {
        let mut retries = Backoff::new(ms(100), ms(2_000)).retries();
        let first: Vec<Duration> = (0..7).map(|_| retries.next_delay()).collect();
        assert_eq!(first, [ms(100), ms(200), ms(400), ms(800), ms(1_600), ms(2_000), ms(2_000)]);
        retries.reset();
        assert_eq!(retries.next_delay(), ms(100));
        assert_eq!(retries.next_delay(), ms(200));
    }

    #[test]
    fn retries_keep_the_cap_after_many_failures() {
        let mut retries = Backoff::new(ms(50), ms(1_000)).retries();
        for _ in 0..100 {
            retries.next_delay();
        }
        assert_eq!(retries.next_delay(), ms(1_000));
    }
}
