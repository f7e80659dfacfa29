//! One test binary for every API test (faster to link, one harness).

mod cli;
mod errors;
mod helpers;
mod lifecycle;
mod metrics;
mod normalize;
mod passthrough;
mod resilience;
mod routing;
mod streaming;
