//! One request through the limits: admission against the caller's scopes
//! (before routing) and each attempt's provider scope (inside fail-over),
//! then settlement when the response body ends: tokens to real usage (none
//! for an error, the estimate when the provider reported nothing) and
//! concurrency slots released.

use super::local::{self, LocalHold};
use super::redis::{OnRedisError, RedisBackend, RedisHold};
use super::spec::{Denial, LimitKind, Scope, Snapshot};
use super::{Backend, Limits, headers};
use crate::auth::ClientKey;
use crate::error::GatewayError;
use crate::error::code;
use crate::proxy::request::ChatRequest;
use crate::proxy::stream_stats::StreamStats;
use crate::proxy::upstream::UpstreamInfo;
use crate::proxy::usage::Usage;
use crate::wire_fields::WireFields;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use smallvec::SmallVec;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How often a queued request asks Redis again for a provider slot.
const REDIS_QUEUE_POLL: Duration = Duration::from_millis(20);
/// How long a request refused for a concurrency slot of its key, its key
/// and model, or the global scope waits for one before its 429 (see
/// `local::admit_with_grace`): a slot held by a client that has just left
/// is given back within a scheduler turn or two. With Redis-backed limits
/// the request asks again after 5 ms and, still refused, once more at the
/// end of this wait ([`REDIS_GRACE_ASKS`]).
pub const LEFT_CLIENT_GRACE: Duration = Duration::from_millis(50);
/// The waits before each of the Redis-backed re-asks: a lease given back
/// is usually in Redis within a few milliseconds of the client leaving.
const REDIS_GRACE_ASKS: [Duration; 2] = [Duration::from_millis(5), Duration::from_millis(45)];

/// The most tokens one request is estimated or settled at: four times the
/// longest Kimi context (256k tokens), which no request can exceed. A
/// client's `max_tokens` is any number it likes; without the cap, one near
/// `u64::MAX` would wrap the reservation to almost nothing, and a stream
/// that ends without usage (which keeps its estimate) could hold a shared
/// scope's budget for years.
pub const MAX_REQUEST_TOKENS: u64 = 1 << 20;

/// The tokens a request may use: its prompt (about four bytes a token)
/// and its completion cap, or `default_max_tokens` when it sets none, for
/// each of the `n` choices it asks for; at most [`MAX_REQUEST_TOKENS`].
pub fn estimate_tokens(chat: &ChatRequest, default_max_tokens: u64) -> u64 {
    let completions = chat
        .max_tokens
        .unwrap_or(default_max_tokens)
        .saturating_mul(chat.choices);
    (chat.body_len() as u64 / 4)
        .saturating_add(completions)
        .min(MAX_REQUEST_TOKENS)
}

/// What settling a reservation of `estimate` tokens to `actual` moves a
/// bucket by (negative gives tokens back). A provider's count is capped
/// like an estimate, so neither a huge report nor the subtraction wraps.
pub(super) fn token_delta(estimate: u64, actual: u64) -> i64 {
    actual.min(MAX_REQUEST_TOKENS) as i64 - estimate.min(MAX_REQUEST_TOKENS) as i64
}

/// What an admitted request holds, and the headroom it saw.
#[derive(Debug, Default)]
pub struct Admission {
    hold: Hold,
    estimate: u64,
    snapshot: Snapshot,
    /// The request went to a provider: dropped unfinished, the estimate
    /// stays (the provider may have done the work).
    sent: AtomicBool,
    /// The snapshot is a refusing limit's ([`Admission::refused`]).
    refusal: bool,
}

#[derive(Debug, Default)]
enum Hold {
    #[default]
    None,
    Local(LocalHold),
    Redis(RedisHold),
}

impl Hold {
    fn settle(&mut self, estimate: u64, actual: u64) {
        match self {
            Hold::None => {}
            Hold::Local(hold) => hold.settle(estimate, actual),
            Hold::Redis(hold) => hold.settle(estimate, actual),
        }
    }
}

