//! The request body bytes the gateway holds at once, across every request,
//! kept under `server.max_body_bytes_total`, and those of one client key's
//! requests under `server.max_body_bytes_per_key`. A body is read whole
//! before rate limits can be checked (the model and the token caps are in
//! it), so without a total, many clients sending large bodies at once could
//! make the gateway hold connections × `max_body_bytes`; without a share,
//! one key sending a few slowly could take the whole total from the others.
//!
//! Only bodies over 16 KiB count: a smaller one (nearly every chat
//! request) is bounded by its connection, like the bytes it reads ahead,
//! and connections are capped. A body claims the bytes it holds as they
//! come, each read's room before the read, and gives them back when its
//! handler has answered: one that declares 32 MiB and sends it a byte at
//! a time holds what it sent, not the 32 MiB. A declared length that
//! would not fit beside what is held now is refused before any of it is
//! read. A claim is charged to its key once the key is known (the
//! request's head checked, before any of its body is asked for).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The bytes claimed by bodies being read or handled.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicU64,
    /// The bytes held by each key's requests; a key holding none has no
    /// entry. Only bodies over 16 KiB of requests with a key come here,
    /// once per read of up to 64 KiB, so a lock is cheap enough.
    by_key: Mutex<HashMap<Arc<str>, u64>>,
}

/// Why a claim could not be made or grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// It would take what every body holds past the total.
    Total,
    /// It would take what its key's bodies hold past the key's share.
    KeyShare,
}

/// Bytes of one body, given back when dropped.
#[derive(Debug)]
pub struct BodyClaim {
    budget: Arc<BodyBudget>,
    bytes: u64,
    key: Option<KeyShare>,
}

/// The key a claim is charged to, and the most its bodies may hold.
#[derive(Debug)]
struct KeyShare {
    name: Arc<str>,
    most: u64,
}

