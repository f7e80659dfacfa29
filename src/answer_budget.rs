//! The plain answer bytes the gateway holds at once, across every request,
//! kept under `server.max_answer_bytes_total`. A plain (non-stream) answer
//! is read whole from its provider (an error can still follow a good head,
//! and the usage is at its end), then held until its client has taken the
//! last byte: without a total, clients that stop reading large answers
//! could make the gateway hold connections × `max_response_bytes`.
//!
//! Only answers over 16 KiB count, like request bodies: a smaller one (most
//! chat answers) is bounded by its connection, and connections are capped.
//! An answer claims the bytes it has read, 16 KiB at a time, before it
//! keeps more. When they do not fit, it waits for room (the provider's
//! connection is not read meanwhile, so the bytes wait there, not here)
//! within the provider's `total_secs`; room comes back as clients finish
//! reading, or are cut for not reading (`client_idle_secs`). Refusing at
//! once would throw away an answer the provider has already made.

use crate::body_budget::{BodyBudget, BodyClaim};
use bytes::Bytes;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// Answers of at most this many bytes are not counted.
pub const UNCOUNTED_ANSWER: usize = 16 * 1024;

/// A counted answer's claim grows by this much at a time, so that a large
/// answer read in small frames does not claim once per frame; small enough
/// that answers just over [`UNCOUNTED_ANSWER`] do not claim much more than
/// they hold.
const CLAIM_STEP: u64 = 16 * 1024;

/// The bytes claimed by answers being read or written, and a wake-up for
/// the answers waiting for room.
#[derive(Debug, Default)]
pub struct AnswerBudget {
    bytes: Arc<BodyBudget>,
    freed: Notify,
    /// Answers that found no room at first, since the start.
    waits: AtomicU64,
}

impl AnswerBudget {
    /// Bytes claimed now.
    pub fn held(&self) -> u64 {
        self.bytes.held()
    }

    /// Answers that had to wait for room, since the start.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

/// One answer's claim while it is read: nothing until it passes
/// [`UNCOUNTED_ANSWER`], then what it has read, rounded up.
pub struct AnswerHold<'a> {
    budget: &'a Arc<AnswerBudget>,
    total: u64,
    claim: Option<AnswerClaim>,
    waiting: bool,
}

/// Bytes of one answer, given back (and the waiting answers woken) when
/// dropped.
struct AnswerClaim {
    budget: Arc<AnswerBudget>,
    bytes: Option<BodyClaim>,
}

impl<'a> AnswerHold<'a> {
    /// Claims nothing yet. `total` is `server.max_answer_bytes_total`.
    pub fn new(budget: &'a Arc<AnswerBudget>, total: usize) -> Self {
        AnswerHold {
            budget,
            total: u64::try_from(total).unwrap_or(u64::MAX),
            claim: None,
            waiting: false,
        }
    }

    /// Whether `read` bytes are claimed, claiming them when they fit: when
    /// not, [`wait_for_room`](Self::wait_for_room) waits until they do.
    /// Apart so that every answer's read does not carry the wait's state.
    #[inline]
    pub fn covers(&mut self, read: usize) -> bool {
        read <= UNCOUNTED_ANSWER || self.covers_counted(read)
    }

    #[cold]
    fn covers_counted(&mut self, read: usize) -> bool {
        let read = u64::try_from(read).unwrap_or(u64::MAX);
        let claimed = self.claim.as_ref().and_then(|c| c.bytes.as_ref());
        if claimed.is_some_and(|c| c.bytes() >= read) {
            return true;
        }
        self.try_claim(self.wanted(read))
    }

    /// Claims `read` bytes, waiting for room as long as they do not fit.
    /// Never returns before they fit: the caller bounds the wait.
    pub async fn wait_for_room(&mut self, read: usize) {
        let want = self.wanted(u64::try_from(read).unwrap_or(u64::MAX));
        self.budget.waits.fetch_add(1, Ordering::Relaxed);
        self.waiting = true;
        loop {
            // Listening before trying: room given back between the try
            // and the wait still wakes this answer.
            let mut freed = pin!(self.budget.freed.notified());
            freed.as_mut().enable();
            if self.try_claim(want) {
                self.waiting = false;
                return;
            }
            freed.await;
        }
    }

