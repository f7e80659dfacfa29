//! The hot path, in the order a request takes it: route the model, peek and
//! splice the body, send upstream, translate errors, relay the stream.

pub mod body_pieces;
pub mod breaker;
pub mod failover;
pub mod headers;
mod json_mend;
pub mod json_scan;
pub mod key_redaction;
pub mod normalize;
mod prompt_filter;
pub mod provider_errors;
pub mod provider_wait;
pub mod request;
pub mod route;
pub mod sse;
mod sse_events;
pub mod sse_lines;
pub mod stream_stats;
pub mod string_stop;
pub mod upstream;
mod upstream_errors;
pub mod upstream_head;
pub mod usage;
mod usage_event;
mod usage_flat;
pub mod whole_count;
