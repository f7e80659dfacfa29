//! The HTTP endpoints, one file per resource: chat completions, models,
//! health (`/healthz`, `/readyz`) and metrics.

pub mod chat_completions;
pub mod health;
pub mod metrics;
pub mod models;
