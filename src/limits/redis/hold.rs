//! One request's limits in Redis: the admission script call that checks
//! and takes them all at once, and the hold that settles tokens and
//! releases concurrency leases when the response ends (refreshing the
//! leases meanwhile, so a long stream keeps its slot and a dead replica's
//! slots expire).

use super::{RedisBackend, StoreCall};
use crate::limits::spec::{
    DAY, Denial, LimitKind, MINUTE, Scope, Snapshot, TokenShortfall, Window,
};
use redis::Script;
use redis::aio::ConnectionManager;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("admit.lua")));
static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("finish.lua")));
static REFRESH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("refresh.lua")));

/// Runs every command a request's calls use, on keys of its own under
/// `prefix` that no request uses: each script (loaded first if Redis lacks
/// it) as a request runs it, an admission that takes a concurrency lease
/// and a token bucket's place, their settlement (which gives the place
/// back and releases the lease) and a lease refresh. So a Redis that
/// answers `PING` but whose ACL denies the scripts, one of their commands
/// or the key prefix fails here, not at every admission. The concurrency
/// limit is never reached and the bucket costs nothing, so replicas
/// checking at the same time do not refuse each other.
pub(super) async fn check_access(
    conn: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
) -> redis::RedisResult<()> {
    // Loaded whether Redis has them or not: it loses them in a restart or
    // a `SCRIPT FLUSH`, and an ACL that denies loading them would then
    // fail every request.
    for script in [&*ADMIT, &*REFRESH, &*FINISH] {
        script.prepare_invoke().load_async(conn).await?;
    }
    let leases = format!("{prefix}:access-check:conc");
    let bucket = format!("{prefix}:access-check:tpm");
    let lease = format!("access-check-{:016x}", fastrand::u64(..));
    let (limit, period_ms) = (1u64 << 40, 60_000u64);
    let mut admit = ADMIT.prepare_invoke();
    admit.arg(&lease).arg(1000);
    admit.key(&leases).arg("c").arg(limit).arg(0).arg(1);
    admit.key(&bucket).arg("g").arg(1).arg(period_ms).arg(0);
    admit.invoke_async::<Vec<i64>>(conn).await?;
    let mut refresh = REFRESH.prepare_invoke();
    refresh
        .key(&leases)
        .arg(&lease)
        .arg(1000)
        .arg("extend-only");
    refresh.invoke_async::<i64>(conn).await?;
    // A delta of one whole period back: the bucket's key is deleted.
    let mut finish = FINISH.prepare_invoke();
    finish.arg(&lease);
    finish.key(&leases).arg("c").arg(limit).arg(0).arg(0);
    finish.key(&bucket).arg("g").arg(1).arg(period_ms).arg(-1);
    finish.invoke_async::<i64>(conn).await.map(drop)
}

/// One limit as the scripts see it.
#[derive(Debug, Clone)]
struct Check {
    key: String,
    concurrency: bool,
    limit: u64,
    period_ms: u64,
    kind: LimitKind,
    scope: usize,
}

/// What an admission in Redis holds until the response ends.
#[derive(Debug)]
pub struct RedisHold {
    backend: Arc<RedisBackend>,
    lease: String,
    /// Token and concurrency checks: what the finish script undoes.
    held: Vec<Check>,
    /// Tokens to add at the end (real usage minus the estimate).
    delta: i64,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl RedisHold {
    pub fn settle(&mut self, estimate: u64, actual: u64) {
        self.delta = crate::limits::admission::token_delta(estimate, actual);
    }

    /// The settlement (tokens moved by the delta set with
    /// [`RedisHold::settle`], leases released) as a call to await, so a
    /// response can end only once Redis has it: the client's next request,
    /// on any replica, then meets neither this request's lease nor its
    /// unsettled estimate. `None` when there is nothing to send. The call
    /// runs as a task of its own, so a response dropped while it waits
    /// (its client left) does not cancel it; a call that fails leaves the
    /// lease's release to the retries, which the response does not wait
    /// for.
    pub fn finish_now(&mut self) -> Option<impl Future<Output = ()> + Send + use<>> {
        let finish = self.take_finish()?;
        let (done, first_try) = tokio::sync::oneshot::channel();
        spawn_tracked(async move {
            let finished = finish.try_once(None).await;
            let _ = done.send(());
            if !finished {
                finish.retry_release().await;
            }
        });
        Some(async move {
            let _ = first_try.await;
        })
    }

    /// What is left to undo, taken out of the hold (which then does
    /// nothing when dropped).
    fn take_finish(&mut self) -> Option<Finish> {
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
        }
        let delta = self.delta;
        let held: Vec<Check> = std::mem::take(&mut self.held)
            .into_iter()
            .filter(|c| c.concurrency || delta != 0)
            .collect();
        if held.is_empty() {
            return None;
        }
        Some(Finish {
            backend: self.backend.clone(),
            lease: std::mem::take(&mut self.lease),
            held,
            delta,
        })
    }
}

