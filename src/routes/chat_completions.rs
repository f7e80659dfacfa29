//! `POST /v1/chat/completions`: read the body once, check the key may use
//! the model, admit it against the rate limits, route by model, forward
//! (each attempt admitted against its provider's limits).

use crate::access_log::{RequestedModel, RouteName};
use crate::auth;
use crate::config::Config;
use crate::error::GatewayError;
use crate::error::code;
use crate::limits::{Admission, Settlement, estimate_tokens};
use crate::proxy::body_pieces::{BodyCollector, BodyPieces};
use crate::proxy::failover::{self, AttemptOutcome, BREAKER_OPEN, Event};
use crate::proxy::headers::{X_GATEWAY_ATTEMPTS, X_GATEWAY_PROVIDER};
use crate::proxy::request::{ChatRequest, RequestScan, shown_model};
use crate::proxy::route::Target;
use crate::proxy::upstream::{self, ForwardContext, Forwarded, UpstreamInfo};
use crate::request_context::{Handled, RequestScope};
use crate::request_progress::ProgressWatch;
use crate::server::BodyError;
use crate::state::AppState;
use crate::wire_fields::WireFields;
use axum::BoxError;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body::Body as _;
use http_body_util::{LengthLimitError, Limited};
use std::future::poll_fn;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

pub async fn chat_completions<B>(
    state: &AppState,
    headers: &HeaderMap,
    body: B,
    scope: RequestScope<'_>,
) -> (Response, Handled)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let config = state.config();
    let RequestScope {
        id: request_id,
        arrived,
        caller,
        progress,
    } = scope;
    let mut scan = RequestScan::default();
    let (body, body_waited_for) =
        match read_body(headers, body, config.server.max_body_bytes, &mut scan).await {
            Ok(read) => read,
            Err(err) => {
                // A key past its share of the body budget is a key's limit.
                count_limited(state, Some(&err));
                return (err.into_response(), Handled::default());
            }
        };
    // The gateway's own time starts once it has the body: the client's
    // upload is not the gateway's overhead.
    let own_time_from = body_waited_for.unwrap_or(arrived);
    let chat = match ChatRequest::from_scan(body, scan) {
        Ok(chat) => chat,
        Err(refused) => {
            // Counted under the route the model names, when it names one;
            // a model that matched nothing (one too long to look up too)
            // under `unknown`.
            let route = refused
                .model
                .as_ref()
                .and_then(|model| config.routes.lookup(&model.name))
                .map(|route| RouteName(route.name.clone()));
            let handled = Handled {
                model: refused.model,
                route,
                ..Handled::default()
            };
            return (refused.error.into_response(), handled);
        }
    };
    // From here on, a request dropped before its answer (its client left)
    // is logged with the model, route and provider it had reached. A block,
    // not an async function of its own: a nested future is built and then
    // moved into this one, a copy of its whole size.
    let mut watch = progress.watch(&chat);
    let answer = 'answer: {
        // Handed back with every answer from here on. `Handled` itself is built
        // only at the end: held across the awaits, it would enlarge the future.
        let model = Some(RequestedModel {
            name: chat.logged_model(),
            stream: chat.stream,
        });
        // Refusals before routing (the key's models, the limits) are counted
        // under the route the model names, when it names one.
        let refused = |response, fields, model| {
            let route = config
                .routes
                .lookup(chat.model())
                .map(|route| RouteName(route.name.clone()));
            let handled = Handled {
                model,
                route,
                fields,
                ..Handled::default()
            };
            (response, handled)
        };
        // A model no route serves is 404 `model_not_found` for every key
        // (a typo is told as one), not 403 for the keys with a model list.
        if caller
            .key
            .as_ref()
            .is_some_and(|key| !key.may_use(chat.model()))
            && config.routes.lookup(chat.model()).is_some()
        {
            let err = auth::model_not_allowed(&caller, chat.model());
            break 'answer refused(err.into_response(), WireFields::default(), model);
        }
        let limits = &config.limits;
        if limits.is_off() {
            let routed = route_and_forward(
                state,
                &config,
                &chat,
                (request_id, arrived, own_time_from),
                (0, None),
                &mut watch,
            )
            .await;
            break 'answer routed.handled(model, None);
        }
        let estimate = estimate_tokens(&chat, limits.default_max_tokens);
        let admission = match limits
            .admit(caller.key.as_deref(), chat.model(), estimate)
            .await
        {
            Ok(admission) => admission,
            Err((response, fields)) => {
                count_limited(state, response.extensions().get::<GatewayError>());
                break 'answer refused(response, fields, model);
            }
        };
        let mut routed = route_and_forward(
            state,
            &config,
            &chat,
            (request_id, arrived, own_time_from),
            (estimate, Some(&admission)),
            &mut watch,
        )
        .await;
        let settlement = admission.finish(
            &routed.response,
            &mut routed.fields,
            routed.provider_admission.take(),
            routed.upstream.as_ref(),
        );
        routed.handled(model, settlement)
    };
    watch.answered();
    answer
}

