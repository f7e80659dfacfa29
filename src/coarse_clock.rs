//! Coarse clocks: the kernel's last tick (CLOCK_MONOTONIC_COARSE,
//! CLOCK_REALTIME_COARSE), a few milliseconds behind at worst, read in a
//! third of the time of a precise clock (~8-10 ns against ~30 ns on a
//! virtual machine with the TSC clock source: `cargo bench --bench hot_path
//! -- clock`). For
//! the times a request notes that need no better than that: a pooled
//! connection's idle stamp, a circuit breaker's window and cool-down, the
//! second in a response's `date` field. Durations the gateway reports
//! (metrics, access log) keep the precise clock.

use std::time::Duration;

/// Time on a monotonic clock (since boot on Linux), to the kernel's tick.
pub fn monotonic() -> Duration {
    imp::monotonic()
}

/// [`monotonic`] in whole milliseconds.
pub fn monotonic_ms() -> u64 {
    monotonic().as_millis() as u64
}

/// Whole seconds since the Unix epoch, to the kernel's tick, held within
/// 1970-01-01 and [`LATEST_UNIX_SECOND`].
pub fn unix_seconds() -> u64 {
    within_four_digit_years(imp::unix_seconds())
}

/// 9999-12-31T23:59:59Z: the last second an HTTP date (and the access
/// log's four-digit year) can show. A wall clock set past it, or before
/// 1970, is read as the nearest of the two: the `date` field's formatter
/// panics outside them, and a wrong date is better than no answer.
pub const LATEST_UNIX_SECOND: u64 = 253_402_300_799;

fn within_four_digit_years(seconds: i64) -> u64 {
    (seconds.max(0) as u64).min(LATEST_UNIX_SECOND)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::time::Duration;

    fn read(clock: libc::clockid_t) -> libc::timespec {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to write to; the coarse clocks
        // exist on every Linux since 2.6.32 and cannot fail for that reason.
        let result = unsafe { libc::clock_gettime(clock, &mut now) };
        debug_assert_eq!(result, 0, "clock_gettime({clock})");
        now
    }

    pub fn monotonic() -> Duration {
        let now = read(libc::CLOCK_MONOTONIC_COARSE);
        Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
    }

    pub fn unix_seconds() -> i64 {
        read(libc::CLOCK_REALTIME_COARSE).tv_sec
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::sync::LazyLock;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

    pub fn monotonic() -> Duration {
        EPOCH.elapsed()
    }

    pub fn unix_seconds() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().try_into().unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    /// How far a coarse reading may trail a precise one: the kernel's tick
    /// (4 ms at 250 Hz, 10 ms at 100 Hz) with room for a slow machine.
    const TICK: Duration = Duration::from_millis(20);

    #[test]
    fn the_monotonic_clock_follows_the_precise_one_to_a_tick() {
        // Each coarse reading between two precise ones: a thread preempted
        // between readings widens the bounds, never fails them.
        let (p0, c0, p1) = (Instant::now(), monotonic(), Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (p2, c1, p3) = (Instant::now(), monotonic(), Instant::now());
        let coarse = c1 - c0;
        let (shortest, longest) = (p2 - p1, p3 - p0);
        assert!(coarse + TICK >= shortest, "{coarse:?} vs {shortest:?}");
        assert!(coarse <= longest + TICK, "{coarse:?} vs {longest:?}");
        assert_eq!(monotonic_ms(), monotonic().as_millis() as u64);
    }

    #[test]
    fn the_monotonic_clock_never_goes_back() {
        let mut last = monotonic();
        for _ in 0..100_000 {
            let now = monotonic();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn unix_seconds_are_the_wall_clock_seconds() {
        let precise = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let coarse = unix_seconds();
        // The coarse second may be the one before, within a tick of it.
        let lowest = (precise - TICK).as_secs();
        assert!(
            (lowest..=precise.as_secs() + 1).contains(&coarse),
            "{coarse} vs {precise:?}"
        );
    }

    #[test]
    fn a_wall_clock_out_of_range_is_read_as_the_nearest_end() {
        assert_eq!(within_four_digit_years(-1), 0);
        assert_eq!(within_four_digit_years(i64::MIN), 0);
        assert_eq!(within_four_digit_years(1_800_000_000), 1_800_000_000);
        let latest = LATEST_UNIX_SECOND as i64;
        assert_eq!(within_four_digit_years(latest), LATEST_UNIX_SECOND);
        assert_eq!(within_four_digit_years(latest + 1), LATEST_UNIX_SECOND);
        assert_eq!(within_four_digit_years(i64::MAX), LATEST_UNIX_SECOND);
    }
}
