//! Attempts across a route's targets until one answers, before any byte has
//! reached the client. Targets go in priority order (equal priorities in a
//! weighted random order); a retryable failure moves on to the next target,
//! and coming back to a target already tried waits an exponential backoff
//! with jitter, or the target's `Retry-After` when it is longer. A target
//! that asks for a longer wait than allowed, refuses the gateway's key, or
//! has no quota left is skipped for the rest of the request.

use super::route::{Route, Target};
use crate::error::code;
use crate::error::{ErrorType, GatewayError};
use crate::limits::ScopeKind;
use http::{HeaderValue, StatusCode};
use smallvec::SmallVec;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// The retry policy, from `[retry]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// After this long from the request's arrival no target already tried
    /// is tried again and no wait is waited past it; a target not yet
    /// tried still is.
    pub deadline: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A target asking to wait longer than this is skipped, not waited on.
    pub max_retry_after: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 3,
            deadline: Duration::from_secs(60),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(5),
        }
    }
}

/// What a failed attempt means for the rest of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request itself is at fault: answer the client now.
    Final,
    /// This target cannot serve (our key refused, quota gone): try others.
    SkipTarget,
    /// Worth another attempt; `unhealthy` when it counts against the target.
    Retry { unhealthy: bool },
}

pub fn classify(err: &GatewayError) -> Verdict {
    match err.error_type {
        // The request itself: any provider would say the same.
        ErrorType::InvalidRequestError | ErrorType::ContentFilter => Verdict::Final,
        // A model not found at one provider (retired there, or not open to
        // the gateway's account) may be served by another.
        ErrorType::ExceededCurrentQuotaError
        | ErrorType::PermissionDeniedError
        | ErrorType::InvalidAuthenticationError
        | ErrorType::ResourceNotFoundError => Verdict::SkipTarget,
        ErrorType::ServerError if err.code.as_deref() == Some(code::UPSTREAM_KEY_REJECTED) => {
            Verdict::SkipTarget
        }
        // 501 or 505: this provider would answer the same again.
        ErrorType::ServerError if err.details.as_ref().is_some_and(|d| d.not_implemented_here) => {
            Verdict::SkipTarget
        }
        // The drain deadline passed: no other target would be allowed longer.
        ErrorType::ServerError if err.code.as_deref() == Some(code::GATEWAY_SHUTDOWN) => {
            Verdict::Final
        }
        // The answer came but found no room: another provider's would not
        // find any either, and would cost its tokens too.
        ErrorType::ServerError if no_room_for_answer(err) => Verdict::Final,
        ErrorType::RateLimitReachedError | ErrorType::EngineOverloadedError => {
            Verdict::Retry { unhealthy: false }
        }
        // The limit store is out of reach (probed every 500 ms): this
        // target's limit cannot be checked again within a retry's backoff,
        // but a target with no limit in the store may serve now.
        ErrorType::ServerError
            if err.code.as_deref() == Some(code::RATE_LIMIT_STORE_UNAVAILABLE) =>
        {
            Verdict::SkipTarget
        }
        // The gateway's own descriptors failed it: the provider is not to
        // blame (and may be another target's to serve).
        ErrorType::ServerError if never_sent(err) => Verdict::Retry { unhealthy: false },
        ErrorType::ServerError => Verdict::Retry { unhealthy: true },
    }
}

/// Whether a failed attempt never reached its provider, so that it says
/// nothing of the provider's health: the gateway's own limit for the
/// provider refused it, the limit store to check that limit was out of
/// reach, or the gateway had no descriptor for the connection.
fn never_sent(err: &GatewayError) -> bool {
    err.limit_scope.is_some()
        || matches!(
            err.code.as_deref(),
            Some(code::GATEWAY_OUT_OF_RESOURCES | code::RATE_LIMIT_STORE_UNAVAILABLE)
        ) && !no_room_for_answer(err)
}

fn no_room_for_answer(err: &GatewayError) -> bool {
    err.details.as_ref().is_some_and(|d| d.no_room_for_answer)
}

/// How one attempt ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Success,
    /// Failed; the next attempt goes to the same target.
    Retry,
    /// Failed; the next attempt goes to another target.
    Failover,
    /// The provider refused the gateway's key (the target is skipped).
    KeyRejected,
    /// Failed, and no attempt followed.
    Error,
    /// The client left while it was under way (sent, or queued for the
    /// provider's cap), so it never ended.
    ClientClosed,
}