/// The outcome of routing and fail-over.
struct Routed {
    response: Response,
    /// The response's header fields (the provider's and the gateway's).
    fields: WireFields,
    /// The route's name, when the model had one.
    route: Option<RouteName>,
    /// The last target tried, when any was.
    upstream: Option<UpstreamInfo>,
    /// What the answering attempt holds of its provider's limits, or the
    /// provider limit that refused the last attempt (its window only).
    provider_admission: Option<Admission>,
}

impl Routed {
    fn handled(
        self,
        model: Option<RequestedModel>,
        settlement: Option<Settlement>,
    ) -> (Response, Handled) {
        let handled = Handled {
            model,
            fields: self.fields,
            route: self.route,
            upstream: self.upstream,
            settlement,
        };
        (self.response, handled)
    }

    fn refused(response: Response, route: Option<RouteName>) -> Self {
        Routed {
            response,
            fields: WireFields::default(),
            route,
            upstream: None,
            provider_admission: None,
        }
    }
}

/// Routes by model and runs the fail-over loop; each attempt first takes
/// its provider's limits (`estimate` tokens), and marks both its own and
/// the request's `admission` sent before it goes to the provider. The
/// route and each attempt are noted in `watch` as they are reached.
async fn route_and_forward<'c>(
    state: &AppState,
    config: &'c Config,
    chat: &'c ChatRequest,
    (request_id, arrived, own_time_from): (HeaderValue, Instant, Instant),
    (estimate, admission): (u64, Option<&Admission>),
    watch: &mut ProgressWatch<'_, 'c>,
) -> Routed {
    let Some(route) = config.routes.lookup(chat.model()) else {
        let missing = GatewayError::new(
            StatusCode::NOT_FOUND,
            crate::error::ErrorType::ResourceNotFoundError,
            format!(
                "model {:?} is not served by this gateway (see GET /v1/models)",
                shown_model(chat.model())
            ),
        )
        .with_param("model")
        .with_code(code::MODEL_NOT_FOUND)
        .into_response();
        return Routed::refused(missing, None);
    };
    let route_name = Some(RouteName(route.name.clone()));
    watch.route = Some(route);
    if route.usable_targets().next().is_none() {
        let vars = route.missing_key_vars().join(" or ");
        let unconfigured = GatewayError::server(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "model {:?} is served by a provider that is not configured: set {vars}",
                shown_model(chat.model())
            ),
        )
        .with_code(code::PROVIDER_NOT_CONFIGURED)
        .into_response();
        return Routed::refused(unconfigured, route_name);
    }
    let ctx = ForwardContext {
        request_id: &request_id,
        arrived,
        route: &route.name,
        metrics: &state.metrics,
        keepalive: config.server.sse_keepalive,
        drain: &state.drain,
        last_time_to_head_us: AtomicU64::new(0),
        max_response_bytes: config.server.max_response_bytes,
        answer_budget: &state.answer_budget,
    };
    let ctx = &ctx;
    let limits = &config.limits;
    let first_attempt = &std::sync::atomic::AtomicBool::new(true);
    let result = failover::run(
        route,
        &config.retry,
        arrived,
        &mut watch.report,
        |target| async move {
            // No head yet: one an earlier attempt got is not this one's.
            ctx.last_time_to_head_us.store(0, Ordering::Relaxed);
            // The gateway's own time before this attempt is sent: from the
            // request's arrival (or its body's end, when the body came
            // later) for the first, from the end of the backoff for later
            // ones; a wait in the provider's queue is left out.
            let began = if first_attempt.swap(false, Ordering::Relaxed) {
                own_time_from
            } else {
                Instant::now()
            };
            let queued_from = Instant::now();
            // Failures are logged where they happen rather than around the
            // whole attempt: a wrapper would move every success's result
            // once more.
            let slot = limits
                .admit_provider(&target.provider.name, estimate)
                .await
                .map_err(|mut err| {
                    count_limited(state, Some(&err));
                    log_failed_attempt(ctx.request_id, target, &mut err);
                    err
                })?;
            let own_time_since = began + queued_from.elapsed();
            slot.mark_sent();
            if let Some(admission) = admission {
                admission.mark_sent();
            }
            match upstream::forward(target, chat, ctx, own_time_since).await {
                Ok(forwarded) => Ok((forwarded, slot)),
                Err(mut err) => {
                    // The provider is no longer working on the request:
                    // a client that leaves before the next attempt (in
                    // its backoff) costs nothing, as a failed request.
                    if let Some(admission) = admission {
                        admission.mark_unsent();
                    }
                    let window = slot.refund();
                    if !window.is_empty() {
                        err.details_mut().attempt_window = Some(window);
                    }
                    log_failed_attempt(ctx.request_id, target, &mut err);
                    Err(err)
                }
            }
        },
        |target, event| {
            let outcome = match event {
                Event::Attempt(AttemptOutcome::Success) => {
                    let series = target.series(&state.metrics, &route.name);
                    return series.attempt_success.inc();
                }
                Event::Attempt(outcome) => outcome.as_str(),
                Event::BreakerOpen => BREAKER_OPEN,
            };
            state
                .metrics
                .attempts
                .with_label_values(&[&*target.provider.name, outcome])
                .inc();
        },
    )
    .await;
    let (response, mut fields, mut upstream, provider_admission) = match result {
        Ok((
            Forwarded {
                response,
                fields,
                info,
            },
            slot,
        )) => (response, fields, Some(info), Some(slot)),
        Err(mut err) => {
            // The last attempt's provider limits refused it: those limits
            // are the answer's `x-ratelimit-*` fields. Or it was admitted
            // and failed: its limits count among the answer's scopes.
            let details = err.details.as_mut();
            let refused = details.and_then(|d| {
                let refused = d.limit_window.take().map(Admission::refused);
                refused.or_else(|| d.attempt_window.take().map(Admission::failed_attempt))
            });
            (
                err.into_response(),
                WireFields::default(),
                watch.report.target.map(|target| UpstreamInfo {
                    time_to_head: ctx.last_time_to_head(),
                    ..UpstreamInfo::new(target)
                }),
                refused,
            )
        }
    };
    let report = &watch.report;
    if let Some(target) = report.target {
        fields.push(&X_GATEWAY_PROVIDER, &target.provider.name_header);
        fields.push_u64(&X_GATEWAY_ATTEMPTS, report.attempts.into());
        if let Some(info) = &mut upstream {
            info.attempts = report.attempts;
        }
    }
    Routed {
        response,
        fields,
        route: route_name,
        upstream,
        provider_admission,
    }
}

