//! Retrying and waiting, in one place: a capped exponential backoff for
//! attempts that may fail (revoking a credential), and polling a condition
//! until a deadline (a process group gone, leases ended).

use std::time::{Duration, Instant};

/// Delays between attempts: `first`, then each `factor` times the one
/// before, never more than `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    factor: u32,
    max: Duration,
}

impl Backoff {
    /// A backoff starting at `first`.
    pub fn new(first: Duration, factor: u32, max: Duration) -> Backoff {
        Backoff {
            next: first.min(max),
            factor,
            max,
        }
    }

    /// The delay before the next attempt; the one after grows.
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = self.next.saturating_mul(self.factor).min(self.max);
        now
    }

    /// Sleeps for [`next_delay`](Self::next_delay).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

/// Checks `done` every `every` until it holds or `deadline` passes; returns
/// whether it held.
pub async fn poll_until(
    deadline: Instant,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_its_factor_up_to_its_cap() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), 3, ms(1000));
        let got: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(got, [ms(100), ms(300), ms(900), ms(1000), ms(1000)]);
    }

    #[tokio::test]
    async fn polling_stops_when_the_condition_holds_or_time_is_up() {
        let mut n = 0;
        let held = poll_until(
            Instant::now() + Duration::from_secs(60),
            Duration::from_millis(1),
            || {
                n += 1;
                n == 3
            },
        )
        .await;
        assert!(held);
        assert_eq!(n, 3);
        let never = poll_until(Instant::now(), Duration::from_millis(1), || false).await;
        assert!(!never);
    }
}
