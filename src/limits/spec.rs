//! What a scope limits (the five limits a configuration can set), who the
//! scope is (its stable id and the label used in messages), and what the
//! client is told: a denial, or the headroom left for the response headers.

use super::local::LocalState;
use crate::error::{ErrorType, GatewayError, LONGEST_RETRY_WAIT_MS};
use http::StatusCode;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

pub const MINUTE: Duration = Duration::from_secs(60);
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// One scope's limits, as configured; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    pub requests_per_minute: Option<NonZeroU32>,
    pub requests_per_day: Option<NonZeroU32>,
    pub tokens_per_minute: Option<NonZeroU64>,
    pub tokens_per_day: Option<NonZeroU64>,
    pub concurrent_requests: Option<NonZeroU32>,
}

impl LimitSpec {
    pub fn is_empty(&self) -> bool {
        *self == LimitSpec::default()
    }
}

/// One of the five limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    RequestsPerMinute,
    RequestsPerDay,
    TokensPerMinute,
    TokensPerDay,
    ConcurrentRequests,
}

impl LimitKind {
    /// The config key, also the error `code`.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::RequestsPerDay => "requests_per_day",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::TokensPerDay => "tokens_per_day",
            LimitKind::ConcurrentRequests => "concurrent_requests",
        }
    }

    pub fn is_requests(self) -> bool {
        matches!(
            self,
            LimitKind::RequestsPerMinute | LimitKind::RequestsPerDay
        )
    }

    fn unit(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests per minute",
            LimitKind::RequestsPerDay => "requests per day",
            LimitKind::TokensPerMinute => "tokens per minute",
            LimitKind::TokensPerDay => "tokens per day",
            LimitKind::ConcurrentRequests => "concurrent requests",
        }
    }
}

/// Whose limits a scope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Global,
    Key,
    KeyModel,
    Provider,
}

impl ScopeKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Global => "global",
            ScopeKind::Key => "key",
            ScopeKind::KeyModel => "key_model",
            ScopeKind::Provider => "provider",
        }
    }
}

/// A set of limits and who it applies to.
#[derive(Debug)]
pub struct Scope {
    pub kind: ScopeKind,
    /// Stable identity: `global`, `key:NAME`, `key:NAME:model:MODEL`,
    /// `provider:NAME`. Names Redis keys and carries state across reloads.
    pub id: Arc<str>,
    /// For messages: `key team-a`, `provider moonshot`, ...
    pub label: Arc<str>,
    pub spec: LimitSpec,
    /// In-process state: the local backend's, and Redis's fallback.
    pub local: Arc<LocalState>,
}

impl Scope {
    pub fn id_and_label(kind: ScopeKind, name: &str, model: &str) -> (String, String) {
        match kind {
            ScopeKind::Global => ("global".into(), "the gateway".into()),
            ScopeKind::Key => (format!("key:{name}"), format!("key {name}")),
            ScopeKind::KeyModel => (
                format!("key:{name}:model:{model}"),
                format!("key {name} on model {model}"),
            ),
            ScopeKind::Provider => (format!("provider:{name}"), format!("provider {name}")),
        }
    }
}

/// A request refused by one limit of one scope.
#[derive(Debug, Clone)]
pub struct Denial {
    pub label: Arc<str>,
    pub scope: ScopeKind,
    pub limit: LimitKind,
    pub value: u64,
    /// When trying again could succeed.
    pub retry_after: Duration,
    /// For a token limit: what it holds and what the request needed.
    pub shortfall: Option<TokenShortfall>,
}

/// A token limit that refused a request: the tokens it held then, fewer
/// than the request's estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenShortfall {
    pub left: u64,
    pub estimate: u64,
}

impl Denial {
    /// The client's error: a spent daily token budget (nothing left) that
    /// takes over a minute to refill enough is a quota error (no retry
    /// helps soon), a provider at its concurrency cap is overloaded (so
    /// fail-over moves on), anything else is a rate limit; a daily budget
    /// with less left than the request's estimate too, since a smaller
    /// request would pass now, and a spent one that refills enough within
    /// a minute (a large budget refills tokens a second: a client that
    /// waits passes). A token limit's message says what it held and what
    /// the request needed.
    pub fn into_error(self) -> GatewayError {
        let mut what = format!("{} {}", self.value, self.limit.unit());
        if let Some(short) = self.shortfall {
            what = format!(
                "{what} ({} left, the request is estimated at {} tokens)",
                short.left, short.estimate
            );
        }
        let spent = self.shortfall.is_none_or(|short| short.left == 0);
        let refills_soon = self.retry_after <= Duration::from_millis(LONGEST_RETRY_WAIT_MS);
        let (error_type, message) = match (self.limit, self.scope) {
            (LimitKind::TokensPerDay, _) if spent => (
                if refills_soon {
                    ErrorType::RateLimitReachedError
                } else {
                    ErrorType::ExceededCurrentQuotaError
                },
                format!("daily token budget spent for {}: {what}", self.label),
            ),
            (LimitKind::TokensPerDay, _) => (
                ErrorType::RateLimitReachedError,
                format!(
                    "daily token budget of {} too low for this request: {what}",
                    self.label
                ),
            ),
            (LimitKind::ConcurrentRequests, ScopeKind::Provider) => (
                ErrorType::EngineOverloadedError,
                format!("{} is busy: {what}", self.label),
            ),
            _ => (
                ErrorType::RateLimitReachedError,
                format!("rate limit reached for {}: {what}", self.label),
            ),
        };
        let mut err = GatewayError::new(StatusCode::TOO_MANY_REQUESTS, error_type, message)
            .with_code(self.limit.name())
            .with_retry_after_duration(self.retry_after);
        err.limit_scope = Some(self.scope);
        let window = self.window();
        if !window.is_empty() {
            err.details_mut().limit_window = Some(window);
        }
        err
    }

