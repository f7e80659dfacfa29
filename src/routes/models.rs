//! `GET /v1/models` and `GET /v1/models/{id}`: every name the gateway routes
//! to a provider that has a key, in OpenAI's list shape. Ids may contain `/`.
//! A client key limited to some models sees only those.

use crate::auth::Caller;
use crate::error::code;
use crate::error::{ErrorType, GatewayError};
use crate::proxy::route::Route;
use crate::state::AppState;
use axum::Extension;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn list(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    let config = state.config();
    let allowed = |route: &&Arc<Route>| caller.as_ref().is_none_or(|c| c.may_use(&route.name));
    let data: Vec<Value> = config
        .routes
        .routes()
        .iter()
        .filter(allowed)
        .filter_map(|route| model_object(route))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

pub async fn retrieve(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    // axum's own rejection is plain text; every error here is OpenAI-shaped.
    let Ok(Path(id)) = id else {
        return GatewayError::invalid_request("the model id in the path is not valid UTF-8")
            .with_param("model")
            .into_response();
    };
    let config = state.config();
    let allowed = caller.as_ref().is_none_or(|c| c.may_use(&id));
    match config
        .routes
        .lookup(&id)
        .filter(|_| allowed)
        .and_then(|route| model_object(route))
    {
        Some(model) => Json(model).into_response(),
        None => GatewayError::new(
            StatusCode::NOT_FOUND,
            ErrorType::ResourceNotFoundError,
            format!(
                "model {:?} is not served by this gateway{}",
                crate::proxy::request::shown_model(&id),
                // `/v1/models//ID` and `/v1/models/ID/` come here, not to
                // the 404 that names stray slashes in other paths.
                if id.starts_with('/') || id.ends_with('/') || id.contains("//") {
                    " (the path has a doubled or trailing slash: check the client's base URL)"
                } else {
                    ""
                }
            ),
        )
        .with_param("model")
        .with_code(code::MODEL_NOT_FOUND)
        .into_response(),
    }
}

/// The OpenAI model object for a route, if one of its providers can serve it.
fn model_object(route: &Route) -> Option<Value> {
    let target = route.usable_targets().next()?;
    Some(json!({
        "id": &*route.name,
        "object": "model",
        "created": 0,
        "owned_by": &*target.provider.name,
    }))
}
