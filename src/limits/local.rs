//! In-process limiting: per scope, governor's GCRA for requests, token
//! buckets for tokens and a semaphore for concurrency, all lock-free on the
//! request path. Admission over several scopes takes concurrency slots
//! first, then tokens, then request cells, most specific scope first; a
//! refusal gives back the slots and tokens already taken. Request cells
//! cannot be given back (GCRA has no refund), so a request refused by a
//! broader scope still counts against the narrower ones it passed.

use super::bucket::{TokenBucket, now_ns};
use super::spec::{DAY, Denial, LimitKind, LimitSpec, MINUTE, Scope, Snapshot, Window};
use governor::clock::{Clock, QuantaClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use smallvec::SmallVec;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type Gcra = RateLimiter<NotKeyed, InMemoryState, QuantaClock, StateInformationMiddleware>;

/// A request limiter: `limit` requests per `period`, as a burst that
/// refills one request every `period / limit`.
#[derive(Debug)]
struct RequestLimiter {
    gcra: Gcra,
    limit: NonZeroU32,
    kind: LimitKind,
}

impl RequestLimiter {
    fn new(limit: NonZeroU32, period: Duration, kind: LimitKind) -> Self {
        let quota = Quota::with_period(period / limit.get())
            .expect("a period of at least a minute is not zero")
            .allow_burst(limit);
        RequestLimiter {
            gcra: RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
            limit,
            kind,
        }
    }

    fn check(&self) -> Result<Window, Duration> {
        match self.gcra.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let interval = state.quota().replenish_interval();
                Ok(Window {
                    limit: u64::from(self.limit.get()),
                    remaining: u64::from(remaining),
                    reset: interval * (self.limit.get() - remaining.min(self.limit.get())),
                })
            }
            Err(not_until) => Err(not_until.wait_time_from(self.gcra.clock().now())),
        }
    }
}

/// The in-process state of one scope.
#[derive(Debug)]
pub struct LocalState {
    requests: Vec<RequestLimiter>,
    tokens: Vec<(TokenBucket, LimitKind)>,
    concurrency: Option<(Arc<Semaphore>, u32)>,
    /// Requests waiting for a concurrency slot right now.
    queued: AtomicUsize,
}

impl LocalState {
    pub fn new(spec: &LimitSpec) -> Self {
        let mut requests = Vec::new();
        if let Some(n) = spec.requests_per_minute {
            requests.push(RequestLimiter::new(n, MINUTE, LimitKind::RequestsPerMinute));
        }
        if let Some(n) = spec.requests_per_day {
            requests.push(RequestLimiter::new(n, DAY, LimitKind::RequestsPerDay));
        }
        let mut tokens = Vec::new();
        if let Some(n) = spec.tokens_per_minute {
            tokens.push((
                TokenBucket::new(n.get(), MINUTE),
                LimitKind::TokensPerMinute,
            ));
        }
        if let Some(n) = spec.tokens_per_day {
            tokens.push((TokenBucket::new(n.get(), DAY), LimitKind::TokensPerDay));
        }
        LocalState {
            requests,
            tokens,
            concurrency: spec
                .concurrent_requests
                .map(|n| (Arc::new(Semaphore::new(n.get() as usize)), n.get())),
            queued: AtomicUsize::new(0),
        }
    }

    /// Requests waiting for a concurrency slot (tests, metrics).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Concurrency slots in use.
    pub fn in_flight(&self) -> usize {
        self.concurrency
            .as_ref()
            .map_or(0, |(sem, n)| *n as usize - sem.available_permits())
    }

    /// Tokens left now in the tightest token limit (tests, metrics).
    pub fn tokens_left(&self) -> Option<u64> {
        let now = now_ns();
        self.tokens.iter().map(|(b, _)| b.peek(now).remaining).min()
    }

    /// Gives back tokens reserved but not used (or charges an overrun).
    pub fn adjust_tokens(&self, delta: i64) {
        let now = now_ns();
        for (bucket, _) in &self.tokens {
            bucket.adjust(delta, now);
        }
    }
}

