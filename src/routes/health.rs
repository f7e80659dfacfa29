//! `GET /healthz` (the process is up) and `GET /readyz` (a configuration is
//! loaded and at least one provider can serve).

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let config = state.config();
    let providers: Vec<_> = config
        .providers
        .iter()
        .map(|p| {
            json!({
                "name": &*p.name,
                "usable": p.is_usable(),
                "key_env": p.api_key_env,
                "models": p.models.len(),
            })
        })
        .collect();
    let ready = config.usable_providers().next().is_some();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "reason": if ready { None } else { Some("no provider has an API key") },
        "config": config.fingerprint,
        "providers": providers,
    });
    (status, Json(body)).into_response()
}