impl BodyBudget {
    /// Bytes claimed now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Bytes claimed now by `key`'s requests.
    pub fn held_by(&self, key: &str) -> u64 {
        self.keys().get(key).copied().unwrap_or(0)
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
            key: None,
        })
    }

    fn take(&self, bytes: u64, total: u64) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&after| after <= total)
            })
            .is_ok()
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<Arc<str>, u64>> {
        // A panic while the map is held leaves its counts whole (every
        // change is one statement), so a poisoned lock is still usable.
        self.by_key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl BodyClaim {
    /// Bytes this claim holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Charges this claim to `key`, whose requests' bodies may hold `most`
    /// bytes together, when what it holds, and `expected` (a declared
    /// length: refused before any of it is read), fit beside what the
    /// key's other bodies hold. Unchanged, `Err`, when they do not; a claim
    /// already charged to a key stays with it.
    pub fn charge_to_key(
        &mut self,
        key: &Arc<str>,
        most: u64,
        expected: u64,
    ) -> Result<(), NoRoom> {
        if self.key.is_some() {
            return Ok(());
        }
        let mut keys = self.budget.keys();
        let held = keys.get(key).copied().unwrap_or(0);
        let fits = |bytes: u64| held.checked_add(bytes).is_some_and(|after| after <= most);
        if !fits(self.bytes.max(expected)) {
            return Err(NoRoom::KeyShare);
        }
        if self.bytes > 0 {
            *keys.entry(key.clone()).or_insert(0) += self.bytes;
        }
        self.key = Some(KeyShare {
            name: key.clone(),
            most,
        });
        Ok(())
    }

    /// Whether this claim could be raised to `bytes` now (nothing is
    /// claimed).
    pub fn could_grow_to(&self, bytes: u64, total: u64) -> Result<(), NoRoom> {
        let more = bytes.saturating_sub(self.bytes);
        if let Some(key) = &self.key
            && !key.fits(self.budget.held_by(&key.name), more)
        {
            return Err(NoRoom::KeyShare);
        }
        if self.budget.fits(more, total) {
            Ok(())
        } else {
            Err(NoRoom::Total)
        }
    }

    /// Lowers this claim to `bytes`, giving back the rest; `false` when it
    /// held no more than that (the claim unchanged).
    pub fn shrink_to(&mut self, bytes: u64) -> bool {
        let less = self.bytes.saturating_sub(bytes);
        if less == 0 {
            return false;
        }
        self.give_back(less);
        self.bytes = bytes;
        true
    }

    /// Raises this claim to `bytes` when the difference fits under `total`
    /// and the key's share; unchanged, `Err`, when it does not.
    pub fn grow_to(&mut self, bytes: u64, total: u64) -> Result<(), NoRoom> {
        let more = bytes.saturating_sub(self.bytes);
        if more == 0 {
            return Ok(());
        }
        match &self.key {
            None => {
                if !self.budget.take(more, total) {
                    return Err(NoRoom::Total);
                }
            }
            Some(key) => {
                // Held across the total's update, so that two bodies of
                // one key cannot both pass the share's check.
                let mut keys = self.budget.keys();
                let held = keys.get(&key.name).copied().unwrap_or(0);
                if !key.fits(held, more) {
                    return Err(NoRoom::KeyShare);
                }
                if !self.budget.take(more, total) {
                    return Err(NoRoom::Total);
                }
                *keys.entry(key.name.clone()).or_insert(0) += more;
            }
        }
        self.bytes = bytes;
        Ok(())
    }

    fn give_back(&self, bytes: u64) {
        if let Some(key) = &self.key {
            let mut keys = self.budget.keys();
            if let Some(held) = keys.get_mut(&key.name) {
                *held = held.saturating_sub(bytes);
                if *held == 0 {
                    keys.remove(&key.name);
                }
            }
        }
        self.budget.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl KeyShare {
    /// Whether `more` fits beside `held` under this key's share.
    fn fits(&self, held: u64, more: u64) -> bool {
        held.checked_add(more)
            .is_some_and(|after| after <= self.most)
    }
}

impl Drop for BodyClaim {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.give_back(self.bytes);
        }
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
        assert!(claim.grow_to(30, 100).is_ok());
        assert!(
            claim.grow_to(20, 100).is_ok(),
            "a smaller size needs nothing more"
        );
        assert_eq!(claim.bytes(), 30);
        assert_eq!(
            claim.grow_to(51, 100),
            Err(NoRoom::Total),
            "50 + 51 is over 100"
        );
        assert_eq!((claim.bytes(), budget.held()), (30, 80));
        assert!(claim.could_grow_to(50, 100).is_ok());
        assert_eq!(claim.could_grow_to(51, 100), Err(NoRoom::Total));
        assert_eq!(claim.bytes(), 30, "asking claims nothing");
        assert!(claim.grow_to(50, 100).is_ok());
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

    #[test]
    fn one_keys_bodies_stay_under_its_share_and_others_keep_the_rest() {
        let budget = Arc::new(BodyBudget::default());
        let (greedy, other): (Arc<str>, Arc<str>) = ("greedy".into(), "other".into());
        let mut first = budget.claim(0, 100).unwrap();
        first.charge_to_key(&greedy, 70, 0).unwrap();
        assert!(first.grow_to(40, 100).is_ok());
        let mut second = budget.claim(0, 100).unwrap();
        assert_eq!(
            second.charge_to_key(&greedy, 70, 31),
            Err(NoRoom::KeyShare),
            "a declared 31 beside 40 is over the share of 70"
        );
        second.charge_to_key(&greedy, 70, 30).unwrap();
        assert_eq!(second.could_grow_to(31, 100), Err(NoRoom::KeyShare));
        assert_eq!(second.grow_to(31, 100), Err(NoRoom::KeyShare));
        assert_eq!((second.bytes(), budget.held_by("greedy")), (0, 40));
        assert!(second.grow_to(30, 100).is_ok());
        let mut others = budget.claim(0, 100).unwrap();
        others.charge_to_key(&other, 70, 0).unwrap();
        assert!(
            others.grow_to(30, 100).is_ok(),
            "the rest of the total is another key's"
        );
        assert_eq!(others.grow_to(31, 100), Err(NoRoom::Total));
        assert_eq!(
            (
                budget.held(),
                budget.held_by("greedy"),
                budget.held_by("other")
            ),
            (100, 70, 30)
        );
        assert!(first.shrink_to(10));
        assert_eq!((budget.held(), budget.held_by("greedy")), (70, 40));
        drop(first);
        drop(second);
        assert_eq!(budget.held_by("greedy"), 0);
        assert!(
            budget.keys().get("greedy").is_none(),
            "a key holding nothing has no entry"
        );
        drop(others);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_claim_charged_once_it_holds_bytes_brings_them_to_its_key() {
        let budget = Arc::new(BodyBudget::default());
        let key: Arc<str> = "k".into();
        let mut held = budget.claim(0, 100).unwrap();
        held.charge_to_key(&key, 50, 0).unwrap();
        held.grow_to(30, 100).unwrap();
        let mut late = budget.claim(25, 100).unwrap();
        assert_eq!(late.charge_to_key(&key, 50, 0), Err(NoRoom::KeyShare));
        assert_eq!(budget.held_by("k"), 30, "a refused charge adds nothing");
        assert!(late.shrink_to(20));
        late.charge_to_key(&key, 50, 0).unwrap();
        assert_eq!(budget.held_by("k"), 50);
        drop(late);
        assert_eq!((budget.held(), budget.held_by("k")), (30, 30));
    }
}
