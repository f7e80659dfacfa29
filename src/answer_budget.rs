//! The plain answer bytes the gateway holds at once, across every request,
//! kept under `server.max_answer_bytes_total`. A plain (non-stream) answer
//! is read whole from its provider (an error can still follow a good head,
//! and the usage is at its end), then held until its client has taken the
//! last byte: without a total, clients that stop reading large answers
//! could make the gateway hold connections × `max_response_bytes`.
//!
//! Only answers over 16 KiB count, like request bodies: a smaller one (most
//! chat answers) is bounded by its connection, and connections are capped.
//! An answer that passes 16 KiB claims at once the most it can be (its
//! declared length, or `max_response_bytes` when the provider declared
//! none) and, once read, keeps a claim of what it is. Claiming the whole
//! before reading on is what keeps answers from waiting on each other:
//! answers each holding part of the room while waiting for the rest would
//! never finish. When the claim does not fit, the answer waits for room
//! (the provider's connection is not read meanwhile, so the bytes wait
//! there, not here); room comes back as clients finish reading, or are cut
//! for not reading (`client_idle_secs`), as answers being read turn out
//! smaller than they could have been, and when a reload raises the total.

use crate::body_budget::{BodyBudget, BodyClaim};
use bytes::Bytes;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// Answers of at most this many bytes are not counted.
pub const UNCOUNTED_ANSWER: usize = 16 * 1024;

/// The bytes claimed by answers being read or written, the total they are
/// kept under, and a wake-up for the answers waiting for room.
#[derive(Debug)]
pub struct AnswerBudget {
    bytes: Arc<BodyBudget>,
    total: AtomicU64,
    freed: Notify,
    /// Answers that found no room at first, since the start.
    waits: AtomicU64,
}

impl AnswerBudget {
    /// A budget of `total` bytes (`server.max_answer_bytes_total`).
    pub fn new(total: usize) -> Self {
        AnswerBudget {
            bytes: Arc::default(),
            total: AtomicU64::new(u64::try_from(total).unwrap_or(u64::MAX)),
            freed: Notify::new(),
            waits: AtomicU64::new(0),
        }
    }

    /// A reloaded total: answers waiting for room look again.
    pub fn set_total(&self, total: usize) {
        let total = u64::try_from(total).unwrap_or(u64::MAX);
        if self.total.swap(total, Ordering::Relaxed) != total {
            self.freed.notify_waiters();
        }
    }

    /// Bytes claimed now.
    pub fn held(&self) -> u64 {
        self.bytes.held()
    }

    /// Answers that had to wait for room, since the start.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// One answer's claim while it is read: nothing until it passes
/// [`UNCOUNTED_ANSWER`], then the most it can be.
pub struct AnswerHold<'a> {
    budget: &'a Arc<AnswerBudget>,
    claim: Option<AnswerClaim>,
}

/// Bytes of one answer, given back (and the waiting answers woken) when
/// dropped.
struct AnswerClaim {
    budget: Arc<AnswerBudget>,
    bytes: Option<BodyClaim>,
}

impl<'a> AnswerHold<'a> {
    /// Claims nothing yet.
    pub fn new(budget: &'a Arc<AnswerBudget>) -> Self {
        AnswerHold {
            budget,
            claim: None,
        }
    }

    /// Whether the answer may keep `read` bytes, claiming `most` (the most
    /// it can be) when they are the first past [`UNCOUNTED_ANSWER`] and it
    /// fits. When not, [`wait_for_room`](Self::wait_for_room) waits until
    /// it does. Apart so that every answer's read does not carry the
    /// wait's state.
    #[inline]
    pub fn covers(&mut self, read: usize, most: u64) -> bool {
        read <= UNCOUNTED_ANSWER || self.claim.is_some() || self.try_claim(most)
    }

    /// Claims `most` bytes, waiting as long as they do not fit. Never
    /// returns before they fit: the caller bounds the wait.
    pub async fn wait_for_room(&mut self, most: u64) {
        self.budget.waits.fetch_add(1, Ordering::Relaxed);
        loop {
            // Listening before trying: room given back between the try
            // and the wait still wakes this answer.
            let mut freed = pin!(self.budget.freed.notified());
            freed.as_mut().enable();
            if self.try_claim(most) {
                return;
            }
            freed.await;
        }
    }

    #[cold]
    fn try_claim(&mut self, most: u64) -> bool {
        // Never more than the total: an answer asked under a configuration
        // whose `max_response_bytes` was larger still fits alone.
        let total = self.budget.total();
        let Some(bytes) = self.budget.bytes.claim(most.min(total), total) else {
            return false;
        };
        self.claim = Some(AnswerClaim {
            budget: self.budget.clone(),
            bytes: Some(bytes),
        });
        true
    }

    /// The answer, holding a claim of its size until the last of its bytes
    /// is dropped (written to the client, or the client gone). What was
    /// claimed beyond its size is given back now.
    #[inline]
    pub fn keep(self, answer: Bytes) -> Bytes {
        match self.claim {
            None => answer,
            Some(claim) => claim.keep(answer),
        }
    }
}

