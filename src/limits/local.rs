//! In-process limiting: per scope, governor's GCRA for requests, token
//! buckets for tokens and a count of slots for concurrency, all lock-free
//! on the request path. Admission over several scopes takes concurrency slots
//! first, then tokens, then request cells, most specific scope first; a
//! refusal gives back the slots, tokens and request cells already taken, so
//! a request refused by a broader scope (the global limit) costs nothing in
//! the narrower ones it passed (its key's), as with the Redis backend, which
//! decides every scope at once.

use super::bucket::{TokenBucket, now_ns};
use super::slots::Slots;
use super::spec::{
    DAY, Denial, LimitKind, LimitSpec, MINUTE, Scope, Snapshot, TokenShortfall, Window,
};
use governor::clock::Clock;
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use smallvec::SmallVec;
use std::cell::Cell;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

type Gcra = RateLimiter<NotKeyed, ReturnableState, AdmissionClock, StateInformationMiddleware>;

thread_local! {
    /// The time [`AdmissionClock`] gives governor: set by
    /// [`RequestLimiter::check`] just before it asks.
    static ADMISSION_NOW: Cell<u64> = const { Cell::new(0) };
}

/// The clock governor decides on: the admission's own reading of
/// [`now_ns`], handed over through the thread. Every limit of a request is
/// checked at one reading (not one per limit), and the limiter knows the
/// exact time it was decided at, in the frame its state is kept in, so it
/// can tell when it admits again. A limiter made while the thread's
/// reading is 0 starts its frame at [`now_ns`]'s own zero.
#[derive(Debug, Default, Clone, Copy)]
struct AdmissionClock;

impl Clock for AdmissionClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::new(ADMISSION_NOW.with(Cell::get))
    }
}

/// governor's GCRA state (the theoretical arrival time, in nanoseconds
/// since the limiter began; 0 before the first request) kept where the
/// limiter can also give a request back. governor's own in-memory state
/// cannot be reached from outside the limiter.
#[derive(Debug, Default, Clone)]
struct ReturnableState(Arc<AtomicU64>);

impl StateStore for ReturnableState {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut seen = self.0.load(Ordering::Acquire);
        loop {
            let arrival = (seen != 0).then(|| Nanos::new(seen));
            let (outcome, next) = decide(arrival)?;
            match self.0.compare_exchange_weak(
                seen,
                next.as_u64(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(outcome),
                Err(changed) => seen = changed,
            }
        }
    }
}

impl ReturnableState {
    /// Undoes one admitted request: its cell (`interval` of arrival time)
    /// is free again. A time that falls to or below now just means a full
    /// burst, as GCRA reads any arrival time in the past.
    fn give_back(&self, interval: Nanos) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |arrival| {
                (arrival != 0).then(|| arrival.saturating_sub(interval.as_u64()))
            });
    }
}

/// A request limiter: `limit` requests per `period`, as a burst that
/// refills one request every `period / limit`.
#[derive(Debug)]
struct RequestLimiter {
    gcra: Gcra,
    /// The state `gcra` decides on, shared with it.
    state: ReturnableState,
    /// The time one request takes up (`period / limit`).
    interval: Nanos,
    limit: NonZeroU32,
    kind: LimitKind,
    /// When the limit next admits a request, as of the last time it was
    /// seen spent ([`now_ns`]; 0: never). GCRA cannot be asked without
    /// taking a request, so a token limit's refusal reads this to tell
    /// the client the longest wait; kept only when the limit runs out.
    spent_until: AtomicU64,
}

impl RequestLimiter {
    fn new(limit: NonZeroU32, period: Duration, kind: LimitKind) -> Self {
        let interval = period / limit.get();
        let quota = Quota::with_period(interval)
            .expect("a period of at least a minute is not zero")
            .allow_burst(limit);
        let state = ReturnableState::default();
        // governor takes its start from the clock: [`now_ns`]'s zero.
        ADMISSION_NOW.with(|now| now.set(0));
        RequestLimiter {
            gcra: RateLimiter::<_, _, _, NoOpMiddleware<_>>::new(
                quota,
                state.clone(),
                AdmissionClock,
            )
            .with_middleware::<StateInformationMiddleware>(),
            state,
            interval: Nanos::from(interval),
            limit,
            kind,
            spent_until: AtomicU64::new(0),
        }
    }