impl AttemptOutcome {
    /// Every outcome, for series made at 0 before the first is counted.
    pub const ALL: [AttemptOutcome; 6] = [
        AttemptOutcome::Success,
        AttemptOutcome::Retry,
        AttemptOutcome::Failover,
        AttemptOutcome::KeyRejected,
        AttemptOutcome::Error,
        AttemptOutcome::ClientClosed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Failover => "failover",
            AttemptOutcome::KeyRejected => "key_rejected",
            AttemptOutcome::Error => "error",
            AttemptOutcome::ClientClosed => "client_closed",
        }
    }
}

/// Which target answered (or failed last), and after how many attempts.
#[derive(Debug, Default)]
pub struct AttemptReport<'a> {
    pub attempts: u32,
    pub target: Option<&'a Target>,
}

#[derive(Clone, Copy, Default)]
struct TargetState {
    tried: bool,
    skipped: bool,
    not_before: Option<Instant>,
    /// Its last attempt queued for the provider's slot until the queue
    /// time ran out: the next one queues again with no backoff.
    queue_again: bool,
}

/// Runs `attempt` against the route's targets until one succeeds or the
/// policy gives up (no new attempt `settings.deadline` after `arrived`).
/// `on_event` hears about every attempt's outcome and
/// every target skipped because its circuit is open. `report` is the
/// caller's, and says which target and how many attempts as each attempt
/// starts: a request dropped mid-attempt still knows where it was.
pub async fn run<'a, T, F, Fut>(
    route: &'a Route,
    settings: &RetrySettings,
    arrived: Instant,
    report: &mut AttemptReport<'a>,
    mut attempt: F,
    on_event: impl FnMut(&'a Target, Event),
) -> Result<T, GatewayError>
where
    F: FnMut(&'a Target) -> Fut,
    Fut: Future<Output = Result<T, GatewayError>>,
{
    let mut events = Events {
        on_event,
        failed: None,
    };
    let order = plan(route);
    let mut states: SmallVec<[TargetState; INLINE_TARGETS]> =
        smallvec::smallvec![TargetState::default(); order.len()];
    let mut last_error: Option<GatewayError> = None;
    let mut cursor = 0;
    let deadline = arrived + settings.deadline;
    while report.attempts < settings.max_attempts {
        let now = Instant::now();
        let Some(i) = next_target(&states, cursor, now >= deadline, now) else {
            break;
        };
        let target = order[i];
        let mut wake = None;
        if states[i].tried {
            let backoff = if states[i].queue_again {
                Duration::ZERO
            } else {
                backoff(settings, report.attempts)
            };
            let hinted = states[i]
                .not_before
                .map_or(Duration::ZERO, |t| t - now.min(t));
            let at = now + backoff.max(hinted);
            if at > deadline {
                // Not waited for past the deadline; a target not yet
                // tried still may be.
                states[i].skipped = true;
                continue;
            }
            wake = Some(at);
        }
        if let Some(wake) = wake {
            if !target.breaker.would_admit() {
                states[i].skipped = true;
                events.emit(target, Event::BreakerOpen);
                continue;
            }
            // The circuit is asked after the wait, not before: a
            // half-open circuit's one probe is not held through a backoff
            // while every other request is turned away from the target.
            let waiting = Waiting {
                events: &mut events,
                next: Some(target),
            };
            tokio::time::sleep_until(wake).await;
            waiting.over();
        }
        let Some(permit) = target.breaker.try_acquire() else {
            states[i].skipped = true;
            events.emit(target, Event::BreakerOpen);
            continue;
        };
        cursor = i + 1;
        events.another_follows(target);
        states[i].tried = true;
        report.attempts += 1;
        report.target = Some(target);
        let mut under_way = UnderWay {
            events: &mut events,
            target: Some(target),
        };
        let result = attempt(target).await;
        under_way.target = None;
        drop(under_way);
        let error = match result {
            Ok(value) => {
                permit.success();
                events.emit(target, Event::Attempt(AttemptOutcome::Success));
                return Ok(value);
            }
            Err(error) => error,
        };
        let verdict = classify(&error);
        // Only what the provider answered says anything about its health;
        // a half-open circuit's probe goes to the next attempt instead.
        let permit = if never_sent(&error) {
            permit.not_sent();
            None
        } else {
            Some(permit)
        };
        let outcome = match verdict {
            Verdict::Final => {
                if let Some(permit) = permit {
                    permit.neutral();
                }
                events.emit(target, Event::Attempt(AttemptOutcome::Error));
                return Err(error);
            }
            Verdict::SkipTarget => {
                // The target answered: its account, or what it implements,
                // not its health, is at fault. An open circuit would turn
                // the error that names the cause (and is not worth
                // retrying) into a retryable `circuit_open`, and silence
                // the key alert.
                if let Some(permit) = permit {
                    permit.neutral();
                }
                states[i].skipped = true;
                if error.code.as_deref() == Some(code::UPSTREAM_KEY_REJECTED) {
                    AttemptOutcome::KeyRejected
                } else {
                    AttemptOutcome::Failover
                }
            }
            Verdict::Retry { unhealthy } => {
                match permit {
                    Some(permit) if unhealthy => permit.failure(),
                    Some(permit) => permit.neutral(),
                    None => {}
                }
                // The gateway's own cap on the provider refused after
                // queueing: the queue was the wait. The next attempt there
                // queues again at once, with no backoff either (a freed
                // slot wakes it), rather than leaving a slot that frees
                // meanwhile to newcomers.
                let queued = error.limit_scope == Some(ScopeKind::Provider)
                    && error.error_type == ErrorType::EngineOverloadedError;
                states[i].queue_again = queued;
                match asked_wait(&error).filter(|_| !queued) {
                    Some(wait) if wait > settings.max_retry_after => states[i].skipped = true,
                    Some(wait) => states[i].not_before = Some(Instant::now() + wait),
                    None => {}
                }
                AttemptOutcome::Retry
            }
        };
        events.failed = Some((target, outcome));
        last_error = Some(error);
    }
    events.none_follows();
    Err(last_error.unwrap_or_else(|| every_circuit_open(route, &order)))
}

/// A provider refused the gateway's key: the error names the key variable
/// the attempt used (the provider's message names every one, "check A or
/// B"). Returns that variable, for the alert line the caller writes with
/// the request's id.
pub fn name_the_refused_key<'t>(target: &'t Target, error: &mut GatewayError) -> &'t str {
    let key = target.provider.keys.get(target.key_index);
    if let Some(key) = key
        && target.provider.keys.len() > 1
        && let Some(before) = error.message.strip_suffix(&*target.provider.api_key_env)
    {
        error.message = format!("{before}{}", key.env).into();
    }
    key.map_or("", |key| key.env.as_str())
}