impl Drop for RedisHold {
    fn drop(&mut self) {
        if let Some(finish) = self.take_finish() {
            finish.spawn(None);
        }
    }
}

/// A request's settlement in Redis: its token checks moved by `delta`
/// (real usage minus the estimate), its concurrency `lease` released.
struct Finish {
    backend: Arc<RedisBackend>,
    lease: String,
    held: Vec<Check>,
    delta: i64,
}

impl Finish {
    /// Runs the finish script in the background: first on `behind` when
    /// given (the connection a stalled admission was sent on, so that
    /// Redis runs it after that admission, whatever the backend's health
    /// says meanwhile), then as [`Finish::retry_release`].
    fn spawn(self, behind: Option<ConnectionManager>) {
        spawn_tracked(async move {
            if !self.try_once(behind).await {
                self.retry_release().await;
            }
        });
    }

    /// One call of the finish script; `false` when it failed (or Redis is
    /// down).
    async fn try_once(&self, behind: Option<ConnectionManager>) -> bool {
        let conn = match behind {
            Some(conn) => Some(conn),
            None => self.backend.connection().await,
        };
        let Some(mut conn) = conn else {
            return false;
        };
        let mut answer = self.call(&mut conn, self.delta).await;
        if answer
            .as_ref()
            .is_err_and(redis::RedisError::is_connection_dropped)
        {
            // Redis (or the network) closed the connection since its last
            // use, as for an admission (see there): once more on the new
            // one before it counts as an outage. The first call may have
            // run, so tokens go back only once: the second moves them
            // only by usage beyond the estimate (counted twice, if at all:
            // a limit is never exceeded), and releases the leases.
            let delta = self.delta.max(0);
            if delta != 0 || self.held.iter().any(|check| check.concurrency) {
                answer = self.call(&mut conn, delta).await;
            }
        }
        match answer {
            Ok(_) => true,
            Err(err) => {
                self.backend.report_failure(&err);
                false
            }
        }
    }

    /// The finish script with the tokens moved by `delta`, timed.
    async fn call(&self, conn: &mut ConnectionManager, delta: i64) -> redis::RedisResult<i64> {
        let mut call = FINISH.prepare_invoke();
        call.arg(&self.lease);
        for check in &self.held {
            call.key(&check.key);
            call.arg(if check.concurrency { "c" } else { "g" })
                .arg(check.limit)
                .arg(check.period_ms)
                .arg(delta);
        }
        let sent = call.invoke_async::<i64>(conn);
        self.backend.timed(StoreCall::Settle, sent).await
    }

    /// After a failed call, only the lease release is tried again, a second
    /// apart, until the lease would have expired anyway: a call that timed
    /// out on a stalled Redis may still run, and moving tokens twice would
    /// be wrong, while releasing a lease twice is harmless.
    async fn retry_release(mut self) {
        let give_up = tokio::time::Instant::now()
            + self
                .backend
                .settings
                .lease
                .max(RELEASE_RETRY * RELEASE_ATTEMPTS);
        self.held.retain(|check| check.concurrency);
        self.delta = 0;
        while !self.held.is_empty() && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(RELEASE_RETRY).await;
            if self.try_once(None).await {
                return;
            }
        }
    }
}

/// Runs `settling` in the background, counted among the settlements a
/// stopping gateway waits for.
fn spawn_tracked(settling: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(SETTLEMENTS.track_future(settling));
    }
}

/// The settlements still running in the background: a gateway that stops
/// waits for them (see [`finish_settlements`]), so the requests it served
/// to the end of a drain give their leases and unused tokens back.
static SETTLEMENTS: LazyLock<tokio_util::task::TaskTracker> =
    LazyLock::new(tokio_util::task::TaskTracker::new);

/// Waits up to `limit` for the settlements still running; those a Redis
/// that does not answer holds up are left to expire.
pub async fn finish_settlements(limit: Duration) {
    SETTLEMENTS.close();
    let _ = tokio::time::timeout(limit, SETTLEMENTS.wait()).await;
}

/// How long to wait before trying to release a lease again.
const RELEASE_RETRY: Duration = Duration::from_secs(1);
/// Tries at releasing a lease, at least (more while the lease lasts).
const RELEASE_ATTEMPTS: u32 = 5;

