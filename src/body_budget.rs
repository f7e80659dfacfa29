//! The request body bytes the gateway holds at once, across every request,
//! kept under `server.max_body_bytes_total`. A body is read whole before
//! rate limits can be checked (the model and the token caps are in it), so
//! without a total, many clients sending large bodies at once could make
//! the gateway hold connections × `max_body_bytes`.
//!
//! Only bodies over 16 KiB count: a smaller one (nearly every chat
//! request) is bounded by its connection, like the bytes it reads ahead,
//! and connections are capped. A body claims the bytes it holds as they
//! come, each read's room before the read, and gives them back when its
//! handler has answered: one that declares 32 MiB and sends it a byte at
//! a time holds what it sent, not the 32 MiB. A declared length that
//! would not fit beside what is held now is refused before any of it is
//! read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes claimed by bodies being read or handled.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicU64,
}

/// Bytes of one body, given back when dropped.
#[derive(Debug)]
pub struct BodyClaim {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyBudget {
    /// Bytes claimed now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether `bytes` would fit under `total` beside what is held now
    /// (nothing is claimed).
    pub fn fits(&self, bytes: u64, total: u64) -> bool {
        self.held()
            .checked_add(bytes)
            .is_some_and(|after| after <= total)
    }

    /// Claims `bytes` when they fit under `total` with what is held;
    /// `None` when they do not.
    pub fn claim(self: &Arc<Self>, bytes: u64, total: u64) -> Option<BodyClaim> {
        self.take(bytes, total).then(|| BodyClaim {
            budget: self.clone(),
            bytes,
        })
    }

    fn take(&self, bytes: u64, total: u64) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&after| after <= total)
            })
            .is_ok()
    }
}

impl BodyClaim {
    /// Bytes this claim holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether this claim could be raised to `bytes` now (nothing is
    /// claimed).
    pub fn could_grow_to(&self, bytes: u64, total: u64) -> bool {
        self.budget.fits(bytes.saturating_sub(self.bytes), total)
    }

    /// Lowers this claim to `bytes`, giving back the rest; `false` when it
    /// held no more than that (the claim unchanged).
    pub fn shrink_to(&mut self, bytes: u64) -> bool {
        let less = self.bytes.saturating_sub(bytes);
        if less == 0 {
            return false;
        }
        self.budget.held.fetch_sub(less, Ordering::Relaxed);
        self.bytes = bytes;
        true
    }

    /// Raises this claim to `bytes` when the difference fits under
    /// `total`; `false` (the claim unchanged) when it does not.
    pub fn grow_to(&mut self, bytes: u64, total: u64) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        if more == 0 {
            return true;
        }
        if !self.budget.take(more, total) {
            return false;
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for BodyClaim {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_fit_under_the_total_and_are_given_back_when_dropped() {
        let budget = Arc::new(BodyBudget::default());
        let first = budget.claim(60, 100).expect("fits");
        assert!(budget.claim(41, 100).is_none(), "60 + 41 is over 100");
        assert_eq!(budget.held(), 60, "a refused claim takes nothing");
        let second = budget.claim(40, 100).expect("60 + 40 fits exactly");
        assert_eq!(budget.held(), 100);
        drop(first);
        assert_eq!(budget.held(), 40);
        drop(second);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn fitting_claims_nothing() {
        let budget = Arc::new(BodyBudget::default());
        let _held = budget.claim(60, 100).unwrap();
        assert!(budget.fits(40, 100));
        assert!(!budget.fits(41, 100));
        assert!(!budget.fits(u64::MAX, u64::MAX));
        assert_eq!(budget.held(), 60);
    }

    #[test]
    fn a_claim_grows_while_the_total_allows() {
        let budget = Arc::new(BodyBudget::default());
        let other = budget.claim(50, 100).unwrap();
        let mut claim = budget.claim(0, 100).unwrap();
        assert!(claim.grow_to(30, 100));
        assert!(claim.grow_to(20, 100), "a smaller size needs nothing more");
        assert_eq!(claim.bytes(), 30);
        assert!(!claim.grow_to(51, 100), "50 + 51 is over 100");
        assert_eq!((claim.bytes(), budget.held()), (30, 80));
        assert!(claim.could_grow_to(50, 100));
        assert!(!claim.could_grow_to(51, 100));
        assert_eq!(claim.bytes(), 30, "asking claims nothing");
        assert!(claim.grow_to(50, 100));
        assert!(claim.shrink_to(35));
        assert!(!claim.shrink_to(40), "a larger size is no shrinking");
        assert_eq!((claim.bytes(), budget.held()), (35, 85));
        drop(other);
        drop(claim);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_claim_past_u64_is_refused_not_wrapped() {
        let budget = Arc::new(BodyBudget::default());
        let _held = budget.claim(10, u64::MAX).unwrap();
        assert!(budget.claim(u64::MAX, u64::MAX).is_none());
        assert_eq!(budget.held(), 10);
    }
}