impl Limits {
    /// Admits a request against the caller's key, key-and-model and global
    /// scopes. A refusal is the finished 429 (or 503) response and its
    /// `x-ratelimit-*` fields.
    pub async fn admit(
        &self,
        key: Option<&ClientKey>,
        model: &str,
        estimate: u64,
    ) -> Result<Admission, (Response, WireFields)> {
        let scopes: SmallVec<[&Arc<Scope>; 3]> = [
            key.and_then(|k| k.model_limits.get(model)),
            key.and_then(|k| k.limits.as_ref()),
            self.global.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        if scopes.is_empty() {
            return Ok(Admission::unlimited(estimate));
        }
        let mut snapshot = Snapshot::default();
        let hold = match &self.backend {
            Backend::Local => match local::admit(&scopes, estimate, &mut snapshot) {
                // Boxed: the wait is rare, and inline it would enlarge
                // every admission's future.
                Err(denial) if denial.limit == LimitKind::ConcurrentRequests => {
                    Box::pin(local::admit_after_grace(
                        &scopes,
                        estimate,
                        LEFT_CLIENT_GRACE,
                        &mut snapshot,
                        denial,
                    ))
                    .await
                }
                other => other,
            }
            .map(Hold::Local),
            Backend::Redis(redis) => {
                let mut asked = redis.admit(&scopes, estimate, &mut snapshot).await;
                if let Ok(Err(denial)) = &asked
                    && denial.limit == LimitKind::ConcurrentRequests
                {
                    // A lease given back by a client that has just left may
                    // be on its way: asked once more (boxed, as above). A
                    // failure of this ask is Redis failing, as below.
                    asked = Box::pin(async {
                        let mut asked = Ok(Err(denial.clone()));
                        for wait in REDIS_GRACE_ASKS {
                            tokio::time::sleep(wait).await;
                            asked = redis.admit(&scopes, estimate, &mut snapshot).await;
                            if !matches!(&asked, Ok(Err(d)) if d.limit == LimitKind::ConcurrentRequests) {
                                break;
                            }
                        }
                        asked
                    })
                    .await;
                }
                match asked {
                    Ok(result) => result.map(Hold::Redis),
                    Err(_) if redis.settings.on_error == OnRedisError::Open => {
                        local::admit(&scopes, estimate, &mut snapshot).map(Hold::Local)
                    }
                    Err(_) => {
                        return Err((store_unavailable().into_response(), WireFields::default()));
                    }
                }
            }
        };
        match hold {
            Ok(hold) => Ok(Admission::new(hold, estimate, snapshot)),
            Err(denial) => {
                let err = denial.into_error();
                let mut fields = WireFields::default();
                if let Some(window) = err.limit_window() {
                    headers::write(&mut fields, window);
                }
                Err((err.into_response(), fields))
            }
        }
    }

    /// Admits one attempt against `provider`'s scope, queueing up to
    /// `provider_queue` for a concurrency slot.
    pub async fn admit_provider(
        &self,
        provider: &str,
        estimate: u64,
    ) -> Result<Admission, GatewayError> {
        // Checked first: hashing the name is work too.
        if self.providers.is_empty() {
            return Ok(Admission::unlimited(estimate));
        }
        let Some(scope) = self.providers.get(provider) else {
            return Ok(Admission::unlimited(estimate));
        };
        let mut snapshot = Snapshot::default();
        let hold = match &self.backend {
            Backend::Local => {
                local::admit_queued(scope, estimate, self.provider_queue, &mut snapshot)
                    .await
                    .map(Hold::Local)
            }
            Backend::Redis(redis) => {
                match self
                    .redis_queued(redis, scope, estimate, &mut snapshot)
                    .await
                {
                    Some(result) => result.map(Hold::Redis),
                    None if redis.settings.on_error == OnRedisError::Open => {
                        local::admit_queued(scope, estimate, self.provider_queue, &mut snapshot)
                            .await
                            .map(Hold::Local)
                    }
                    None => return Err(store_unavailable()),
                }
            }
        };
        match hold {
            Ok(hold) => Ok(Admission::new(hold, estimate, snapshot)),
            Err(denial) => Err(denial.into_error()),
        }
    }

    /// Redis has no waiting room: a provider at its cap is asked again
    /// until a slot frees or the queue time is up. `None`: Redis is down.
    async fn redis_queued(
        &self,
        redis: &Arc<RedisBackend>,
        scope: &Arc<Scope>,
        estimate: u64,
        snapshot: &mut Snapshot,
    ) -> Option<Result<RedisHold, Denial>> {
        let deadline = Instant::now() + self.provider_queue;
        loop {
            match redis.admit(&[scope], estimate, snapshot).await.ok()? {
                Err(denial)
                    if denial.limit == LimitKind::ConcurrentRequests
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep_until(deadline.min(Instant::now() + REDIS_QUEUE_POLL)).await;
                }
                Err(mut denial) if denial.limit == LimitKind::ConcurrentRequests => {
                    denial.retry_after = local::BUSY_RETRY_AFTER;
                    return Some(Err(denial));
                }
                other => return Some(other),
            }
        }
    }
}