/// An admission call whose answer was not read (it failed, or the request
/// was dropped while it waited): dropped, it releases the call's leases
/// behind it on `conn`, the connection the call went out on.
struct UnansweredAdmission<'a> {
    backend: &'a Arc<RedisBackend>,
    lease: &'a str,
    checks: &'a [Check],
    /// `None` once answered, or when the call takes no lease.
    conn: Option<ConnectionManager>,
}

impl Drop for UnansweredAdmission<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let held = self.checks.iter().filter(|c| c.concurrency).cloned();
        Finish {
            backend: self.backend.clone(),
            lease: self.lease.to_string(),
            held: held.collect(),
            delta: 0,
        }
        .spawn(Some(conn));
    }
}

/// The admission script's reply when it has the shape the script gives:
/// `[0, check, wait_ms(, tokens_left)]` for a refusal, `[1, remaining,
/// reset_ms, ...]` (a pair for every check) for an admission.
fn admission_reply_fits(reply: Vec<i64>, checks: usize) -> redis::RedisResult<Vec<i64>> {
    let fits = match reply.first() {
        Some(0) => reply.len() >= 3,
        Some(_) => reply.len() > 2 * checks,
        None => false,
    };
    if fits {
        Ok(reply)
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "the admission script's reply is not of its shape",
            format!("{reply:?}"),
        )))
    }
}

/// Why an admission could not be decided in Redis.
pub struct Unavailable;

impl RedisBackend {
    /// Checks and takes every limit of `scopes` in one script call.
    pub async fn admit(
        self: &Arc<Self>,
        scopes: &[&Arc<Scope>],
        estimate: u64,
        snapshot: &mut Snapshot,
    ) -> Result<Result<RedisHold, Denial>, Unavailable> {
        let checks = self.checks(scopes);
        let Some(mut conn) = self.connection().await else {
            self.count_unavailable();
            return Err(Unavailable);
        };
        let lease = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let lease_ms = self.settings.lease.as_millis() as u64;
        let mut call = ADMIT.prepare_invoke();
        call.arg(&lease).arg(lease_ms);
        for check in &checks {
            let cost = if check.concurrency || check.kind.is_requests() {
                1
            } else {
                estimate
            };
            call.key(&check.key);
            call.arg(if check.concurrency { "c" } else { "g" })
                .arg(check.limit)
                .arg(check.period_ms)
                .arg(cost);
        }
        // A stalled Redis, not a dead one, still runs the script once it
        // answers again, whether this call timed out or was abandoned (its
        // client left): the leases would hold slots that no request owns
        // until they expire (a key at its limit for `redis_lease_secs`).
        // Unless the answer is read, their release goes out behind the
        // call, on the same connection, so Redis runs it after it. Tokens
        // and requests it may have taken stay taken: giving back what was
        // perhaps never taken could exceed a limit.
        let mut unanswered = UnansweredAdmission {
            backend: self,
            lease: &lease,
            checks: &checks,
            conn: checks.iter().any(|c| c.concurrency).then(|| conn.clone()),
        };
        let mut reply = self
            .timed(StoreCall::Admit, call.invoke_async::<Vec<i64>>(&mut conn))
            .await;
        if reply
            .as_ref()
            .is_err_and(redis::RedisError::is_connection_dropped)
        {
            // Redis (or the network) closed the connection since its last
            // use: an idle `timeout`, a restart, `CLIENT KILL`. The manager
            // reconnects on that error; one more try goes out on the new
            // connection before it counts as an outage. (A call that did
            // run before the connection broke is then counted twice: a
            // request more, never one fewer.)
            reply = self
                .timed(StoreCall::Admit, call.invoke_async::<Vec<i64>>(&mut conn))
                .await;
        }
        // A reply of the wrong shape (a proxy or a "Redis-compatible" store
        // answering nil or a short list) is a failing store. Its leases, if
        // it took any, are released behind it as an unanswered call's are.
        let reply = reply.and_then(|reply| admission_reply_fits(reply, checks.len()));
        let reply: Vec<i64> = match reply {
            Ok(reply) => {
                unanswered.conn = None;
                drop(unanswered);
                reply
            }
            Err(err) => {
                self.report_failure(&err);
                self.count_unavailable();
                return Err(Unavailable);
            }
        };
        if reply.first() == Some(&0) {
            let check = &checks[(reply[1] as usize).saturating_sub(1).min(checks.len() - 1)];
            let scope = scopes[check.scope];
            let tokens = !check.concurrency && !check.kind.is_requests();
            return Ok(Err(Denial {
                label: scope.label.clone(),
                scope: scope.kind,
                limit: check.kind,
                value: check.limit,
                retry_after: Duration::from_millis(reply[2].max(1) as u64),
                shortfall: tokens.then(|| TokenShortfall {
                    left: reply.get(3).map_or(0, |&left| left.max(0) as u64),
                    estimate,
                }),
            }));
        }
        for (check, pair) in checks.iter().zip(reply[1..].chunks(2)) {
            let window = Window {
                limit: check.limit,
                remaining: pair[0].max(0) as u64,
                reset: Duration::from_millis(pair[1].max(0) as u64),
            };
            match check.kind {
                LimitKind::ConcurrentRequests => {}
                kind if kind.is_requests() => snapshot.note_requests(window),
                _ => snapshot.note_tokens(window),
            }
        }
        let held: Vec<Check> = checks
            .into_iter()
            .filter(|c| !c.kind.is_requests())
            .collect();
        let refresher = held
            .iter()
            .any(|c| c.concurrency)
            .then(|| self.spawn_refresher(&lease, &held));
        Ok(Ok(RedisHold {
            backend: self.clone(),
            lease,
            held,
            delta: 0,
            refresher,
        }))
    }

