//! Limits shared by every replica through Redis. Each admission is one Lua
//! script call that checks and takes every limit of the request at once
//! ([`hold`]). A supervisor task owns the connection's health: when a call
//! fails the backend turns unhealthy (logged once per outage), requests stop
//! touching Redis and fall back (`on_redis_error`: local limits, or 503),
//! and the supervisor probes until Redis answers again.

mod hold;
mod plain_behind_tls;
mod store_metrics;

pub use hold::{RedisHold, finish_settlements};
pub use store_metrics::{StoreCall, StoreMetrics};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often an unhealthy backend probes Redis.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How often a healthy backend pings Redis: a Redis lost while no request
/// runs shows in `/readyz` within seconds, and the connection stays in use,
/// so neither Redis's idle `timeout` nor a network device closes it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

const STARTING: u8 = 0;
const HEALTHY: u8 = 1;
const DOWN: u8 = 2;

/// What requests get while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Fall back to each replica's local limits.
    Open,
    /// Refuse with 503.
    Closed,
}

impl OnRedisError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnRedisError::Open => "open",
            OnRedisError::Closed => "closed",
        }
    }
}

/// What a reload's check of a new Redis backend found (see
/// [`RedisBackend::check`]).
#[derive(Debug)]
pub enum StoreCheck {
    /// Redis refused the gateway (credentials, database, ACL), in its words.
    Refused(String),
    /// Not refused: Redis let the gateway in, or failed to (`failure`:
    /// unreachable, stalled, an error that is no refusal), which is an
    /// outage, not a mistake. `left`: what the first connection may still
    /// take of the check's budget.
    NotRefused {
        left: Duration,
        failure: Option<redis::RedisError>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    pub url: String,
    /// The certificate authorities (PEM) a `rediss://` Redis is checked
    /// against; `None`: the Mozilla roots compiled in.
    pub ca_pem: Option<Arc<[u8]>>,
    /// Start of every key, so several gateways can share one Redis.
    pub prefix: String,
    /// Longest wait for a connection or an answer.
    pub timeout: Duration,
    /// A concurrency slot's lease; refreshed every third of it.
    pub lease: Duration,
    pub on_error: OnRedisError,
}

/// One Redis connection (multiplexed) and its health.
pub struct RedisBackend {
    pub settings: RedisSettings,
    client: redis::Client,
    shared: Arc<Shared>,
}

/// Whether the store is in an outage, over every Redis backend a
/// gateway's configurations made one after another: a reload (a new
/// backend) during an outage continues it. How many outages began is the
/// gateway's metric ([`StoreMetrics::outages`]), whatever the backends.
#[derive(Default)]
struct Outage {
    down: AtomicBool,
}

struct Shared {
    conn: arc_swap::ArcSwapOption<ConnectionManager>,
    state: AtomicU8,
    started: AtomicBool,
    /// Shared with the backends this one replaced and will be replaced
    /// by: outages are the gateway's, not one connection's.
    outage: Arc<Outage>,
    /// A newer configuration's backend reports the store's health now;
    /// this one (still used by requests that started before) stays quiet.
    retired: AtomicBool,
    /// This outage's log already says Redis refuses the gateway.
    refusal_told: AtomicBool,
    /// This backend logged an outage's beginning itself (with its own
    /// `on_redis_error`'s effect).
    outage_told: AtomicBool,
    /// The gateway's metrics, once the configuration is in use.
    metrics: OnceLock<StoreMetrics>,
    /// Wakes the supervisor when a request saw Redis fail.
    failed: Notify,
    /// Wakes requests waiting for the first connection attempt.
    settled: Notify,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.settings.prefix)
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

impl RedisBackend {
    /// Checks the URL; connects only when first used, inside the runtime.
    /// `previous`: the backend this one replaces, whose outage (if it is
    /// in one) this one carries on.
    pub fn new(settings: RedisSettings, previous: Option<&RedisBackend>) -> Result<Self, String> {
        let client =
            client(&settings.url, settings.ca_pem.as_deref()).map_err(|e| e.to_string())?;
        Ok(RedisBackend {
            settings,
            client,
            shared: Arc::new(Shared {
                conn: arc_swap::ArcSwapOption::empty(),
                state: AtomicU8::new(STARTING),
                started: AtomicBool::new(false),
                outage: previous.map_or_else(Arc::default, |p| p.shared.outage.clone()),
                retired: AtomicBool::new(false),
                refusal_told: AtomicBool::new(false),
                outage_told: AtomicBool::new(false),
                metrics: OnceLock::new(),
                failed: Notify::new(),
                settled: Notify::new(),
                stop: CancellationToken::new(),
            }),
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == HEALTHY
    }

    /// This backend has replaced `old` in an outage it carries on: the log
    /// is told when what the outage does to requests changed with it (its
    /// last line would otherwise still say the old effect). An outage this
    /// backend began itself (its reload's check failed) was logged with
    /// its effect already.
    pub fn carries_on_from(&self, old: &RedisBackend) {
        if self.settings.on_error != old.settings.on_error
            && self.shared.outage.down.load(Ordering::Acquire)
            && !self.shared.outage_told.load(Ordering::Acquire)
        {
            tracing::warn!(
                alert = "rate_limit_store",
                on_redis_error = self.settings.on_error.as_str(),
                "rate-limit store (Redis) still out of reach after a reload: now {} until it is back",
                outage_effect(self.settings.on_error)
            );
        }
    }

    /// A newer configuration's backend has taken over: this one no longer
    /// counts or logs outages (its calls still run and are timed).
    pub fn retire(&self) {
        self.shared.retired.store(true, Ordering::Release);
    }

    /// Reports to the gateway's metrics from now on (the first call wins:
    /// one gateway's metrics per backend).
    pub fn attach_metrics(&self, metrics: &StoreMetrics) {
        let _ = self.shared.metrics.set(metrics.clone());
    }

    /// Starts the backend and waits for its first connection attempt to
    /// end (at most twice the timeout): a reload that brings a new Redis
    /// setting swaps it in connected, not while `/readyz` would still say
    /// the store is unreachable.
    pub async fn connect_first(&self) {
        self.connect_first_within(self.settings.timeout * 2).await;
    }

    /// [`Self::connect_first`], waiting at most `bound`.
    async fn connect_first_within(&self, bound: Duration) {
        self.start();
        if self.shared.state.load(Ordering::Acquire) == STARTING {
            let settled = self.shared.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.shared.state.load(Ordering::Acquire) == STARTING {
                let _ = tokio::time::timeout(bound, settled).await;
            }
        }
    }

    /// For a backend not started yet (a reload's new Redis setting): opens
    /// one connection and checks access (see [`hold::check_access`]), all
    /// within twice the timeout. Redis's refusal, when it refused the
    /// gateway for a reason only a configuration change fixes (see
    /// [`is_refusal`]), comes back as [`StoreCheck::Refused`].
    /// Unreachable or slow is not a refusal: that is an outage, which the
    /// backend rides out.
    pub async fn check(&self) -> StoreCheck {
        let budget = self.settings.timeout * 2;
        if self.shared.started.load(Ordering::Acquire) {
            return StoreCheck::NotRefused {
                left: budget,
                failure: None,
            };
        }
        // The client's own timeouts, sharing one budget: the connection
        // (with its AUTH and SELECT), then the access check in what is
        // left.
        let began = Instant::now();
        let timeouts = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(budget));
        let answer = async {
            let connect = self
                .client
                .get_multiplexed_async_connection_with_config(&timeouts);
            let mut conn = self.timed(StoreCall::Connect, connect).await?;
            let left = budget.saturating_sub(began.elapsed());
            conn.set_response_timeout(left.max(Duration::from_millis(1)));
            let check = hold::check_access(&mut conn, &self.settings.prefix);
            self.timed(StoreCall::Ping, check).await
        };
        let answer = answer.await;
        let addr = self.client.get_connection_info().addr();
        match answer {
            Err(err) if is_refusal(&err) => StoreCheck::Refused(err.to_string()),
            // Past the budget, but only when the TLS handshake failed: a
            // reload is not on any request's path.
            Err(_) if plain_behind_tls::speaks_plain_redis(addr, self.settings.timeout).await => {
                StoreCheck::Refused(plain_behind_tls::PLAIN_REDIS.to_string())
            }
            answer => StoreCheck::NotRefused {
                left: budget.saturating_sub(began.elapsed()),
                failure: answer.err(),
            },
        }
    }

    /// Starts a backend [`Self::check`] did not find refused, waiting for
    /// its first connection attempt only as long as the check's budget
    /// has left. A Redis that failed the check is in an outage from the
    /// start (which its supervisor rides out), not waited for again.
    pub async fn connect_after(&self, check: StoreCheck) {
        match check {
            StoreCheck::NotRefused {
                left,
                failure: None,
            } => self.connect_first_within(left).await,
            StoreCheck::NotRefused {
                failure: Some(err), ..
            } => {
                let _ = self.shared.state.compare_exchange(
                    STARTING,
                    DOWN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                self.shared.note_failure(&self.settings, &err);
                self.shared.settled.notify_waiters();
                self.start();
            }
            StoreCheck::Refused(_) => {}
        }
    }

    /// The connection to use now, or `None` while Redis is unreachable.
    /// The first caller starts the supervisor; callers before its first
    /// attempt has finished wait for it (bounded by the timeout).
    pub async fn connection(&self) -> Option<ConnectionManager> {
        self.connect_first().await;
        if !self.is_healthy() {
            return None;
        }
        self.shared.conn.load_full().map(|c| (*c).clone())
    }

    /// Times one call for the metrics, and counts it failed when it is.
    async fn timed<T>(
        &self,
        call: StoreCall,
        sent: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        self.shared.timed(call, sent).await
    }

    /// Counts an admission decided without Redis.
    fn count_unavailable(&self) {
        if let Some(metrics) = self.shared.metrics.get() {
            metrics.unavailable(self.settings.on_error == OnRedisError::Closed);
        }
    }

    /// Notes a failed call: the first failure of an outage logs it and hands
    /// Redis to the supervisor; later ones are silent.
    pub fn report_failure(&self, err: &redis::RedisError) {
        let shared = &self.shared;
        if shared
            .state
            .compare_exchange(HEALTHY, DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            shared.note_failure(&self.settings, err);
            shared.failed.notify_one();
        }
    }

    /// Starts the supervisor (once); outside a Tokio runtime, nothing.
    pub fn start(&self) {
        if tokio::runtime::Handle::try_current().is_err()
            || self.shared.started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1);
        tokio::spawn(supervise(
            self.shared.clone(),
            self.client.clone(),
            config,
            self.settings.clone(),
        ));
    }
}

impl Shared {
    /// Redis failed: `true` (counted; to be logged) when that begins an
    /// outage. A backend a newer one has replaced reports nothing.
    fn begin_outage(&self) -> bool {
        if self.retired.load(Ordering::Acquire) || self.outage.down.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Some(metrics) = self.metrics.get() {
            metrics.outage();
        }
        true
    }

