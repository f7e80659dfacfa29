//! kimi-gateway: an OpenAI-compatible gateway in front of the providers that
//! serve Kimi models (Moonshot, AI/ML API, Agentsflare).
//!
//! The path of one request, in file order (DEVELOPERS.md has it in more
//! detail): [`server`] reads it and [`request_id`] gives it an id,
//! [`request_context`] checks its key and hands [`access_log`] its record,
//! [`routes::chat_completions`] reads the body once, [`proxy::request`]
//! peeks `model`/`stream` without building a JSON tree, [`proxy::route`]
//! picks the targets, [`proxy::failover`] tries them in order,
//! [`proxy::upstream`] sends the original bytes (only the model value
//! spliced) with the provider's key through [`client`],
//! [`proxy::provider_errors`] maps a provider's error to the documented
//! vocabulary, and [`proxy::sse`] relays a stream byte for byte. The access
//! log is written when the response body ends.

pub mod access_line;
pub mod access_log;
pub mod answer_budget;
pub mod app;
pub mod auth;
pub mod block_cache;
pub mod body_budget;
pub mod body_guard;
pub mod client;
pub mod coarse_clock;
pub mod config;
pub mod drain;
pub mod error;
pub mod fd_limit;
pub mod head_end;
pub mod healthcheck;
pub mod limits;
pub mod listener;
pub mod log_format;
pub mod log_writer;
pub mod malloc_tuning;
pub mod memory_trim;
pub mod metric_series;
pub mod metrics;
pub mod metrics_listener;
pub mod misplaced_keys;
pub mod mock;
pub mod model_refresh;
pub mod proxy;
pub mod reload;
pub mod request_context;
pub mod request_id;
pub mod request_metrics;
pub mod request_progress;
pub mod routes;
pub mod server;
pub mod settle_at_end;
pub mod shown;
pub mod state;
pub mod telemetry;
pub mod unbudgeted;
pub mod wire_fields;