    /// The scopes' limits in the order local admission checks them:
    /// concurrency, then tokens, then requests.
    fn checks(&self, scopes: &[&Arc<Scope>]) -> Vec<Check> {
        let mut checks = Vec::new();
        let minute = MINUTE.as_millis() as u64;
        let day = DAY.as_millis() as u64;
        for pass in 0..3 {
            for (i, scope) in scopes.iter().enumerate() {
                let s = &scope.spec;
                let limits: [(Option<u64>, LimitKind, u64, &str); 5] = [
                    (
                        s.concurrent_requests.map(|n| n.get().into()),
                        LimitKind::ConcurrentRequests,
                        0,
                        "conc",
                    ),
                    (
                        s.tokens_per_minute.map(|n| n.get()),
                        LimitKind::TokensPerMinute,
                        minute,
                        "tpm",
                    ),
                    (
                        s.tokens_per_day.map(|n| n.get()),
                        LimitKind::TokensPerDay,
                        day,
                        "tpd",
                    ),
                    (
                        s.requests_per_minute.map(|n| n.get().into()),
                        LimitKind::RequestsPerMinute,
                        minute,
                        "rpm",
                    ),
                    (
                        s.requests_per_day.map(|n| n.get().into()),
                        LimitKind::RequestsPerDay,
                        day,
                        "rpd",
                    ),
                ];
                for (value, kind, period_ms, suffix) in limits {
                    let stage = match kind {
                        LimitKind::ConcurrentRequests => 0,
                        LimitKind::TokensPerMinute | LimitKind::TokensPerDay => 1,
                        _ => 2,
                    };
                    let Some(limit) = value.filter(|_| stage == pass) else {
                        continue;
                    };
                    checks.push(Check {
                        // The limit's value is part of its key: a reload
                        // that changes it starts it afresh, as local limits
                        // do, instead of measuring old state against it.
                        key: format!("{}:{}:{suffix}:{limit}", self.settings.prefix, scope.id),
                        concurrency: kind == LimitKind::ConcurrentRequests,
                        limit,
                        period_ms,
                        kind,
                        scope: i,
                    });
                }
            }
        }
        checks
    }

    /// Extends the leases every third of their length until aborted, and
    /// adds back one Redis lost (a stall past its expiry, a restart).
    fn spawn_refresher(
        self: &Arc<Self>,
        lease: &str,
        held: &[Check],
    ) -> tokio::task::JoinHandle<()> {
        let backend = self.clone();
        let lease = lease.to_string();
        let keys: Vec<String> = held
            .iter()
            .filter(|c| c.concurrency)
            .map(|c| c.key.clone())
            .collect();
        tokio::spawn(async move {
            let every = backend.settings.lease / 3;
            let lease_ms = backend.settings.lease.as_millis() as u64;
            loop {
                tokio::time::sleep(every).await;
                let Some(mut conn) = backend.connection().await else {
                    continue;
                };
                let mut call = REFRESH.prepare_invoke();
                call.arg(&lease).arg(lease_ms);
                for key in &keys {
                    call.key(key);
                }
                let mut answer = backend
                    .timed(StoreCall::Refresh, call.invoke_async::<i64>(&mut conn))
                    .await;
                if answer
                    .as_ref()
                    .is_err_and(redis::RedisError::is_connection_dropped)
                {
                    // A connection Redis closed: once more on the new one
                    // (extending a lease twice is harmless).
                    answer = backend
                        .timed(StoreCall::Refresh, call.invoke_async::<i64>(&mut conn))
                        .await;
                }
                match answer {
                    Ok(0) => {}
                    Ok(restored) => tracing::info!(
                        restored,
                        "concurrency lease added back: Redis had lost it while its response ran"
                    ),
                    Err(err) => backend.report_failure(&err),
                }
            }
        })
    }
}
