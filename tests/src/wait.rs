//! Polling a condition until a deadline.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use crate::env::POLL_INTERVAL;

/// What a [`wait_for`] condition returns: `Some(v)`/`Ok(v)` when it holds,
/// `None` or `Err(observed)` when not yet — with `Err`, the last observation
/// is in the timeout message.
pub trait Attempt {
    type Value;
    fn into_result(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Attempt for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: fmt::Display> Attempt for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// Calls `f` every [`POLL_INTERVAL`] until it yields a value and returns it;
/// panics naming `what` (and the last `Err` seen) once `deadline` has passed.
#[track_caller]
pub fn wait_for<A: Attempt>(deadline: Duration, what: &str, mut f: impl FnMut() -> A) -> A::Value {
    let start = Instant::now();
    let end = start + deadline;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match f().into_result() {
            Ok(v) => return v,
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= end {
            let last = last.unwrap_or_else(|| "nothing (the condition returned None)".into());
            panic!(
                "timed out after {:.1?} waiting for {what} ({attempts} attempts); last observed: {last}",
                now - start
            );
        }
        thread::sleep(POLL_INTERVAL.min(end - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn wait_for_returns_the_first_value() {
        let mut n = 0;
        let v = wait_for(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n * 10)
        });
        assert_eq!(v, 30);
    }

    #[test]
    fn wait_for_times_out_with_what_and_the_last_observation() {
        let start = Instant::now();
        let mut n = 0;
        let err = catch_unwind(AssertUnwindSafe(|| {
            wait_for(Duration::from_millis(350), "the moon", || -> Result<(), String> {
                n += 1;
                Err(format!("saw {n}"))
            })
        }))
        .unwrap_err();
        let elapsed = start.elapsed();
        let msg = panic_text(err);
        assert!(msg.contains("waiting for the moon"), "{msg}");
        assert!(msg.contains(&format!("last observed: saw {n}")), "{msg}");
        assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
        // ~every 100 ms: neither a busy loop nor one try.
        assert!((3..=6).contains(&n), "{n} attempts");
    }

    #[test]
    fn wait_for_with_option_says_it_saw_none() {
        let err = catch_unwind(|| wait_for(Duration::from_millis(10), "nothing", || None::<()>)).unwrap_err();
        let msg = panic_text(err);
        assert!(msg.contains("waiting for nothing"), "{msg}");
        assert!(msg.contains("returned None"), "{msg}");
    }
}