    /// Takes one request at `now` ([`now_ns`]), or says how long until one
    /// is admitted.
    fn check(&self, now: u64) -> Result<Window, Duration> {
        ADMISSION_NOW.with(|cell| cell.set(now));
        match self.gcra.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                // When the state would be a full burst again; another
                // request admitted since can only make it later.
                let full_at = self.state.0.load(Ordering::Acquire);
                if remaining == 0 {
                    // The next request conforms once the state is within a
                    // burst less one request of now.
                    let burst_less_one = self.interval.as_u64() * u64::from(self.limit.get() - 1);
                    let admits_at = full_at.saturating_sub(burst_less_one);
                    self.note_spent_until(admits_at.max(now));
                }
                Ok(Window {
                    limit: u64::from(self.limit.get()),
                    remaining: u64::from(remaining),
                    reset: Duration::from_nanos(full_at.saturating_sub(now)),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(Nanos::new(now));
                self.note_spent_until(now.saturating_add(wait.as_nanos() as u64));
                Err(wait)
            }
        }
    }

    /// Gives back a request [`Self::check`] admitted, whose admission was
    /// then refused by another limit. The limit has room again, so what
    /// was seen spent no longer holds.
    fn give_back(&self) {
        self.state.give_back(self.interval);
        self.spent_until.store(0, Ordering::Relaxed);
    }

    /// The limit admits nothing before `until` ([`now_ns`]).
    fn note_spent_until(&self, until: u64) {
        self.spent_until.fetch_max(until, Ordering::Relaxed);
    }

    /// How long the limit would refuse a request at `now`, as last seen.
    fn wait_seen(&self, now: u64) -> Option<Duration> {
        let until = self.spent_until.load(Ordering::Relaxed);
        (until > now).then(|| Duration::from_nanos(until - now))
    }
}

/// The in-process state of one scope. Each limit's state is shared, so a
/// reload that changes one limit of a scope carries the others' counts
/// over ([`LocalState::after`]).
#[derive(Debug)]
pub struct LocalState {
    requests: Vec<Arc<RequestLimiter>>,
    tokens: Vec<(Arc<TokenBucket>, LimitKind)>,
    concurrency: Option<Arc<Slots>>,
}

impl LocalState {
    pub fn new(spec: &LimitSpec) -> Self {
        Self::build(spec, None)
    }

    /// The state of a scope whose limits became `spec`, taking over from
    /// `previous` (the same scope's state under its former limits) every
    /// limit that did not change: changing a key's tokens per minute does
    /// not give it a fresh day of requests. A changed limit starts afresh,
    /// its old count measured against another number.
    pub fn after(spec: &LimitSpec, previous: &LocalState) -> Self {
        Self::build(spec, Some(previous))
    }

    fn build(spec: &LimitSpec, previous: Option<&LocalState>) -> Self {
        let mut requests = Vec::new();
        let request_limits = [
            (
                spec.requests_per_minute,
                MINUTE,
                LimitKind::RequestsPerMinute,
            ),
            (spec.requests_per_day, DAY, LimitKind::RequestsPerDay),
        ];
        for (limit, period, kind) in request_limits {
            let Some(limit) = limit else { continue };
            let kept = previous
                .into_iter()
                .flat_map(|p| &p.requests)
                .find(|old| old.kind == kind && old.limit == limit);
            requests.push(match kept {
                Some(old) => Arc::clone(old),
                None => Arc::new(RequestLimiter::new(limit, period, kind)),
            });
        }
        let mut tokens = Vec::new();
        let token_limits = [
            (spec.tokens_per_minute, MINUTE, LimitKind::TokensPerMinute),
            (spec.tokens_per_day, DAY, LimitKind::TokensPerDay),
        ];
        for (limit, period, kind) in token_limits {
            let Some(limit) = limit else { continue };
            let kept = previous
                .into_iter()
                .flat_map(|p| &p.tokens)
                .find(|(old, old_kind)| *old_kind == kind && old.capacity() == limit.get());
            let bucket = match kept {
                Some((old, _)) => Arc::clone(old),
                None => Arc::new(TokenBucket::new(limit.get(), period)),
            };
            tokens.push((bucket, kind));
        }
        let concurrency = spec.concurrent_requests.map(|limit| {
            match previous.and_then(|p| p.concurrency.as_ref()) {
                Some(old) if old.limit() == limit.get() => Arc::clone(old),
                _ => Arc::new(Slots::new(limit.get())),
            }
        });
        LocalState {
            requests,
            tokens,
            concurrency,
        }
    }

