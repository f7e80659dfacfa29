//! One test binary for every API test (faster to link, one harness).

mod auth;
mod cli;
mod errors;
mod fd_exhaustion;
mod held_answers;
mod helpers;
mod key_echo;
mod lifecycle;
mod limits;
mod limits_concurrency;
mod limits_redis;
mod limits_tokens;
mod loadgen;
mod metrics;
mod model_refresh;
mod normalize;
mod overload;
mod passthrough;
mod raw_client;
mod redis_server;
mod resilience;
mod routing;
mod runaway_provider;
mod server;
mod streaming;
mod upstream_client;
