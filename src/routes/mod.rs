//! One file per endpoint.

pub mod chat_completions;
pub mod health;
pub mod metrics;
pub mod models;