/// The answer when no target was tried, every one's circuit open: when
/// the first will let a probe through.
fn every_circuit_open(route: &Route, order: &[&Target]) -> GatewayError {
    let wait = order
        .iter()
        .filter_map(|t| t.breaker.opens_in())
        .min()
        .unwrap_or(Duration::from_secs(1));
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    GatewayError::server(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "every provider of model {:?} is failing (circuit open); try again in {secs} s",
            &*route.name
        ),
    )
    .with_code(code::CIRCUIT_OPEN)
    .with_retry_after(Some(HeaderValue::from(secs.max(1))))
}

/// The caller's `on_event`, and a failed attempt held until it is known
/// whether another attempt follows it, and where: one after which the
/// deadline or every circuit open ends the request was the last (`Error`),
/// and the one after it, not the failure, says whether it was a `Retry`
/// (the same target) or a `Failover` (another).
struct Events<'a, E: FnMut(&'a Target, Event)> {
    on_event: E,
    /// The target, and `KeyRejected` or what the failure alone says.
    failed: Option<(&'a Target, AttemptOutcome)>,
}

impl<'a, E: FnMut(&'a Target, Event)> Events<'a, E> {
    fn emit(&mut self, target: &'a Target, event: Event) {
        (self.on_event)(target, event);
    }

    /// An attempt at `next` follows: the failed one was a retry or a
    /// failover (a refused key stays that).
    fn another_follows(&mut self, next: &Target) {
        if let Some((target, outcome)) = self.failed.take() {
            let outcome = match outcome {
                AttemptOutcome::KeyRejected => outcome,
                _ if std::ptr::eq(target, next) => AttemptOutcome::Retry,
                _ => AttemptOutcome::Failover,
            };
            self.emit(target, Event::Attempt(outcome));
        }
    }

    /// The request ends: the failed attempt was its last.
    fn none_follows(&mut self) {
        if let Some((target, outcome)) = self.failed.take() {
            let outcome = match outcome {
                AttemptOutcome::KeyRejected => outcome,
                _ => AttemptOutcome::Error,
            };
            self.emit(target, Event::Attempt(outcome));
        }
    }
}