    /// Redis failed a probe (or a reload's check): an outage begins, and is
    /// logged, unless one is going on. In one, a Redis that now answers
    /// and refuses (it came back with a password, say) is said once.
    fn note_failure(&self, settings: &RedisSettings, err: &redis::RedisError) {
        if self.begin_outage() {
            if is_refusal(err) {
                self.refusal_told.store(true, Ordering::Release);
            }
            self.outage_told.store(true, Ordering::Release);
            log_outage(settings, err);
        } else if is_refusal(err)
            && !self.retired.load(Ordering::Acquire)
            && !self.refusal_told.swap(true, Ordering::AcqRel)
        {
            log_outage(settings, err);
        }
    }

    /// Redis answered: `true` (to be logged) when that ends an outage.
    fn end_outage(&self) -> bool {
        !self.retired.load(Ordering::Acquire) && self.outage.down.swap(false, Ordering::AcqRel)
    }

    async fn timed<T>(
        &self,
        call: StoreCall,
        sent: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        let started = Instant::now();
        let result = sent.await;
        if let Some(metrics) = self.metrics.get() {
            metrics.observe(call, started.elapsed(), result.is_ok());
        }
        result
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// Connects, then alternates between waiting for a reported failure and
/// probing until Redis answers again. Ends when the backend is dropped.
async fn supervise(
    shared: Arc<Shared>,
    client: redis::Client,
    config: ConnectionManagerConfig,
    settings: RedisSettings,
) {
    loop {
        let failed = shared.failed.notified();
        let result = probe(&shared, &client, &config, &settings).await;
        let previous = match &result {
            Ok(()) => shared.state.swap(HEALTHY, Ordering::AcqRel),
            Err(_) => {
                // The next probe connects anew, as at start: a connection
                // manager whose own reconnection met a refusal (the
                // password rotated while it was away) keeps answering with
                // that refusal and never connects again.
                shared.conn.store(None);
                shared.state.swap(DOWN, Ordering::AcqRel)
            }
        };
        match &result {
            Ok(()) if shared.end_outage() => tracing::info!(
                alert = "rate_limit_store",
                "rate-limit store (Redis) reachable again: limits are shared again"
            ),
            Ok(()) if previous == STARTING && !shared.retired.load(Ordering::Acquire) => {
                tracing::info!("rate-limit store (Redis) connected")
            }
            Err(err) => {
                // A `rediss://` URL to a plain Redis port only times out
                // (see `plain_behind_tls`): said as what it is when an
                // outage begins, not as a network fault.
                let addr = client.get_connection_info().addr();
                if previous != DOWN
                    && !is_refusal(err)
                    && plain_behind_tls::speaks_plain_redis(addr, settings.timeout).await
                {
                    shared.note_failure(&settings, &plain_behind_tls::error());
                } else {
                    shared.note_failure(&settings, err);
                }
            }
            _ => {}
        }
        if result.is_ok() {
            shared.refusal_told.store(false, Ordering::Release);
        }
        shared.settled.notify_waiters();
        let wait = async {
            if result.is_ok() {
                let _ = tokio::time::timeout(KEEPALIVE_INTERVAL, failed).await;
            } else {
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        };
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = wait => {}
        }
    }
}

/// Connects when there is no connection yet, then checks that Redis
/// answers and lets the gateway do its work ([`hold::check_access`]).
async fn probe(
    shared: &Shared,
    client: &redis::Client,
    config: &ConnectionManagerConfig,
    settings: &RedisSettings,
) -> redis::RedisResult<()> {
    let timeout = settings.timeout;
    let conn = match shared.conn.load_full() {
        Some(conn) => (*conn).clone(),
        None => {
            let connect = async {
                let connect = ConnectionManager::new_with_config(client.clone(), config.clone());
                match tokio::time::timeout(timeout * 2, connect).await {
                    Ok(answer) => answer,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out connecting",
                    )
                    .into()),
                }
            };
            let conn = shared.timed(StoreCall::Connect, connect).await?;
            shared.conn.store(Some(Arc::new(conn.clone())));
            conn
        }
    };
    let check = || {
        let mut conn = conn.clone();
        async move {
            let sent = async {
                let access = hold::check_access(&mut conn, &settings.prefix);
                match tokio::time::timeout(timeout, access).await {
                    Ok(answer) => answer,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out waiting for an answer",
                    )
                    .into()),
                }
            };
            shared.timed(StoreCall::Ping, sent).await
        }
    };
    let mut answer = check().await;
    // A connection closed since its last use (see the admission's retry):
    // once more, on the connection the manager makes anew.
    if answer
        .as_ref()
        .is_err_and(redis::RedisError::is_connection_dropped)
    {
        answer = check().await;
    }
    answer
}