    /// Requests waiting for a concurrency slot (tests, metrics).
    pub fn queued(&self) -> usize {
        self.concurrency.as_deref().map_or(0, Slots::waiting)
    }

    /// Concurrency slots in use.
    pub fn in_flight(&self) -> usize {
        self.concurrency.as_deref().map_or(0, Slots::in_use)
    }

    /// Tokens left now in the tightest token limit (the API tests read it).
    pub fn tokens_left(&self) -> Option<u64> {
        let now = now_ns();
        self.tokens.iter().map(|(b, _)| b.peek(now).remaining).min()
    }

    /// Gives back tokens reserved but not used (or charges an overrun), as
    /// of `now` ([`now_ns`]).
    pub fn adjust_tokens(&self, delta: i64, now: u64) {
        for (bucket, _) in &self.tokens {
            bucket.adjust(delta, now);
        }
    }
}

/// What a local admission holds until the response ends: a concurrency
/// slot, a token reservation or both, per scope. Dropping it gives the slots
/// back.
#[derive(Debug, Default)]
pub struct LocalHold {
    /// Inline up to three scopes (key and model, key, global): no
    /// allocation per request.
    scopes: SmallVec<[HeldScope; 3]>,
}

#[derive(Debug)]
struct HeldScope {
    scope: Arc<Scope>,
    slot: bool,
    tokens: bool,
}

impl LocalHold {
    fn hold_slot(&mut self, scope: &Arc<Scope>) {
        self.scopes.push(HeldScope {
            scope: Arc::clone(scope),
            slot: true,
            tokens: false,
        });
    }

    fn hold_tokens(&mut self, scope: &Arc<Scope>) {
        match self
            .scopes
            .iter_mut()
            .find(|held| Arc::ptr_eq(&held.scope, scope))
        {
            Some(held) => held.tokens = true,
            None => self.scopes.push(HeldScope {
                scope: Arc::clone(scope),
                slot: false,
                tokens: true,
            }),
        }
    }

    /// Settles the reservation of `estimate` tokens to `actual` (once).
    pub fn settle(&mut self, estimate: u64, actual: u64) {
        let delta = super::admission::token_delta(estimate, actual);
        // One clock reading for every scope, and none when the estimate
        // was right.
        let mut now = None;
        for held in &mut self.scopes {
            if std::mem::take(&mut held.tokens) && delta != 0 {
                let now = *now.get_or_insert_with(now_ns);
                held.scope.local.adjust_tokens(delta, now);
            }
        }
    }
}

