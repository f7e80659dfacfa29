//! A scope's concurrency cap in process: a count of slots in use, taken
//! with one atomic operation and given back with one. Callers that may wait
//! (a provider's brief queue) are woken through a `Notify`, which a release
//! touches only while someone is waiting.
//!
//! Not a semaphore: that needs a reference-counted handle per slot and a
//! lock on every release (its waiter list), about six atomic operations
//! per scope and request where this takes two.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct Slots {
    limit: u32,
    in_use: AtomicU32,
    waiting: AtomicUsize,
    freed: Notify,
}

impl Slots {
    pub fn new(limit: u32) -> Slots {
        Slots {
            limit,
            in_use: AtomicU32::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Takes a slot if one is free. Every `true` must be matched by one
    /// [`Slots::give_back`].
    pub fn try_take(&self) -> bool {
        self.in_use
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes a slot, waiting up to `wait` for one to be given back.
    pub async fn take_within(&self, wait: Duration) -> bool {
        if self.try_take() {
            return true;
        }
        // Counted down when this wait ends, or when its future is dropped
        // (the client left while queued): `give_back` reads the count.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(&self.waiting);
        let taken = tokio::time::timeout(wait, async {
            loop {
                let freed = self.freed.notified();
                tokio::pin!(freed);
                // Registered before the check: a slot given back after the
                // check wakes this waiter (`give_back` sees it waiting).
                freed.as_mut().enable();
                if self.try_take() {
                    return;
                }
                freed.await;
            }
        })
        .await
        .is_ok();
        drop(waiting);
        if !taken && self.in_use() < self.limit as usize {
            // A wake-up this waiter consumed as it timed out goes on to the
            // next one, so no waiter sleeps next to a free slot.
            self.freed.notify_one();
        }
        taken
    }

    pub fn give_back(&self) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed) as usize
    }

    /// Callers waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One waiter in [`Slots::waiting`], counted out when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn takes_up_to_the_limit_and_frees_on_give_back() {
        let slots = Slots::new(2);
        assert!(slots.try_take() && slots.try_take());
        assert!(!slots.try_take());
        assert_eq!(slots.in_use(), 2);
        slots.give_back();
        assert_eq!(slots.in_use(), 1);
        assert!(slots.try_take());
    }

    #[tokio::test]
    async fn a_wait_dropped_part_way_is_counted_out() {
        let slots = Slots::new(1);
        assert!(slots.try_take());
        {
            let wait = std::pin::pin!(slots.take_within(Duration::from_secs(60)));
            let polled = futures_util::poll!(wait);
            assert!(polled.is_pending());
            assert_eq!(slots.waiting(), 1);
        }
        assert_eq!(slots.waiting(), 0, "the client left while queued");
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_given_back_or_gives_up_after_its_wait() {
        let slots = Arc::new(Slots::new(1));
        assert!(slots.try_take());
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take_within(Duration::from_secs(1)).await }
        });
        while slots.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        slots.give_back();
        assert!(waiter.await.unwrap(), "the freed slot went to the waiter");
        assert_eq!(slots.in_use(), 1);

        let started = tokio::time::Instant::now();
        assert!(!slots.take_within(Duration::from_millis(50)).await);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(slots.waiting(), 0);
        assert_eq!(slots.in_use(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_the_limit_under_contention() {
        let slots = Arc::new(Slots::new(3));
        let peak = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (slots, peak) = (slots.clone(), peak.clone());
                tokio::spawn(async move {
                    for _ in 0..200 {
                        if slots.take_within(Duration::from_secs(5)).await {
                            peak.fetch_max(slots.in_use() as u32, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            slots.give_back();
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.waiting(), 0);
    }
}
