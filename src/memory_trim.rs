//! After a busy spell, the memory malloc kept when requests freed it is
//! given back to the system once the gateway is idle.
//!
//! glibc's malloc returns freed memory on its own only from the top of an
//! arena; what a burst of connections left free between blocks still in
//! use stays in the process. After 512 connections the gateway sat at
//! ~22 MB idle (6-7 MB at start); `malloc_trim` hands those pages back
//! (~12 MB). It runs only when no request is in flight, because it (and
//! reading how much malloc holds free) takes each arena's lock while it
//! walks it, and only when the resident size or what malloc holds free
//! has grown since the last trim: freed blocks stay on malloc's lists
//! after a trim (only their pages go back), so an idle gateway does not
//! trim again and again. The resident size catches a new burst that
//! reused the trimmed blocks (their pages come back as they are written);
//! what malloc holds free catches memory freed while idle (the provider
//! connections a burst left in the pool, closed after their idle time).

use prometheus::IntGauge;
use std::time::Duration;

/// How often the gateway looks.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Growth of the resident size or of the bytes malloc holds free, since
/// the last trim (or the least seen after it), that is worth a trim.
const GROWTH: u64 = 4 * 1024 * 1024;

/// When to trim, from the resident size and the bytes malloc holds free
/// at each idle check.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    /// Each measure at the last trim, or the least seen since.
    resident_floor: Option<u64>,
    held_free_floor: Option<u64>,
}

impl TrimPolicy {
    /// Whether to trim now, with `resident` bytes resident and `held_free`
    /// bytes free in malloc: either is [`GROWTH`] above its floor. The
    /// first check only sets the floors.
    pub fn should_trim(&mut self, resident: u64, held_free: u64) -> bool {
        let grown = |floor: &mut Option<u64>, now: u64| {
            let low = floor.get_or_insert(now);
            *low = (*low).min(now);
            now - *low >= GROWTH
        };
        let resident_grown = grown(&mut self.resident_floor, resident);
        let held_free_grown = grown(&mut self.held_free_floor, held_free);
        resident_grown || held_free_grown
    }

    /// A trim ran: the floors are what it left, whatever it gave back (so
    /// it is not tried again for nothing).
    pub fn trimmed(&mut self, resident: u64, held_free: u64) {
        self.resident_floor = Some(resident);
        self.held_free_floor = Some(held_free);
    }
}

/// Checks every [`CHECK_EVERY`] for as long as the runtime runs, when no
/// request is in flight (`in_flight`), and trims when [`TrimPolicy`] says so.
pub fn spawn(in_flight: IntGauge) {
    if imp::held_free().is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut policy = TrimPolicy::default();
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if in_flight.get() != 0 {
                continue;
            }
            // `statm` cannot be read while every descriptor is taken: look
            // again next time.
            let (Some(before), Some(held_free)) = (resident_bytes(), imp::held_free()) else {
                continue;
            };
            if !policy.should_trim(before, held_free) {
                continue;
            }
            let Ok(Some(after)) = tokio::task::spawn_blocking(trim_now).await else {
                continue;
            };
            // The freed blocks are still on malloc's lists: what it holds
            // free is unchanged by the trim.
            policy.trimmed(after, held_free);
            tracing::debug!(
                held_free_kb = held_free / 1024,
                resident_before_kb = before / 1024,
                resident_after_kb = after / 1024,
                "freed memory given back to the system"
            );
        }
    });
}

/// Gives the memory malloc holds free back to the system, where it can;
/// the resident size afterwards.
pub fn trim_now() -> Option<u64> {
    imp::trim();
    imp::resident_bytes()
}

/// The process's resident size in bytes, where the system says.
pub fn resident_bytes() -> Option<u64> {
    imp::resident_bytes()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub fn trim() {
        // SAFETY: malloc_trim only walks malloc's own state, under its
        // locks; any thread may call it at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Bytes in malloc's free chunks, in every arena.
    pub fn held_free() -> Option<u64> {
        // SAFETY: mallinfo2 only reads malloc's own state, under its locks.
        let info = unsafe { libc::mallinfo2() };
        u64::try_from(info.fordblks).ok()
    }

    pub fn resident_bytes() -> Option<u64> {
        // The second field of statm: resident pages.
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * u64::try_from(page).ok()?)
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    /// Other allocators and systems give memory back their own way.
    pub fn trim() {}

    pub fn held_free() -> Option<u64> {
        None
    }

    pub fn resident_bytes() -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn trims_when_the_resident_size_or_what_malloc_holds_free_has_grown() {
        let mut policy = TrimPolicy::default();
        assert!(
            !policy.should_trim(8 * MIB, MIB),
            "the first check sets the floors"
        );
        assert!(!policy.should_trim(11 * MIB, 4 * MIB), "grown too little");
        // A burst ended: both grew.
        assert!(policy.should_trim(20 * MIB, 9 * MIB));
        policy.trimmed(14 * MIB, 9 * MIB);
        // The freed blocks stay on malloc's lists after a trim: not again
        // until something grows.
        assert!(!policy.should_trim(14 * MIB, 9 * MIB));
        // Another burst reused the trimmed blocks, and freed them again:
        // the same bytes held free, but their pages are back.
        assert!(policy.should_trim(20 * MIB, 9 * MIB));
        policy.trimmed(14 * MIB, 9 * MIB);
        // Memory freed while idle: the resident size is the same.
        assert!(policy.should_trim(14 * MIB, 13 * MIB));
        policy.trimmed(10 * MIB, 13 * MIB);
        // Each floor follows its measure down.
        assert!(!policy.should_trim(10 * MIB, 2 * MIB));
        assert!(policy.should_trim(10 * MIB, 6 * MIB));
    }

    /// Free blocks between blocks still in use are what malloc keeps and
    /// a trim gives back: 32 MiB of holes, measured in the resident size.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_gives_back_freed_blocks_between_used_ones() {
        const BLOCK: usize = 64 * 1024;
        let blocks: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; BLOCK]).collect();
        let mut kept = Vec::new();
        let mut freed = Vec::new();
        for (i, block) in blocks.into_iter().enumerate() {
            if i % 2 == 0 {
                kept.push(block)
            } else {
                freed.push(block)
            }
        }
        drop(freed);
        let before = resident_bytes().unwrap();
        let after = trim_now().unwrap();
        assert!(
            before.saturating_sub(after) >= 16 * MIB,
            "{} MiB -> {} MiB",
            before / MIB,
            after / MIB
        );
        // The blocks in use were kept through the trim.
        assert_eq!(std::hint::black_box(kept).len(), 512);
    }
}