impl Drop for LocalHold {
    fn drop(&mut self) {
        for held in &self.scopes {
            if held.slot
                && let Some(slots) = &held.scope.local.concurrency
            {
                slots.give_back();
            }
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
        if let Some(slots) = &scope.local.concurrency {
            if !slots.try_take() {
                return Err(outwaited(busy(scope, slots.limit()), scopes, estimate));
            }
            hold.hold_slot(scope);
        }
    }
    take_tokens_and_requests(scopes, estimate, snapshot, hold)
}

/// After [`admit`] refused a request for a concurrency slot (`refused`):
/// waits up to `grace` for one to be given back, then asks once more. A
/// client that closes a stream and asks again at once can be read on its
/// new connection before its close is seen on the old one (the accept
/// loop's new task runs before the tasks woken with it), and its own slot,
/// about to be given back, would refuse it.
pub async fn admit_after_grace(
    scopes: &[&Arc<Scope>],
    estimate: u64,
    grace: Duration,
    snapshot: &mut Snapshot,
    refused: Denial,
) -> Result<LocalHold, Denial> {
    let full = scopes
        .iter()
        .filter_map(|scope| scope.local.concurrency.as_ref())
        .find(|slots| slots.in_use() >= slots.limit() as usize);
    if let Some(slots) = full {
        if !slots.take_within(grace).await {
            return Err(refused);
        }
        // Given back at once: `admit` takes every scope's slot in order.
        slots.give_back();
    }
    admit(scopes, estimate, snapshot)
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
    if let Some(slots) = &scope.local.concurrency {
        if !slots.take_within(queue).await {
            return Err(outwaited(busy(scope, slots.limit()), &[scope], estimate));
        }
        hold.hold_slot(scope);
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
    // Read the clock only for scopes with token or request limits (a
    // provider's cap is often only concurrency), once for all of them.
    let mut clock = None;
    for scope in scopes {
        let state = &scope.local;
        if state.tokens.is_empty() {
            continue;
        }
        let now = *clock.get_or_insert_with(now_ns);
        for (i, (bucket, kind)) in state.tokens.iter().enumerate() {
            match bucket.reserve(estimate, now) {
                Ok(window) => snapshot.note_tokens(window),
                Err(wait) => {
                    // Give back this scope's other buckets, then the scopes before.
                    for (earlier, _) in &state.tokens[..i] {
                        earlier.adjust(-(estimate as i64), now);
                    }
                    hold.settle(estimate, 0);
                    let refusing = Refusing {
                        scope,
                        bucket,
                        kind: *kind,
                        wait,
                    };
                    let worst = longest_token_wait(refusing, scopes, estimate, now);
                    // A request limit that would refuse for longer is the
                    // one to name: a client that waits less is refused again.
                    if let Some((scope, limiter, wait)) = longest_request_wait(scopes, now)
                        && wait > worst.wait
                    {
                        let limit = u64::from(limiter.limit.get());
                        return Err(denial(scope, limiter.kind, limit, wait));
                    }
                    return Err(worst.denial(estimate, now));
                }
            }
        }
        hold.hold_tokens(scope);
    }
    for (at, scope) in scopes.iter().enumerate() {
        for (i, limiter) in scope.local.requests.iter().enumerate() {
            let now = *clock.get_or_insert_with(now_ns);
            match limiter.check(now) {
                Ok(window) => snapshot.note_requests(window),
                Err(wait) => {
                    // All or nothing: the request cells taken before this
                    // one go back, with the tokens.
                    let earlier_scopes = scopes[..at].iter().flat_map(|s| &s.local.requests);
                    for earlier in earlier_scopes.chain(&scope.local.requests[..i]) {
                        earlier.give_back();
                    }
                    hold.settle(estimate, 0);
                    let limit = u64::from(limiter.limit.get());
                    let refused = denial(scope, limiter.kind, limit, wait);
                    return Err(outwaited(refused, scopes, estimate));
                }
            }
        }
    }
    Ok(hold)
}

/// A token limit that refuses a request, and for how long.
struct Refusing<'a> {
    scope: &'a Scope,
    bucket: &'a TokenBucket,
    kind: LimitKind,
    wait: Duration,
}

impl Refusing<'_> {
    fn denial(&self, estimate: u64, now: u64) -> Denial {
        let mut denial = denial(self.scope, self.kind, self.bucket.capacity(), self.wait);
        denial.shortfall = Some(TokenShortfall {
            left: self.bucket.peek(now).remaining,
            estimate,
        });
        denial
    }
}

/// Of every token limit that would refuse `estimate` now, the one with the
/// longest wait: a spent daily budget is what the client must hear about,
/// not the minute limit that happened to be checked first. Runs only on a
/// refusal, and takes nothing.
fn longest_token_wait<'a>(
    first: Refusing<'a>,
    scopes: &[&'a Arc<Scope>],
    estimate: u64,
    now: u64,
) -> Refusing<'a> {
    let mut worst = first;
    for scope in scopes {
        for (bucket, kind) in &scope.local.tokens {
            if let Some(wait) = bucket.wait_for(estimate, now)
                && wait > worst.wait
            {
                worst = Refusing {
                    scope,
                    bucket,
                    kind: *kind,
                    wait,
                };
            }
        }
    }
    worst
}

/// `first`, a refusal by a concurrency or request limit, unless another
/// limit of the request's scopes would refuse for longer: a request limit
/// seen spent, or a token limit short of `estimate` (none is held by this
/// request any more). A client that waits `retry-after-ms` must not be
/// refused again by a limit it was not told of. Runs only on a refusal,
/// and takes nothing.
fn outwaited(first: Denial, scopes: &[&Arc<Scope>], estimate: u64) -> Denial {
    let now = now_ns();
    let mut worst = first;
    if let Some((scope, limiter, wait)) = longest_request_wait(scopes, now)
        && wait > worst.retry_after
    {
        worst = denial(scope, limiter.kind, u64::from(limiter.limit.get()), wait);
    }
    for scope in scopes {
        for (bucket, kind) in &scope.local.tokens {
            if let Some(wait) = bucket.wait_for(estimate, now)
                && wait > worst.retry_after
            {
                let refusing = Refusing {
                    scope,
                    bucket,
                    kind: *kind,
                    wait,
                };
                worst = refusing.denial(estimate, now);
            }
        }
    }
    worst
}