impl Admission {
    /// An admission holding `hold`, not yet sent to a provider.
    fn new(hold: Hold, estimate: u64, snapshot: Snapshot) -> Admission {
        Admission {
            hold,
            estimate,
            snapshot,
            sent: AtomicBool::new(false),
            refusal: false,
        }
    }

    /// No scope applies, but the estimate is kept: the request's settlement
    /// uses it for the other admission's scopes.
    fn unlimited(estimate: u64) -> Admission {
        Admission::new(Hold::None, estimate, Snapshot::default())
    }

    /// A provider attempt its limits refused, held as an admission of
    /// nothing so that [`Admission::finish`] shows the refusing limit in
    /// the answer's `x-ratelimit-*` fields (when no other attempt got
    /// further).
    pub fn refused(window: Snapshot) -> Admission {
        let mut refused = Admission::new(Hold::None, 0, window);
        refused.refusal = true;
        refused
    }

    /// The limits of a provider attempt that failed, as they stood when it
    /// was admitted, held as an admission of nothing so that
    /// [`Admission::finish`] counts them among the scopes of the error the
    /// attempt answered with.
    pub fn failed_attempt(window: Snapshot) -> Admission {
        Admission::new(Hold::None, 0, window)
    }

    /// An attempt that failed before any answer: its tokens go back. The
    /// headroom it saw is returned, for the error's `x-ratelimit-*` fields.
    pub fn refund(mut self) -> Snapshot {
        *self.sent.get_mut() = false;
        self.snapshot
    }

    /// The request is going to a provider: from now on, an admission
    /// dropped unfinished (its client left) keeps its estimate, as a
    /// stream the client leaves does. Shared while the request is in
    /// flight, hence `&self`.
    pub fn mark_sent(&self) {
        self.sent.store(true, Ordering::Relaxed);
    }

    /// The attempt [`Admission::mark_sent`] marked failed: until the next
    /// one goes, a client that leaves costs nothing.
    pub fn mark_unsent(&self) {
        self.sent.store(false, Ordering::Relaxed);
    }

    /// The request's answer: its `x-ratelimit-*` fields (added to
    /// `fields`), from the tightest of this admission's scopes and those of
    /// the `provider` attempt that answered; and, when anything is held,
    /// the settlement that releases both when the response body ends (the
    /// caller keeps it with the body).
    pub fn finish(
        mut self,
        response: &Response,
        fields: &mut WireFields,
        provider: Option<Admission>,
        upstream: Option<&UpstreamInfo>,
    ) -> Option<Settlement> {
        let mut provider = provider.unwrap_or_default();
        if provider.refusal {
            // The answer is that limit's refusal: its fields, with the
            // reset its `retry-after-ms` gives, in place of another
            // scope's window of the same kind that looks as tight.
            let refusing = &provider.snapshot;
            self.snapshot.requests = refusing.requests.or(self.snapshot.requests);
            self.snapshot.tokens = refusing.tokens.or(self.snapshot.tokens);
        } else {
            self.snapshot.merge(&provider.snapshot);
        }
        if !self.snapshot.is_empty() {
            headers::write(fields, &self.snapshot);
        }
        if matches!((&self.hold, &provider.hold), (Hold::None, Hold::None)) {
            return None;
        }
        Some(Settlement {
            request: std::mem::take(&mut self.hold),
            provider: std::mem::take(&mut provider.hold),
            // Both were admitted with the request's estimate.
            estimate: self.estimate.max(provider.estimate),
            usage: UsageSource::of(response, upstream),
        })
    }
}

/// An admission dropped before [`Admission::finish`] gives its tokens back
/// unless its request was sent to a provider ([`Admission::mark_sent`]): a
/// failed attempt (refunded), or a client that left while it waited for a
/// provider slot, costs nothing; a client that left once a provider was
/// working on its request is charged the estimate. Concurrency slots go
/// back as the hold drops either way.
impl Drop for Admission {
    fn drop(&mut self) {
        if !*self.sent.get_mut() {
            self.hold.settle(self.estimate, 0);
        }
    }
}

/// Where a response's real token usage will be known.
enum UsageSource {
    /// An error: the provider did no work.
    Nothing,
    Known(u64),
    /// A stream: read when it ends.
    Stream(Arc<StreamStats>),
    /// A success that reported nothing: the estimate stands.
    Unknown,
}

