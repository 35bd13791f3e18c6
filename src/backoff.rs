//! Exponential backoff, capped, for everything that retries: store calls, lease acquisition, reconcile passes.

use std::time::Duration;

/// Exponential backoff, capped: each delay doubles the previous one until `max`; `reset` starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { next: min, min, max }
    }

    /// Retrying a lease store that does not answer: 100 ms, 200 ms, ... 5 s. Short enough that a store coming
    /// back is noticed quickly, long enough that a down store is not hammered.
    pub fn store() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay to wait now; the following one doubles, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::store();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn a_cap_below_twice_the_minimum_holds_at_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_millis(300));
        let delays: Vec<u128> = (0..3).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![200, 300, 300]);
    }
}