/// The client for `url`: over TLS for `rediss://`, checking the server's
/// certificate against `ca_pem` when given, else against the Mozilla roots
/// compiled in (the image has no system store).
pub fn client(url: &str, ca_pem: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match ca_pem {
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
}

/// Redis answered, and refused the gateway for a reason that trying again
/// does not fix: a wrong user or password (or none where one is needed), a
/// database index it does not have, an ACL that denies the command, a
/// read-only replica (a managed Redis's reader endpoint) that takes no
/// writes.
fn is_refusal(err: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    if matches!(
        err.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::Server(ServerErrorKind::NoPerm | ServerErrorKind::ReadOnly)
    ) || matches!(
        err.code(),
        Some("NOAUTH" | "WRONGPASS" | "NOPERM" | "READONLY")
    ) {
        return true;
    }
    let text = err.to_string();
    // The client's words when Redis refuses the URL's `/db`.
    text.contains("refused to switch database")
        // A command a script runs denied by the ACL: Redis 7.0 says so
        // with an `ERR` code, later versions with `NOPERM` in the text.
        || text.contains("can't run this command")
        || text.contains("no permissions")
        // TLS (rustls's words): a certificate that does not verify against
        // the roots or `redis_ca_file`, or is not for the URL's host, and
        // a `rediss://` URL to a port that does not speak TLS.
        || text.contains("invalid peer certificate")
        || text.contains("received corrupt message")
        || text.contains(plain_behind_tls::PLAIN_REDIS)
}

/// What an outage does to requests, for the log.
fn outage_effect(on_error: OnRedisError) -> &'static str {
    match on_error {
        OnRedisError::Open => "each replica falls back to its local limits",
        OnRedisError::Closed => {
            "requests under a key, key-and-model or global limit get 503 and providers \
             with limits are passed over; requests under none are served"
        }
    }
}