/// Counts a refusal by one of the gateway's own rate-limit scopes.
fn count_limited(state: &AppState, error: Option<&GatewayError>) {
    if let Some(scope) = error.and_then(|e| e.limit_scope) {
        state
            .metrics
            .rate_limited
            .with_label_values(&[scope.as_str()])
            .inc();
    }
}

/// A request body sent with a content coding (`Content-Encoding: gzip`, in
/// any of its fields): read as it is, it would be refused as JSON that
/// does not parse. `identity` (and an empty field) is no coding.
/// Only a coding HTTP registers is named in the error (and so the log):
/// the field's text is the client's, and could be a key sent in the wrong
/// field.
fn unsupported_encoding(coding: &[u8]) -> GatewayError {
    const REGISTERED: [&str; 12] = [
        "gzip",
        "x-gzip",
        "deflate",
        "br",
        "zstd",
        "compress",
        "x-compress",
        "exi",
        "pack200-gzip",
        "aes128gcm",
        "dcb",
        "dcz",
    ];
    let shown = REGISTERED
        .into_iter()
        .find(|name| name.as_bytes().eq_ignore_ascii_case(coding))
        .unwrap_or("an unknown coding");
    GatewayError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        crate::error::ErrorType::InvalidRequestError,
        format!(
            "request bodies with Content-Encoding ({shown}) are not accepted: send the JSON uncompressed"
        ),
    )
    .with_code(code::UNSUPPORTED_CONTENT_ENCODING)
}

