//! Around every request: the request id handed in, the client key
//! checked, the handler run, the answer's id field added, keys the answer
//! quotes by mistake masked, and the access record handed to the log (now,
//! or when a stream's body ends, with the limits' settlement held as long).

use crate::access_log::{AccessRecord, EmitOnDrop, RequestedModel, RouteName, Unanswered};
use crate::auth::Caller;
use crate::body_guard::hold_until_body_ends;
use crate::error::GatewayError;
use crate::limits::Settlement;
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::upstream::UpstreamInfo;
use crate::request_progress::RequestProgress;
use crate::settle_at_end::settle_before_end;
use crate::state::AppState;
use crate::wire_fields::WireFields;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method};
use std::future::Future;
use tokio::time::Instant;

/// What the request context hands its handler.
pub struct RequestScope<'p> {
    /// The request id: the client's `x-request-id` when usable, else generated.
    pub id: HeaderValue,
    /// When the request arrived, for overhead and time-to-first-token.
    pub arrived: Instant,
    pub caller: Caller,
    /// Where the handler leaves what it had reached if it is dropped before
    /// answering.
    pub progress: &'p RequestProgress,
}

/// What a handler hands back besides its response: the response's header
/// fields in wire form, what the access log needs, and what must live until
/// the response body ends.
#[derive(Debug, Default)]
pub struct Handled {
    /// Written after the response's header map (see [`WireFields`]).
    pub fields: WireFields,
    pub model: Option<RequestedModel>,
    pub route: Option<RouteName>,
    /// The upstream side, when a provider was tried.
    pub upstream: Option<UpstreamInfo>,
    /// Rate-limit holds released when the body ends. Kept with the access
    /// record on one body wrapper, not a wrapper of their own.
    pub settlement: Option<Settlement>,
}

/// Around every request: assigns the request id, checks the client key,
/// runs `handler`, returns the id, and logs the request. What the handler
/// needs and what the log needs back are passed directly, not as request
/// and response extensions (each of those is a boxed insert); so are the
/// response's wire fields, handed to the server beside the response.
/// `id` is the request's [`request_id`], chosen by the caller, which may
/// have to answer the request itself (a panic outside the handler, the
/// drain deadline) and so needs it too. `progress` is the caller's too, so
/// that the handler can borrow it.
pub async fn request_context<'p, Handling>(
    state: &AppState,
    head: &http::request::Parts,
    id: HeaderValue,
    progress: &'p RequestProgress,
    handler: impl FnOnce(RequestScope<'p>) -> Handling,
) -> (Response, WireFields)
where
    Handling: Future<Output = (Response, Handled)>,
{
    let started = Instant::now();
    let method = head.method.clone();
    // The request's `Uri`, kept for the path: a clone of the chat target's
    // shares its static text, where a copy of the path was an allocation.
    let uri = head.uri.clone();
    let counted = !is_probe(state, &method, uri.path());
    if counted {
        state.metrics.in_flight.inc();
    }

    let (response, key, mut handled) = match crate::auth::authenticate(state, head) {
        Ok(caller) => {
            let key = caller.key_name.clone();
            if caller.key.is_some() {
                progress.set_key(&key);
            }
            let scope = RequestScope {
                id: id.clone(),
                arrived: started,
                caller,
                progress,
            };
            let unanswered = Unanswered {
                state,
                id: &id,
                method: &method,
                uri: &uri,
                started,
                key: &key,
                counted,
                progress,
            };
            let (response, handled) = handler(scope).await;
            unanswered.answered();
            (response, Some(key), handled)
        }
        Err(refused) => {
            let key = refused.key_name();
            (refused.into_response(), key, Handled::default())
        }
    };
    handled.fields.push(&X_REQUEST_ID, &id);
    let mut record = AccessRecord {
        id,
        client: progress.client(),
        method,
        uri,
        status: response.status(),
        started,
        key,
        model: handled.model,
        route: handled.route,
        upstream: handled.upstream,
        error: response.extensions().get::<GatewayError>().cloned(),
        metrics: counted.then(|| state.metrics.clone()),
    };
    let mut response = response;
    if crate::misplaced_keys::may_show_keys(&record)
        && crate::misplaced_keys::hide_in(&mut record, &state.peek_config())
        && let Some(error) = &record.error
    {
        // The answer quoted the key as the log did: written again from the
        // error as logged.
        *response.body_mut() = axum::body::Body::from(error.body_json());
    }
    let fields = handled.fields;
    // Limits held in Redis are settled before the body's end goes out; local
    // ones when the body is dropped.
    let mut settlement = handled.settlement;
    if let Some(shared) = settlement.take_if(|s| s.is_shared()) {
        response = settle_before_end(response, shared);
    }
    // Dropped in order when the body ends: the settlement, then the record.
    if record.upstream.as_ref().is_some_and(|u| u.stream.is_some()) {
        let held = (settlement, EmitOnDrop(Some(record)));
        return (hold_until_body_ends(response, held), fields);
    }
    record.emit();
    let response = match settlement {
        Some(settlement) => hold_until_body_ends(response, settlement),
        None => response,
    };
    (response, fields)
}

/// A health probe or a metrics scrape: logged at `debug` and not counted,
/// so that probes every few seconds neither flood the log nor drown the
/// request metrics. Anything else (a wrong path, a wrong method on these
/// paths, `/metrics` on the main listener while `server.metrics_listen`
/// serves it: a scraper pointed at the wrong port) is a request like any
/// other. The listener the process started with decides: a reload's new
/// `metrics_listen` takes effect only at the next restart.
fn is_probe(state: &AppState, method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && match path {
            "/healthz" | "/readyz" => true,
            "/metrics" => state.started_with.metrics_listen.is_none(),
            _ => false,
        }
}
