//! A token bucket kept as one atomic: GCRA's theoretical arrival time, so a
//! reservation is one compare-and-swap and settling to real usage is one
//! more (a refund moves the time back, an overrun moves it on). Unlike a
//! request limiter it takes any cost, and it admits a request larger than
//! the whole bucket when the bucket is full, so a big `max_tokens` is slow
//! rather than impossible.

use super::spec::Window;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds on a process-wide monotonic clock.
pub fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

#[derive(Debug)]
pub struct TokenBucket {
    capacity: u64,
    period_ns: u64,
    /// Nanoseconds per token.
    interval: f64,
    /// When the bucket would be full again; at or before now: it is full.
    tat: AtomicU64,
}

impl TokenBucket {
    pub fn new(capacity: u64, period: Duration) -> Self {
        let period_ns = period.as_nanos() as u64;
        TokenBucket {
            capacity,
            period_ns,
            interval: period_ns as f64 / capacity as f64,
            tat: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Takes `cost` tokens, or says how long until they are there.
    pub fn reserve(&self, cost: u64, now: u64) -> Result<Window, Duration> {
        let need = self.span(cost.min(self.capacity));
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let base = current.max(now);
            if let Some(wait) = self.wait_from(base, need, now) {
                return Err(wait);
            }
            let next = base.saturating_add(self.span(cost));
            match self
                .tat
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(self.window(next, now)),
                Err(actual) => current = actual,
            }
        }
    }

    /// How long until `cost` tokens are there (none: they are now),
    /// without taking them.
    pub fn wait_for(&self, cost: u64, now: u64) -> Option<Duration> {
        let base = self.tat.load(Ordering::Acquire).max(now);
        self.wait_from(base, self.span(cost.min(self.capacity)), now)
    }

    /// The wait for `need` nanoseconds of refill when the bucket would be
    /// full at `base`.
    fn wait_from(&self, base: u64, need: u64, now: u64) -> Option<Duration> {
        let conforms_at = base.saturating_add(need).saturating_sub(self.period_ns);
        (conforms_at > now).then(|| Duration::from_nanos(conforms_at - now))
    }

    /// Corrects a reservation by `delta` tokens: negative gives back what
    /// was not used, positive charges what was used beyond it.
    pub fn adjust(&self, delta: i64, now: u64) {
        if delta == 0 {
            return;
        }
        let step = self.span(delta.unsigned_abs());
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                let base = tat.max(now);
                Some(if delta > 0 {
                    base.saturating_add(step)
                } else {
                    base.saturating_sub(step).max(now)
                })
            });
    }

    /// What is left now, without taking anything.
    pub fn peek(&self, now: u64) -> Window {
        self.window(self.tat.load(Ordering::Acquire).max(now), now)
    }

    /// Nanoseconds `tokens` take to refill, rounded up.
    fn span(&self, tokens: u64) -> u64 {
        ceil_u64(tokens as f64 * self.interval)
    }

    fn window(&self, tat: u64, now: u64) -> Window {
        let debt = tat.saturating_sub(now);
        let free = self.period_ns.saturating_sub(debt);
        Window {
            limit: self.capacity,
            remaining: ((free as f64 / self.interval) as u64).min(self.capacity),
            reset: Duration::from_nanos(debt),
        }
    }
}

/// `value.ceil() as u64` for a value that is not negative, without the
/// library call `f64::ceil` is on baseline x86-64 (several per request).
fn ceil_u64(value: f64) -> u64 {
    let whole = value as u64;
    whole.saturating_add(u64::from((whole as f64) < value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest limits the configuration keeps (one token a
    /// nanosecond) count a request's tokens to the token; above them a
    /// nanosecond of refill is many tokens, and a request's cost rounds up
    /// to whole ones.
    #[test]
    fn at_a_token_a_nanosecond_costs_are_counted_to_the_token() {
        for (capacity, period) in [
            (60_000_000_000, Duration::from_secs(60)),
            (86_400_000_000_000, Duration::from_secs(86_400)),
        ] {
            let bucket = TokenBucket::new(capacity, period);
            let window = bucket.reserve(37, 1_000).unwrap();
            let taken = capacity - window.remaining;
            assert!((37..=38).contains(&taken), "{taken} taken for 37");
        }
        let finer = TokenBucket::new(1_000_000_000_000, Duration::from_secs(60));
        let taken = 1_000_000_000_000 - finer.reserve(37, 1_000).unwrap().remaining;
        assert!(taken > 38, "finer than a nanosecond: {taken} taken for 37");
    }

    #[test]
    fn rounding_up_matches_ceil() {
        let mut rng = fastrand::Rng::with_seed(3);
        let values = [
            0.0,
            0.5,
            1.0,
            1.000_000_1,
            2.5,
            1e15,
            1e15 + 0.5,
            1.8e19,
            1e20,
        ]
        .into_iter()
        .chain((0..100_000).map(|_| rng.f64() * 10f64.powi(rng.i32(0..19))));
        for value in values {
            assert_eq!(ceil_u64(value), value.ceil() as u64, "{value}");
        }
        let bucket = TokenBucket::new(3, Duration::from_secs(1));
        assert_eq!(bucket.span(1), 333_333_334);
        assert_eq!(bucket.span(3), 1_000_000_000);
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn reserves_until_empty_then_refills_over_the_period() {
        let bucket = TokenBucket::new(100, Duration::from_secs(60));
        let now = 1000 * SEC;
        assert_eq!(bucket.reserve(60, now).unwrap().remaining, 40);
        assert_eq!(bucket.reserve(40, now).unwrap().remaining, 0);
        let wait = bucket.reserve(10, now).unwrap_err();
        assert_eq!(wait.as_secs(), 6);
        assert!(bucket.reserve(10, now + 6 * SEC).is_ok());
    }

    #[test]
    fn settling_refunds_or_charges_the_difference() {
        let bucket = TokenBucket::new(100, Duration::from_secs(60));
        let now = 1000 * SEC;
        bucket.reserve(80, now).unwrap();
        bucket.adjust(-70, now);
        assert_eq!(bucket.peek(now).remaining, 90);
        bucket.adjust(30, now);
        assert_eq!(bucket.peek(now).remaining, 60);
        bucket.adjust(-1000, now);
        assert_eq!(bucket.peek(now).remaining, 100);
    }

    #[test]
    fn a_full_bucket_admits_a_request_larger_than_itself() {
        let bucket = TokenBucket::new(100, Duration::from_secs(60));
        let now = 1000 * SEC;
        assert!(bucket.reserve(250, now).is_ok());
        assert_eq!(bucket.peek(now).remaining, 0);
        // The debt takes the whole overdraft to pay back.
        let wait = bucket.reserve(1, now).unwrap_err();
        assert!(wait > Duration::from_secs(90), "{wait:?}");
    }

    #[test]
    fn a_cost_beyond_any_span_saturates_instead_of_wrapping() {
        // A limit of one per day: each token is a day of nanoseconds, so
        // u64::MAX tokens is far past what the time arithmetic holds.
        let bucket = TokenBucket::new(1, Duration::from_secs(86_400));
        let now = 1000 * SEC;
        assert!(bucket.reserve(u64::MAX, now).is_ok());
        assert!(bucket.reserve(1, now).is_err(), "the debt did not wrap");
        bucket.adjust(i64::MAX, now);
        assert!(bucket.reserve(1, now + 1000 * SEC).is_err());
    }
}