/// How much of a request body that is already there is scanned before the
/// connection's task lets the others run: a body of tens of megabytes,
/// read and scanned at 64 KiB a read until tokio's budget of 128 reads ran
/// out, held the worker for ~20 ms at a time (escape-dense JSON scans at
/// ~0.4 GB/s), and every other request's next step waited behind it.
/// 128 KiB is at most ~0.3 ms of scanning; bodies under it never yield,
/// and a body trickled in by a slow client yields where it would have
/// waited anyway.
const SCAN_TURN_BYTES: usize = 128 * 1024;

/// Reads the whole body, refusing more than `limit` bytes (413) early when
/// the client declares a larger `Content-Length`. Each frame is scanned as
/// it arrives: by the last frame, a large body is scanned but for it. With
/// the body, when it ended if the read had to wait for the client (`None`
/// when it was all there: the clock is read only for a body that came
/// later than its head).
async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    scan: &mut RequestScan,
) -> Result<(BodyPieces, Option<Instant>), GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        GatewayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            crate::error::ErrorType::InvalidRequestError,
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .with_code(code::REQUEST_TOO_LARGE)
    };
    // A compressed body would be scanned as the JSON it is not; say why.
    if let Some(coding) = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"))
    {
        return Err(unsupported_encoding(coding));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    // Kept as the frames arrived: the scan and the upstream write go
    // across them, so a large body is never joined into a second copy.
    let mut body = pin!(Limited::new(body, limit));
    let mut collector = BodyCollector::default();
    let mut waited = false;
    let mut scanned_in_turn = 0;
    let mut read = 0u64;
    loop {
        let frame = poll_fn(|cx| {
            let frame = body.as_mut().poll_frame(cx);
            waited |= frame.is_pending();
            frame
        })
        .await;
        let Some(frame) = frame else { break };
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    scan.feed(&data);
                    scanned_in_turn += data.len();
                    read += data.len() as u64;
                    collector.push(data);
                    // A body whose declared length is all read is done:
                    // its handler goes on without a last turn's wait.
                    if scanned_in_turn >= SCAN_TURN_BYTES && declared != Some(read) {
                        // Let every other connection have its turn before
                        // scanning on. Counted whether or not the reads
                        // waited: the connection reads a frame only when
                        // asked, so every frame looks like a wait here.
                        scanned_in_turn = 0;
                        tokio::task::yield_now().await;
                    }
                }
                if body.is_end_stream() {
                    break;
                }
            }
            Err(err)
                if err.downcast_ref::<LengthLimitError>().is_some()
                    || body_error(&*err) == Some(BodyError::TooLarge) =>
            {
                return Err(too_large());
            }
            Err(err) if body_error(&*err) == Some(BodyError::NoRoom) => {
                return Err(GatewayError::server(
                    StatusCode::SERVICE_UNAVAILABLE,
                    BodyError::NoRoom.to_string(),
                )
                .with_code(code::GATEWAY_OUT_OF_RESOURCES)
                .with_retry_after(Some(HeaderValue::from_static("1"))));
            }
            Err(err) if body_error(&*err) == Some(BodyError::KeyShareFull) => {
                let mut err = GatewayError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    crate::error::ErrorType::RateLimitReachedError,
                    BodyError::KeyShareFull.to_string(),
                )
                .with_code(code::MAX_BODY_BYTES_PER_KEY)
                .with_retry_after(Some(HeaderValue::from_static("1")));
                err.limit_scope = Some(crate::limits::ScopeKind::Key);
                return Err(err);
            }
            Err(err) if body_error(&*err).is_some_and(|e| e.is_timeout()) => {
                let slow_or_silent = body_error(&*err).expect("a body error");
                return Err(GatewayError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    crate::error::ErrorType::InvalidRequestError,
                    slow_or_silent.to_string(),
                )
                .with_code(code::REQUEST_TIMEOUT));
            }
            Err(err) => {
                return Err(GatewayError::invalid_request(format!(
                    "could not read the request body: {err}"
                )));
            }
        }
    }
    Ok((collector.finish(), waited.then(Instant::now)))
}

/// How the connection ended the body, when it did (the error arrives
/// wrapped, by the body type and the length limit).
fn body_error(err: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
    std::iter::successors(Some(err), |e| e.source()).find_map(|e| e.downcast_ref().copied())
}