/// The target to try next: among those not skipped, the one ready
/// soonest (a target not yet tried is ready now; one tried is ready when
/// the wait its provider asked for ends), the first after `cursor` among
/// equals. Past the deadline only targets not yet tried are left: a
/// timeout that used up the deadline still fails over.
fn next_target(
    states: &[TargetState],
    cursor: usize,
    past_deadline: bool,
    now: Instant,
) -> Option<usize> {
    let mut best: Option<(usize, Instant)> = None;
    for step in 0..states.len() {
        let i = (cursor + step) % states.len();
        let state = &states[i];
        if state.skipped || (past_deadline && state.tried) {
            continue;
        }
        let ready = match state.not_before {
            Some(at) if state.tried => at.max(now),
            _ => now,
        };
        if best.is_none_or(|(_, soonest)| ready < soonest) {
            best = Some((i, ready));
        }
    }
    best.map(|(i, _)| i)
}

/// An attempt being awaited. Dropped before it ends, the request was
/// dropped with it (the client left): the attempt is reported as
/// `ClientClosed`, so every attempt has an outcome.
struct UnderWay<'e, 'a, E: FnMut(&'a Target, Event)> {
    events: &'e mut Events<'a, E>,
    /// Taken when the attempt ended.
    target: Option<&'a Target>,
}

impl<'a, E: FnMut(&'a Target, Event)> Drop for UnderWay<'_, 'a, E> {
    fn drop(&mut self) {
        if let Some(target) = self.target.take() {
            self.events
                .emit(target, Event::Attempt(AttemptOutcome::ClientClosed));
        }
    }
}

/// A backoff being waited before an attempt at `next`. Dropped before it
/// is over, the client left during it: the failed attempt before it is
/// counted as the retry (or fail-over) it was heading for.
struct Waiting<'e, 'a, E: FnMut(&'a Target, Event)> {
    events: &'e mut Events<'a, E>,
    next: Option<&'a Target>,
}

impl<'a, E: FnMut(&'a Target, Event)> Waiting<'_, 'a, E> {
    /// The wait ended: what the failed attempt was is known once the next
    /// one is let through (or is not).
    fn over(mut self) {
        self.next = None;
    }
}

impl<'a, E: FnMut(&'a Target, Event)> Drop for Waiting<'_, 'a, E> {
    fn drop(&mut self) {
        if let Some(next) = self.next.take() {
            self.events.another_follows(next);
        }
    }
}

/// The `upstream_attempts_total` outcome of a target passed over because
/// its circuit is open.
pub const BREAKER_OPEN: &str = "breaker_open";

/// Something the caller may want to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Attempt(AttemptOutcome),
    /// A target was passed over because its circuit is open.
    BreakerOpen,
}

/// Routes with up to this many targets plan their attempts without
/// allocating.
const INLINE_TARGETS: usize = 6;

/// A route's targets in the order to try them.
type Plan<'a> = SmallVec<[&'a Target; INLINE_TARGETS]>;

/// Usable targets in the order to try them: by priority, and among equal
/// priorities in a random order weighted by `weight`.
fn plan(route: &Route) -> Plan<'_> {
    let mut keyed: SmallVec<[(u32, f64, &Target); INLINE_TARGETS]> = route
        .usable_targets()
        .map(|t| {
            // Efraimidis-Spirakis: sorting by U^(1/w) descending samples by weight.
            let u = fastrand::f64().max(f64::MIN_POSITIVE);
            let key = if t.weight == 1.0 {
                u
            } else {
                u.powf(1.0 / t.weight)
            };
            (t.priority, -key, t)
        })
        .collect();
    if keyed.len() > 1 {
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    }
    keyed.into_iter().map(|(_, _, t)| t).collect()
}

/// Exponential backoff with equal jitter before attempt number `attempts + 1`.
fn backoff(settings: &RetrySettings, attempts: u32) -> Duration {
    let exp = settings
        .backoff_base
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(settings.backoff_max);
    exp / 2 + exp.mul_f64(fastrand::f64() / 2.0)
}

