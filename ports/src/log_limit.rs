//! Rate limiting for log lines that a peer can make repeat (a frontend that connects and
//! fails in a loop must not flood the log).

use std::time::{Duration, Instant};

/// Lets one line through per `interval`, and counts the ones it held back.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log now. `Some(n)`: log, mentioning the `n` similar lines suppressed since
    /// the last one logged; `None`: stay quiet (counted).
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        for s in 1..10 {
            assert_eq!(l.check_at(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(l.check_at(t0 + Duration::from_secs(10)), Some(9));
        assert_eq!(l.check_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(25)), Some(1));
    }
}