/// Of every request limit seen spent, the one that would refuse longest
/// at `now`. Takes nothing.
fn longest_request_wait<'a>(
    scopes: &[&'a Arc<Scope>],
    now: u64,
) -> Option<(&'a Scope, &'a RequestLimiter, Duration)> {
    scopes
        .iter()
        .flat_map(|scope| {
            scope
                .local
                .requests
                .iter()
                .filter_map(move |limiter| Some((&***scope, &**limiter, limiter.wait_seen(now)?)))
        })
        .max_by_key(|(_, _, wait)| *wait)
}

/// How long a client refused for a concurrency limit is asked to wait: no
/// one knows when a slot frees, and a provider's queue wait (250 ms by
/// default) is too short to ask of a client, whose SDK would spend its
/// retries within half a second.
pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

fn busy(scope: &Scope, limit: u32) -> Denial {
    denial(
        scope,
        LimitKind::ConcurrentRequests,
        u64::from(limit),
        BUSY_RETRY_AFTER,
    )
}

fn denial(scope: &Scope, limit: LimitKind, value: u64, retry_after: Duration) -> Denial {
    Denial {
        label: scope.label.clone(),
        scope: scope.kind,
        limit,
        value,
        retry_after,
        shortfall: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request given back is one the limit admits again, once: the
    /// state governor decides on is the one given back to.
    #[test]
    fn a_request_given_back_is_admitted_again() {
        let limiter = RequestLimiter::new(
            NonZeroU32::new(3).unwrap(),
            MINUTE,
            LimitKind::RequestsPerMinute,
        );
        let now = now_ns();
        for left in [2, 1, 0] {
            assert_eq!(limiter.check(now).unwrap().remaining, left);
        }
        assert!(limiter.check(now).is_err());
        assert!(limiter.wait_seen(now).is_some());
        limiter.give_back();
        assert_eq!(limiter.wait_seen(now), None);
        assert_eq!(limiter.check(now).unwrap().remaining, 0);
        assert!(limiter.check(now).is_err());
        // Giving back more than was taken leaves a full burst, no more.
        for _ in 0..10 {
            limiter.give_back();
        }
        for left in [2, 1, 0] {
            assert_eq!(limiter.check(now).unwrap().remaining, left);
        }
        assert!(limiter.check(now).is_err());
    }

    const SEC: u64 = 1_000_000_000;

    /// What a request limit says of its wait and reset is exact when it
    /// has partly refilled, not a whole refill interval off: two a minute,
    /// both taken at 0; at 45 s one is back (it came at 30 s), and taking
    /// it leaves the next due at 60 s and the burst full at 90 s.
    #[test]
    fn waits_and_resets_are_exact_after_a_partial_refill() {
        let limiter = RequestLimiter::new(
            NonZeroU32::new(2).unwrap(),
            MINUTE,
            LimitKind::RequestsPerMinute,
        );
        let start = 1000 * SEC;
        let first = limiter.check(start).unwrap();
        assert_eq!((first.remaining, first.reset.as_secs()), (1, 30));
        let second = limiter.check(start).unwrap();
        assert_eq!((second.remaining, second.reset.as_secs()), (0, 60));
        assert_eq!(limiter.wait_seen(start), Some(Duration::from_secs(30)));
        assert_eq!(limiter.check(start), Err(Duration::from_secs(30)));

        let later = start + 45 * SEC;
        let third = limiter.check(later).unwrap();
        assert_eq!(third.remaining, 0);
        assert_eq!(third.reset, Duration::from_secs(45), "full at 90 s");
        assert_eq!(
            limiter.wait_seen(later),
            Some(Duration::from_secs(15)),
            "the next is due at 60 s"
        );
        assert_eq!(limiter.check(later), Err(Duration::from_secs(15)));
        assert_eq!(limiter.wait_seen(later), Some(Duration::from_secs(15)));
        let due = start + 60 * SEC;
        assert!(limiter.check(due - 1).is_err());
        assert_eq!(limiter.check(due).unwrap().reset, Duration::from_secs(60));
    }
}