impl AnswerClaim {
    #[cold]
    fn keep(mut self, answer: Bytes) -> Bytes {
        if let Some(bytes) = &mut self.bytes
            && bytes.shrink_to(answer.len() as u64)
        {
            self.budget.freed.notify_waiters();
        }
        Bytes::from_owner(HeldAnswer {
            answer,
            _claim: self,
        })
    }
}

impl Drop for AnswerClaim {
    fn drop(&mut self) {
        drop(self.bytes.take());
        self.budget.freed.notify_waiters();
    }
}

/// An answer's bytes with the claim that counts them.
struct HeldAnswer {
    answer: Bytes,
    _claim: AnswerClaim,
}

impl AsRef<[u8]> for HeldAnswer {
    fn as_ref(&self) -> &[u8] {
        &self.answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    fn ready<F: Future>(future: F) -> Option<F::Output> {
        let mut future = pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_small_answer_claims_nothing() {
        let budget = Arc::new(AnswerBudget::new(100_000));
        let mut hold = AnswerHold::new(&budget);
        assert!(hold.covers(UNCOUNTED_ANSWER, 90_000));
        assert_eq!(budget.held(), 0);
        let answer = hold.keep(Bytes::from_static(b"{}"));
        assert_eq!(&answer[..], b"{}");
    }

    #[test]
    fn a_large_answer_claims_its_most_then_its_size_until_dropped() {
        let budget = Arc::new(AnswerBudget::new(1 << 20));
        let mut hold = AnswerHold::new(&budget);
        assert!(hold.covers(UNCOUNTED_ANSWER + 1, 500_000));
        assert_eq!(budget.held(), 500_000, "the most it can be, at once");
        assert!(hold.covers(400_000, 500_000), "claimed already");
        assert_eq!(budget.held(), 500_000);
        let answer = hold.keep(Bytes::from(vec![b'x'; 100_000]));
        assert_eq!(budget.held(), 100_000, "what it turned out to be");
        let written = answer.slice(50_000..);
        drop(answer);
        assert_eq!(budget.held(), 100_000, "a slice still holds it");
        drop(written);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn an_answer_larger_than_a_lowered_total_fits_alone() {
        let budget = Arc::new(AnswerBudget::new(1 << 20));
        budget.set_total(70_000);
        let mut hold = AnswerHold::new(&budget);
        assert!(hold.covers(70_000, 200_000));
        assert_eq!(budget.held(), 70_000, "cut at the total");
    }

    #[tokio::test]
    async fn an_answer_without_room_waits_until_another_is_dropped() {
        let budget = Arc::new(AnswerBudget::new(200_000));
        let mut first = AnswerHold::new(&budget);
        assert!(first.covers(150_000, 150_000));
        let first = first.keep(Bytes::from(vec![0; 150_000]));

        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut second = AnswerHold::new(&budget);
                assert!(!second.covers(100_000, 100_000));
                second.wait_for_room(100_000).await;
                budget.held()
            })
        };
        // Polled until it waits: it cannot have its room yet.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(budget.held(), 150_000, "the first's claim alone");

        drop(first);
        let held_then = waiting.await.unwrap();
        assert_eq!(held_then, 100_000, "the second's claim alone");
        assert_eq!(budget.held(), 0, "and given back when it was dropped");
        assert_eq!(budget.waits(), 1);
    }

    #[tokio::test]
    async fn room_given_back_by_an_answer_smaller_than_its_claim_wakes_a_waiter() {
        let budget = Arc::new(AnswerBudget::new(200_000));
        let mut first = AnswerHold::new(&budget);
        assert!(first.covers(20_000, 200_000), "declared no length");
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut second = AnswerHold::new(&budget);
                second.wait_for_room(100_000).await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let _first = first.keep(Bytes::from(vec![0; 30_000]));
        waiting.await.unwrap();
    }

    #[tokio::test]
    async fn a_raised_total_wakes_a_waiter() {
        let budget = Arc::new(AnswerBudget::new(100_000));
        let mut first = AnswerHold::new(&budget);
        assert!(first.covers(90_000, 90_000));
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut second = AnswerHold::new(&budget);
                second.wait_for_room(50_000).await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        budget.set_total(200_000);
        waiting.await.unwrap();
        assert_eq!(budget.held(), 90_000, "the second's claim is dropped");
    }

    #[test]
    fn a_wait_given_up_claims_nothing() {
        let budget = Arc::new(AnswerBudget::new(100_000));
        let mut first = AnswerHold::new(&budget);
        assert!(first.covers(90_000, 90_000));
        let mut second = AnswerHold::new(&budget);
        assert!(!second.covers(20_000, 20_000), "no room");
        assert!(ready(second.wait_for_room(20_000)).is_none());
        drop(first);
        assert_eq!(budget.held(), 0, "the waiting one claimed nothing");
        assert_eq!(budget.waits(), 1);
    }
}
