//! A mock of the three providers, for tests, benchmarks and offline try-outs.
//! One server answers every flavour under its own prefix:
//! `/moonshot/v1`, `/aimlapi/v1` and `/agentsflare/v1`. Requests can script
//! errors, delays, cuts and gates with a `[mock …]` directive (see
//! [`scenario`]); the handle records what each request looked like.

mod fail;
mod rendered;
mod reply;
pub mod scenario;
mod server;

pub use server::{MockHandle, MockOptions, Recorded, spawn};

/// Which provider the mock imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    Moonshot,
    Aimlapi,
    Agentsflare,
}

impl Flavour {
    pub const ALL: [Flavour; 3] = [Flavour::Moonshot, Flavour::Aimlapi, Flavour::Agentsflare];

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Moonshot => "moonshot",
            Flavour::Aimlapi => "aimlapi",
            Flavour::Agentsflare => "agentsflare",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Flavour::ALL.into_iter().find(|f| f.name() == name)
    }

    /// AI/ML API documents 201 for a successful completion.
    pub fn success_status(self) -> http::StatusCode {
        match self {
            Flavour::Aimlapi => http::StatusCode::CREATED,
            _ => http::StatusCode::OK,
        }
    }
}