/// What a local admission holds until the response ends.
#[derive(Debug, Default)]
pub struct LocalHold {
    /// Inline up to three scopes (key and model, key, global): no
    /// allocation per request.
    permits: SmallVec<[OwnedSemaphorePermit; 3]>,
    /// Scopes whose token buckets hold the reservation.
    reserved: SmallVec<[Arc<Scope>; 3]>,
}

impl LocalHold {
    /// Settles the reservation of `estimate` tokens to `actual`.
    pub fn settle(&mut self, estimate: u64, actual: u64) {
        let delta = actual as i64 - estimate as i64;
        for scope in self.reserved.drain(..) {
            scope.local.adjust_tokens(delta);
        }
    }
}

/// Admits one request against `scopes` (most specific first), reserving
/// `estimate` tokens; notes each limit's headroom in `snapshot`.
pub fn admit(
    scopes: &[&Arc<Scope>],
    estimate: u64,
    snapshot: &mut Snapshot,
) -> Result<LocalHold, Denial> {
    let mut hold = LocalHold::default();
    for scope in scopes {
        if let Some((semaphore, limit)) = &scope.local.concurrency {
            match semaphore.clone().try_acquire_owned() {
                Ok(permit) => hold.permits.push(permit),
                Err(_) => return Err(busy(scope, *limit, Duration::from_secs(1))),
            }
        }
    }
    take_tokens_and_requests(scopes, estimate, snapshot, hold)
}

/// Like [`admit`] for one scope, waiting up to `queue` for a concurrency
/// slot (a provider's cap: a slot often frees within moments).
pub async fn admit_queued(
    scope: &Arc<Scope>,
    estimate: u64,
    queue: Duration,
    snapshot: &mut Snapshot,
) -> Result<LocalHold, Denial> {
    let mut hold = LocalHold::default();
    if let Some((semaphore, limit)) = &scope.local.concurrency {
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                scope.local.queued.fetch_add(1, Ordering::Relaxed);
                let waited = tokio::time::timeout(queue, semaphore.clone().acquire_owned()).await;
                scope.local.queued.fetch_sub(1, Ordering::Relaxed);
                match waited {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(busy(scope, *limit, queue)),
                }
            }
        };
        hold.permits.push(permit);
    }
    take_tokens_and_requests(&[scope], estimate, snapshot, hold)
}

/// The second and third steps of admission, once the slots are held.
fn take_tokens_and_requests(
    scopes: &[&Arc<Scope>],
    estimate: u64,
    snapshot: &mut Snapshot,
    mut hold: LocalHold,
) -> Result<LocalHold, Denial> {
    let now = now_ns();
    for scope in scopes {
        let state = &scope.local;
        for (i, (bucket, kind)) in state.tokens.iter().enumerate() {
            match bucket.reserve(estimate, now) {
                Ok(window) => snapshot.note_tokens(window),
                Err(wait) => {
                    // Give back this scope's other buckets, then the scopes before.
                    for (earlier, _) in &state.tokens[..i] {
                        earlier.adjust(-(estimate as i64), now);
                    }
                    hold.settle(estimate, 0);
                    return Err(denial(scope, *kind, bucket.capacity(), wait));
                }
            }
        }
        if !state.tokens.is_empty() {
            hold.reserved.push(Arc::clone(scope));
        }
    }
    for scope in scopes {
        for limiter in &scope.local.requests {
            match limiter.check() {
                Ok(window) => snapshot.note_requests(window),
                Err(wait) => {
                    hold.settle(estimate, 0);
                    let limit = u64::from(limiter.limit.get());
                    return Err(denial(scope, limiter.kind, limit, wait));
                }
            }
        }
    }
    Ok(hold)
}

fn busy(scope: &Scope, limit: u32, retry_after: Duration) -> Denial {
    denial(
        scope,
        LimitKind::ConcurrentRequests,
        u64::from(limit),
        retry_after,
    )
}

fn denial(scope: &Scope, limit: LimitKind, value: u64, retry_after: Duration) -> Denial {
    Denial {
        label: scope.label.clone(),
        scope: scope.kind,
        limit,
        value,
        retry_after,
    }
}
