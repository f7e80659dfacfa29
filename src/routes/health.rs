//! `GET /healthz` (the process is up) and `GET /readyz` (ready to take
//! traffic: not draining, a configuration loaded, at least one provider with
//! a key, and not every target's circuit open). The readiness body shows each
//! provider, each target's circuit state, the last reload's outcome and the
//! rate limits' backend and health; on the main listener, when a separate
//! metrics listener is set, only the status and its reason.

use crate::proxy::breaker::BreakerState;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;
use std::collections::HashSet;

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// The readiness of the metrics listener, or of the main listener when
/// there is no other: the status, and what the operator needs to see why.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (status, body) = readiness(&state);
    (status, Json(body)).into_response()
}

/// The readiness of the main listener when `server.metrics_listen` is set:
/// the same status and reason, without the providers, targets, key
/// variables, configuration fingerprint and reload outcome, which are the
/// operator's business and not the API's callers' (the main listener is
/// the public one, and these paths need no key).
pub async fn readyz_brief(State(state): State<AppState>) -> Response {
    let (status, body) = readiness(&state);
    let brief = json!({
        "status": body["status"],
        "reason": body["reason"],
        "draining": body["draining"],
    });
    (status, Json(brief)).into_response()
}

fn readiness(state: &AppState) -> (StatusCode, serde_json::Value) {
    let config = state.config();
    let providers: Vec<_> = config
        .providers
        .iter()
        .map(|p| {
            json!({
                "name": &*p.name,
                "usable": p.is_usable(),
                "keys": p.keys.len(),
                "key_env": p.api_key_env,
                "models": p.models.len(),
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut targets = Vec::new();
    let mut any_closed = false;
    for route in config.routes.routes() {
        for target in route.usable_targets() {
            if seen.insert(target.label.clone()) {
                let breaker = target.breaker.state();
                any_closed |= breaker != BreakerState::Open;
                targets.push(json!({"target": &*target.label, "state": breaker.as_str()}));
            }
        }
    }
    let reason = if state.drain.is_draining() {
        Some("draining")
    } else if let Some(problem) = config.out_of_service() {
        Some(problem.reason())
    } else if targets.is_empty() {
        // Nothing routable yet, while a catalogue refresh may find some.
        Some("no model is routable")
    } else if !any_closed {
        Some("every target's circuit is open")
    } else if !config.limits.is_ready() {
        Some(
            "the rate-limit store is unreachable or refuses the gateway, and limits.on_redis_error is \"closed\"",
        )
    } else {
        None
    };
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if reason.is_none() { "ready" } else { "not_ready" },
        "reason": reason,
        "draining": state.drain.is_draining(),
        "config": config.fingerprint,
        "last_reload": state.reload_status(),
        "providers": providers,
        "targets": targets,
        "limits": config.limits.status(&state.metrics.store),
    });
    (status, body)
}