    /// The refusing limit as the `x-ratelimit-*` fields show it: what it
    /// holds (none for requests; tokens too few for the request), full or
    /// enough again once the wait has passed. A concurrency cap has no
    /// such fields (OpenAI's describe request and token rates).
    fn window(&self) -> Snapshot {
        let window = Window {
            limit: self.value,
            remaining: self.shortfall.map_or(0, |short| short.left),
            reset: self.retry_after,
        };
        let mut snapshot = Snapshot::default();
        match self.limit {
            LimitKind::ConcurrentRequests => {}
            kind if kind.is_requests() => snapshot.requests = Some(window),
            _ => snapshot.tokens = Some(window),
        }
        snapshot
    }
}

/// Headroom in one limit, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is back to full.
    pub reset: Duration,
}

/// The tightest request and token windows among the scopes that applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl Snapshot {
    pub fn note_requests(&mut self, window: Window) {
        tighter(&mut self.requests, window);
    }

    pub fn note_tokens(&mut self, window: Window) {
        tighter(&mut self.tokens, window);
    }

    pub fn merge(&mut self, other: &Snapshot) {
        if let Some(w) = other.requests {
            self.note_requests(w);
        }
        if let Some(w) = other.tokens {
            self.note_tokens(w);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

/// Keeps the window with the least left (ties: the longer wait).
fn tighter(slot: &mut Option<Window>, candidate: Window) {
    let replace = match slot {
        None => true,
        Some(current) => {
            (candidate.remaining, std::cmp::Reverse(candidate.reset))
                < (current.remaining, std::cmp::Reverse(current.reset))
        }
    };
    if replace {
        *slot = Some(candidate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(limit: LimitKind, scope: ScopeKind) -> GatewayError {
        Denial {
            label: "key team-a".into(),
            scope,
            limit,
            value: 60,
            retry_after: Duration::from_millis(1500),
            shortfall: None,
        }
        .into_error()
    }

    #[test]
    fn denials_name_the_scope_and_limit() {
        let err = denial(LimitKind::RequestsPerMinute, ScopeKind::Key);
        assert_eq!(err.error_type, ErrorType::RateLimitReachedError);
        assert_eq!(
            err.message,
            "rate limit reached for key team-a: 60 requests per minute"
        );
        assert_eq!(err.retry_after.unwrap(), "2");
        assert_eq!(err.retry_after_ms.map(|ms| ms.get()), Some(1500));
        let busy = denial(LimitKind::ConcurrentRequests, ScopeKind::Provider);
        assert_eq!(busy.error_type, ErrorType::EngineOverloadedError);
    }

    /// A spent day's budget is a quota error when it refills too slowly
    /// for a client to wait; a large one, which refills within a minute,
    /// is a rate limit the SDKs retry after the wait.
    #[test]
    fn a_spent_day_is_a_quota_error_only_when_it_refills_slowly() {
        let spent_for = |wait: Duration| {
            Denial {
                label: "key team-a".into(),
                scope: ScopeKind::Key,
                limit: LimitKind::TokensPerDay,
                value: 86_400,
                retry_after: wait,
                shortfall: Some(TokenShortfall {
                    left: 0,
                    estimate: 16,
                }),
            }
            .into_error()
        };
        for (wait, error_type, retry) in [
            (
                Duration::from_secs(22),
                ErrorType::RateLimitReachedError,
                true,
            ),
            (MINUTE, ErrorType::RateLimitReachedError, true),
            (
                MINUTE + Duration::from_millis(1),
                ErrorType::ExceededCurrentQuotaError,
                false,
            ),
            (
                Duration::from_secs(3 * 3600),
                ErrorType::ExceededCurrentQuotaError,
                false,
            ),
        ] {
            let err = spent_for(wait);
            assert_eq!(err.error_type, error_type, "{wait:?}");
            assert_eq!(err.should_retry(), retry, "{wait:?}");
            assert!(
                err.message.starts_with(
                    "daily token budget spent for key team-a: 86400 tokens per day (0 left"
                ),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn the_tightest_window_wins() {
        let mut s = Snapshot::default();
        let w = |remaining, secs| Window {
            limit: 100,
            remaining,
            reset: Duration::from_secs(secs),
        };
        s.note_requests(w(50, 1));
        s.note_requests(w(70, 1));
        assert_eq!(s.requests.unwrap().remaining, 50);
        s.note_requests(w(50, 9));
        assert_eq!(s.requests.unwrap().reset, Duration::from_secs(9));
    }
}