/// The wait the failed attempt's provider (or the gateway's own limit)
/// asked for. A `Retry-After` that reads as neither seconds nor a date is
/// taken as a long wait, so the target is skipped rather than hammered.
fn asked_wait(error: &GatewayError) -> Option<Duration> {
    const UNREADABLE: Duration = Duration::from_secs(u32::MAX as u64);
    if let Some(ms) = error.retry_after_ms {
        return Some(Duration::from_millis(ms.get().into()));
    }
    if error.details.as_ref().is_some_and(|d| d.unreadable_wait) {
        return Some(UNREADABLE);
    }
    let value = error.retry_after.as_ref()?;
    Some(
        super::provider_wait::retry_after(value.as_bytes(), std::time::SystemTime::now())
            .unwrap_or(UNREADABLE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_documented_rules() {
        let err = |t: ErrorType| GatewayError::new(t.default_status(), t, "x");
        assert_eq!(
            classify(&err(ErrorType::InvalidRequestError)),
            Verdict::Final
        );
        assert_eq!(classify(&err(ErrorType::ContentFilter)), Verdict::Final);
        assert_eq!(
            classify(&err(ErrorType::ResourceNotFoundError)),
            Verdict::SkipTarget
        );
        assert_eq!(
            classify(&err(ErrorType::ExceededCurrentQuotaError)),
            Verdict::SkipTarget
        );
        assert_eq!(
            classify(&err(ErrorType::ServerError).with_code(code::UPSTREAM_KEY_REJECTED)),
            Verdict::SkipTarget
        );
        let mut not_implemented = err(ErrorType::ServerError);
        not_implemented.details_mut().not_implemented_here = true;
        assert_eq!(classify(&not_implemented), Verdict::SkipTarget);
        assert_eq!(
            classify(&err(ErrorType::ServerError).with_code(code::GATEWAY_SHUTDOWN)),
            Verdict::Final
        );
        assert_eq!(
            classify(&err(ErrorType::ServerError).with_code(code::RATE_LIMIT_STORE_UNAVAILABLE)),
            Verdict::SkipTarget
        );
        let out_of_descriptors =
            err(ErrorType::ServerError).with_code(code::GATEWAY_OUT_OF_RESOURCES);
        assert_eq!(
            classify(&out_of_descriptors),
            Verdict::Retry { unhealthy: false }
        );
        assert!(never_sent(&out_of_descriptors));
        let mut no_room = out_of_descriptors;
        no_room.details_mut().no_room_for_answer = true;
        assert_eq!(classify(&no_room), Verdict::Final);
        assert!(!never_sent(&no_room), "the provider answered");
        assert_eq!(
            classify(&err(ErrorType::RateLimitReachedError)),
            Verdict::Retry { unhealthy: false }
        );
        assert_eq!(
            classify(&err(ErrorType::EngineOverloadedError)),
            Verdict::Retry { unhealthy: false }
        );
        assert_eq!(
            classify(&err(ErrorType::ServerError)),
            Verdict::Retry { unhealthy: true }
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = RetrySettings::default();
        for _ in 0..50 {
            let b1 = backoff(&s, 1);
            assert!(
                b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b3 = backoff(&s, 3);
            assert!(
                b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400),
                "{b3:?}"
            );
            assert!(backoff(&s, 30) <= s.backoff_max);
        }
    }

    #[test]
    fn the_asked_wait_prefers_milliseconds_and_reads_dates() {
        let err = |value: &str| {
            GatewayError::server(StatusCode::BAD_GATEWAY, "x")
                .with_retry_after(Some(HeaderValue::from_str(value).unwrap()))
        };
        assert_eq!(asked_wait(&err("2")), Some(Duration::from_secs(2)));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let wait = asked_wait(&err(&soon)).unwrap();
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(asked_wait(&err("later")).unwrap() > Duration::from_secs(3600));
        let precise = err("2").with_retry_after_duration(Duration::from_millis(1500));
        assert_eq!(asked_wait(&precise), Some(Duration::from_millis(1500)));
        let none = GatewayError::server(StatusCode::BAD_GATEWAY, "x");
        assert_eq!(asked_wait(&none), None);
    }
}