impl UsageSource {
    fn of(response: &Response, upstream: Option<&UpstreamInfo>) -> Self {
        if !response.status().is_success() {
            return UsageSource::Nothing;
        }
        let Some(info) = upstream else {
            return UsageSource::Unknown;
        };
        match (&info.usage, &info.stream) {
            (Some(usage), _) => UsageSource::Known(total(usage)),
            (None, Some(stats)) => UsageSource::Stream(stats.clone()),
            (None, None) => UsageSource::Unknown,
        }
    }
}

fn total(usage: &Usage) -> u64 {
    usage
        .total_tokens
        .max(usage.prompt_tokens.saturating_add(usage.completion_tokens))
}

/// Settles a request's admission and its provider attempt's when the
/// response body ends or is dropped: tokens to the real usage, concurrency
/// slots released.
pub struct Settlement {
    request: Hold,
    provider: Hold,
    estimate: u64,
    usage: UsageSource,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement")
            .field("estimate", &self.estimate)
            .finish_non_exhaustive()
    }
}

impl Settlement {
    /// Something is held in Redis: the response should end only once
    /// [`Settlement::settle_now`] is done.
    pub fn is_shared(&self) -> bool {
        matches!(self.request, Hold::Redis(_)) || matches!(self.provider, Hold::Redis(_))
    }

    /// A stream whose `[DONE]` has been read: the answer is complete, and
    /// its usage known. Clients may close the connection right on `[DONE]`
    /// (the sync OpenAI Python SDK does, without reading the body's end),
    /// so a settlement that must precede the client's next request goes
    /// before it.
    pub fn stream_done(&self) -> bool {
        matches!(&self.usage, UsageSource::Stream(stats) if stats.saw_done())
    }

    /// Settles now, for a response whose body has ended: local holds at
    /// once, Redis holds by the returned call (both of them at once).
    pub fn settle_now(mut self) -> impl Future<Output = ()> + Send + use<> {
        self.settle();
        let finish = |hold: &mut Hold| match std::mem::take(hold) {
            Hold::Redis(mut hold) => hold.finish_now(),
            _ => None,
        };
        let request = finish(&mut self.request);
        let provider = finish(&mut self.provider);
        async move {
            match (request, provider) {
                (Some(request), Some(provider)) => {
                    tokio::join!(request, provider);
                }
                (Some(one), None) | (None, Some(one)) => one.await,
                (None, None) => {}
            }
        }
    }

    /// Moves the holds' tokens to the real usage (they send it when dropped
    /// or finished).
    fn settle(&mut self) {
        let actual = match &self.usage {
            UsageSource::Nothing => 0,
            UsageSource::Known(tokens) => *tokens,
            UsageSource::Stream(stats) => stats.usage().map_or(self.estimate, |(u, _)| total(&u)),
            UsageSource::Unknown => self.estimate,
        };
        self.request.settle(self.estimate, actual);
        self.provider.settle(self.estimate, actual);
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.settle();
    }
}

fn store_unavailable() -> GatewayError {
    GatewayError::server(
        StatusCode::SERVICE_UNAVAILABLE,
        "rate limits cannot be checked: the rate-limit store is unreachable or refuses the gateway; try again shortly",
    )
    .with_code(code::RATE_LIMIT_STORE_UNAVAILABLE)
    // Redis is probed every half second: a second is a fair first wait.
    .with_retry_after_duration(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlement_deltas_are_capped_and_never_wrap() {
        assert_eq!(token_delta(100, 40), -60);
        assert_eq!(token_delta(100, 150), 50);
        assert_eq!(token_delta(u64::MAX, 0), -(MAX_REQUEST_TOKENS as i64));
        assert_eq!(token_delta(0, u64::MAX), MAX_REQUEST_TOKENS as i64);
        assert_eq!(token_delta(u64::MAX, u64::MAX), 0);
    }

    /// The tokens charged: the larger of the total and its parts, whose
    /// sum saturates (a provider's `1e400` is read as `u64::MAX`).
    #[test]
    fn the_charge_is_the_total_or_its_parts_never_wrapped() {
        let usage = |prompt, completion, total| Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
            cached_tokens: 0,
        };
        assert_eq!(total(&usage(5, 6, 0)), 11);
        assert_eq!(total(&usage(5, 6, 30)), 30);
        assert_eq!(total(&usage(u64::MAX, 7, 18)), u64::MAX);
    }
}
