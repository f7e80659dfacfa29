//! `GET /metrics`: the Prometheus text format. Circuit states, the
//! rate-limit store's health, the request body bytes held and the log's
//! dropped lines are read at scrape time, so the hot path never touches
//! their series; one scrape at a time sets and renders them.

use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use std::collections::HashSet;

pub async fn metrics(State(state): State<AppState>) -> Response {
    // Rendering takes time in proportion to the series (~0.35 s for 130k
    // of them: thousands of client keys, each with its token counters per
    // route): on a runtime worker it would hold every request queued
    // behind it for that long.
    match tokio::task::spawn_blocking(move || scrape(&state)).await {
        Ok(response) => response,
        Err(_) => crate::error::GatewayError::server(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be rendered",
        )
        .into_response(),
    }
}

fn scrape(state: &AppState) -> Response {
    let config = state.config();
    // Nothing panics while holding it; a poisoned lock guards nothing.
    let scraping = state
        .metrics
        .scrape
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let gauge = &state.metrics.breaker_state;
    // Reset first: a target a reload removed must not keep its series.
    gauge.reset();
    let mut seen = HashSet::new();
    for route in config.routes.routes() {
        for target in route.usable_targets() {
            if seen.insert(target.label.clone()) {
                let value = match target.breaker.state() {
                    crate::proxy::breaker::BreakerState::Closed => 0,
                    crate::proxy::breaker::BreakerState::HalfOpen => 1,
                    crate::proxy::breaker::BreakerState::Open => 2,
                };
                gauge
                    .with_label_values(&[&*target.provider.name, &*target.label])
                    .set(value);
            }
        }
    }
    let up = &state.metrics.store.up;
    up.reset();
    if let Some(healthy) = config.limits.store_up() {
        up.with_label_values(&["redis"]).set(i64::from(healthy));
    }
    let dropped = &state.metrics.log_lines_dropped;
    let total = crate::log_writer::dropped_lines();
    if total > dropped.get() {
        dropped.inc_by(total - dropped.get());
    }
    let held = i64::try_from(state.body_budget.held()).unwrap_or(i64::MAX);
    state.metrics.request_body_bytes.set(held);
    let total = i64::try_from(config.server.max_body_bytes_total).unwrap_or(i64::MAX);
    state.metrics.request_body_bytes_max.set(total);
    let answers = &state.answer_budget;
    let held = i64::try_from(answers.held()).unwrap_or(i64::MAX);
    state.metrics.answer_bytes.set(held);
    let total = i64::try_from(config.server.max_answer_bytes_total).unwrap_or(i64::MAX);
    state.metrics.answer_bytes_max.set(total);
    let waits = &state.metrics.answer_waits;
    waits.inc_by(answers.waits().saturating_sub(waits.get()));
    let rendered = state.metrics.render();
    drop(scraping);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        rendered,
    )
        .into_response()
}