    /// What to claim for `read` bytes: rounded up to the step, but never
    /// more than the total, so that an answer the size of the total (the
    /// most `max_response_bytes` may be) still fits alone.
    fn wanted(&self, read: u64) -> u64 {
        read.div_ceil(CLAIM_STEP)
            .saturating_mul(CLAIM_STEP)
            .min(self.total)
            .max(read)
    }

    fn try_claim(&mut self, want: u64) -> bool {
        match self.claim.as_mut().and_then(|c| c.bytes.as_mut()) {
            Some(claim) => claim.grow_to(want, self.total),
            None => match self.budget.bytes.claim(want, self.total) {
                Some(bytes) => {
                    self.claim = Some(AnswerClaim {
                        budget: self.budget.clone(),
                        bytes: Some(bytes),
                    });
                    true
                }
                None => false,
            },
        }
    }

    /// Whether [`wait_for_room`](Self::wait_for_room) was waiting when it
    /// was given up: the answer was not read for lack of room, not for a
    /// slow provider.
    pub fn was_waiting(&self) -> bool {
        self.waiting
    }

    /// The answer, holding its claim until the last of its bytes is
    /// dropped (written to the client, or the client gone).
    #[inline]
    pub fn keep(self, answer: Bytes) -> Bytes {
        match self.claim {
            None => answer,
            Some(claim) => Bytes::from_owner(HeldAnswer {
                answer,
                _claim: claim,
            }),
        }
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
        let budget = Arc::new(AnswerBudget::default());
        let mut hold = AnswerHold::new(&budget, 100_000);
        assert!(hold.covers(UNCOUNTED_ANSWER));
        assert_eq!(budget.held(), 0);
        let answer = hold.keep(Bytes::from_static(b"{}"));
        assert_eq!(&answer[..], b"{}");
    }

    #[test]
    fn a_large_answer_claims_in_steps_until_its_bytes_are_dropped() {
        let budget = Arc::new(AnswerBudget::default());
        let mut hold = AnswerHold::new(&budget, 1 << 20);
        assert!(hold.covers(UNCOUNTED_ANSWER + 1));
        assert_eq!(budget.held(), 2 * CLAIM_STEP);
        assert!(hold.covers(2 * CLAIM_STEP as usize), "claimed already");
        assert_eq!(budget.held(), 2 * CLAIM_STEP);
        assert!(hold.covers(100_000));
        assert_eq!(budget.held(), 7 * CLAIM_STEP);
        let answer = hold.keep(Bytes::from(vec![b'x'; 100_000]));
        assert_eq!(budget.held(), 7 * CLAIM_STEP, "held while the answer is");
        let written = answer.slice(50_000..);
        drop(answer);
        assert_eq!(budget.held(), 7 * CLAIM_STEP, "a slice still holds it");
        drop(written);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn an_answer_the_size_of_the_total_fits_alone() {
        let budget = Arc::new(AnswerBudget::default());
        let mut hold = AnswerHold::new(&budget, 70_000);
        assert!(hold.covers(70_000));
        assert_eq!(budget.held(), 70_000, "the step is cut at the total");
    }

    #[tokio::test]
    async fn an_answer_without_room_waits_until_another_is_dropped() {
        let budget = Arc::new(AnswerBudget::default());
        let mut first = AnswerHold::new(&budget, 200_000);
        assert!(first.covers(150_000));
        let first = first.keep(Bytes::from(vec![0; 150_000]));

        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut second = AnswerHold::new(&budget, 200_000);
                assert!(!second.covers(100_000));
                second.wait_for_room(100_000).await;
                budget.held()
            })
        };
        // Polled until it waits: it cannot have its room yet.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(budget.held(), 10 * CLAIM_STEP, "the first's claim alone");

        drop(first);
        let held_then = waiting.await.unwrap();
        assert_eq!(held_then, 7 * CLAIM_STEP, "the second's claim alone");
        assert_eq!(budget.held(), 0, "and given back when it was dropped");
    }

    #[test]
    fn a_wait_given_up_is_told() {
        let budget = Arc::new(AnswerBudget::default());
        let mut first = AnswerHold::new(&budget, 100_000);
        assert!(first.covers(90_000));
        let mut second = AnswerHold::new(&budget, 100_000);
        assert!(!second.covers(20_000), "no room");
        assert!(ready(second.wait_for_room(20_000)).is_none());
        assert!(second.was_waiting());
        assert!(!first.was_waiting());
        assert_eq!(budget.waits(), 1);
        drop(first);
        assert_eq!(budget.held(), 0, "the waiting one claimed nothing");
    }
}