fn log_outage(settings: &RedisSettings, err: &redis::RedisError) {
    let effect = outage_effect(settings.on_error);
    let what = outage_cause(err);
    tracing::error!(
        alert = "rate_limit_store",
        on_redis_error = settings.on_error.as_str(),
        "rate-limit store (Redis) {what}: {effect} until it is back: {err}"
    );
}

/// What an outage's error says of Redis, for the log.
fn outage_cause(err: &redis::RedisError) -> &'static str {
    if is_refusal(err) {
        "refuses the gateway (check limits.redis_url, limits.redis_ca_file and Redis's ACL)"
    } else if err.code() == Some("OOM") {
        // Reachable, and refusing writes at its `maxmemory`: not a network
        // fault, and over once memory is freed.
        "is out of memory and refuses writes (raise its maxmemory, or let it evict with a \
         maxmemory-policy: every key the gateway writes expires)"
    } else if err.kind() == redis::ErrorKind::UnexpectedReturnType {
        // A proxy, or a store that speaks Redis's protocol without
        // running the scripts as Redis does.
        "answers what Redis would not (is limits.redis_url a Redis?)"
    } else if err.code().is_some() {
        "answers with an error"
    } else {
        "unreachable"
    }
}

#[cfg(test)]
mod outage_cause_tests {
    use super::outage_cause;

    fn reply_error(reply: &[u8]) -> redis::RedisError {
        redis::parse_redis_value(reply)
            .and_then(redis::Value::extract_error)
            .unwrap_err()
    }

    #[test]
    fn an_outage_names_what_redis_said() {
        let oom = reply_error(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n");
        assert!(outage_cause(&oom).starts_with("is out of memory"));
        let denied = reply_error(b"-NOPERM this user has no permissions\r\n");
        assert!(outage_cause(&denied).starts_with("refuses the gateway"));
        let other = reply_error(b"-ERR something else\r\n");
        assert_eq!(outage_cause(&other), "answers with an error");
        let gone =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(outage_cause(&gone), "unreachable");
        let misshapen = redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "the admission script's reply is not of its shape",
        ));
        assert!(outage_cause(&misshapen).starts_with("answers what Redis would not"));
    }
}