/// A failed attempt another may follow: logged with its request id, so that
/// an answer served after a fail-over still shows what failed before it
/// (the access line names only the last attempt). A failure that is the
/// request's answer whatever comes (a provider's 400) is the access line's;
/// `error_status` is the status the failure would have been answered with.
fn log_failed_attempt(request_id: &HeaderValue, target: &Target, err: &mut GatewayError) {
    let request_id = request_id.to_str().unwrap_or("");
    // A refused key has an alert line of its own, naming its variable.
    if err.code.as_deref() == Some(code::UPSTREAM_KEY_REJECTED) {
        let key_env = failover::name_the_refused_key(target, err);
        tracing::error!(
            request_id,
            provider = &*target.provider.name,
            upstream_target = &*target.label,
            key_env,
            alert = code::UPSTREAM_KEY_REJECTED,
            "provider rejected the gateway's API key; target skipped: {}",
            err.message
        );
        return;
    }
    if failover::classify(err) == failover::Verdict::Final {
        return;
    }
    tracing::warn!(
        request_id,
        provider = &*target.provider.name,
        upstream_target = &*target.label,
        error_status = err.status.as_u16(),
        error_type = err.error_type.as_str(),
        code = err.code.as_deref().unwrap_or(""),
        "upstream attempt failed: {}",
        err.message
    );
}

#[cfg(test)]
mod tests {
    use crate::state::AppState;
    use axum::body::Body;
    use std::mem::size_of_val;

    /// A large body whose frames are all there is scanned in turns of
    /// [`super::SCAN_TURN_BYTES`], the task letting the others run between
    /// them; a small one is read in one go.
    #[test]
    fn a_large_body_already_there_is_scanned_in_turns() {
        let turns = |frames: usize, declared: bool| {
            // Frames of 64 KiB each: the JSON's start and end inside the
            // first and last.
            let mut json = vec![b' '; frames * 64 * 1024];
            json[..1].copy_from_slice(b"{");
            json[frames * 64 * 1024 - 1..].copy_from_slice(b"}");
            let json = bytes::Bytes::from(json);
            let body: Vec<_> = (0..frames)
                .map(|n| json.slice(n * 64 * 1024..(n + 1) * 64 * 1024))
                .collect();
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(
                body.into_iter()
                    .map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(b))),
            ));
            let mut headers = http::HeaderMap::new();
            if declared {
                let length = frames * 64 * 1024;
                headers.insert(http::header::CONTENT_LENGTH, length.into());
            }
            let mut scan = crate::proxy::request::RequestScan::default();
            let read = super::read_body(&headers, body, 64 << 20, &mut scan);
            let mut read = std::pin::pin!(read);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let mut pending = 0;
            loop {
                match read.as_mut().poll(&mut cx) {
                    std::task::Poll::Pending => pending += 1,
                    std::task::Poll::Ready(result) => {
                        let (pieces, waited) = result.unwrap();
                        assert_eq!(pieces.len(), frames * 64 * 1024);
                        assert!(waited.is_none(), "a turn is no wait for the client");
                        return pending;
                    }
                }
            }
        };
        assert_eq!(turns(1, false), 0);
        // 16 MiB: one turn every 128 KiB.
        assert_eq!(turns(256, false), 128);
        // The last 128 KiB ends the declared body: no turn after it.
        assert_eq!(turns(256, true), 127);
    }

    /// Every request's future is allocated and moved as one block: a large
    /// state inlined by mistake (a connection, a connect future) costs a
    /// large malloc and memcpy per request, so the sizes are guarded.
    #[test]
    fn request_futures_stay_small() {
        let state = AppState::new(crate::config::load(None).unwrap());
        let scope = crate::request_context::RequestScope {
            id: http::HeaderValue::from_static("req_1"),
            arrived: tokio::time::Instant::now(),
            caller: crate::auth::Caller::anonymous(),
            progress: &Default::default(),
        };
        let headers = http::HeaderMap::new();
        let handler = super::chat_completions(&state, &headers, Body::empty(), scope);
        assert!(size_of_val(&handler) <= 4096, "{}", size_of_val(&handler));

        let config = state.config();
        let route = config.routes.lookup("kimi-k2-turbo-preview").unwrap();
        let target = route.targets.first().unwrap();
        let send = target.provider.client.send(
            |_| {},
            bytes::Bytes::new().into(),
            tokio::time::Instant::now(),
        );
        assert!(size_of_val(&send) <= 1536, "{}", size_of_val(&send));
    }
}
