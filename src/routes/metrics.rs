//! `GET /metrics`: the Prometheus text format. Circuit states are read at
//! scrape time, so the hot path never touches their gauges.

use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use std::collections::HashSet;

pub async fn metrics(State(state): State<AppState>) -> Response {
    let config = state.config();
    let gauge = &state.metrics.breaker_state;
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
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}
