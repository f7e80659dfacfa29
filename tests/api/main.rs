//! One test binary for every API test (faster to link, one harness).

mod cli;
mod errors;
mod helpers;
mod normalize;
mod passthrough;
mod routing;
mod streaming;
