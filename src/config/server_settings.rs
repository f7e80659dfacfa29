//! `[server]`: the listeners, the body and response limits, the drain and
//! the client-side waits, each checked with its key path.

use super::file::ServerFile;
use super::settings::{seconds, seconds_or_off, socket_buffer};
use super::{
    ConfigProblem, DEFAULT_CLIENT_SEND_BUFFER_BYTES, DEFAULT_LISTEN,
    DEFAULT_MAX_ANSWER_BYTES_TOTAL, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES_TOTAL,
    DEFAULT_MAX_RESPONSE_BYTES,
};
use std::net::SocketAddr;
use std::time::Duration;

/// The `[server]` table, resolved.
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Most request body bytes held at once, across every request (see
    /// `body_budget`).
    pub max_body_bytes_total: usize,
    /// Most of that one client key's requests hold at once (see
    /// `body_budget`).
    pub max_body_bytes_per_key: usize,
    /// Most client connections open at once on the main listener; `None`:
    /// derived from the open-file limit at start (see `connection_cap`).
    pub max_connections: Option<usize>,
    /// Largest plain answer, and largest single stream event, read from a
    /// provider: a provider that sends more fails the attempt (or ends the
    /// stream) instead of growing the gateway's memory.
    pub max_response_bytes: usize,
    /// Most plain answer bytes held at once, across every request (see
    /// `answer_budget`).
    pub max_answer_bytes_total: usize,
    /// The kernel's send buffer asked for each client connection (see
    /// `listener`); `None`: the kernel's own.
    pub client_send_buffer: Option<usize>,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain: Duration,
    /// Interval of `: keep-alive` comments on silent streams.
    pub sse_keepalive: Option<Duration>,
    /// How long a client may stay silent: waiting for a complete request
    /// head, between a request body's bytes, and not reading its response.
    pub client_idle: Option<Duration>,
    /// A separate address for `/metrics` (else the main listener serves it).
    pub metrics_listen: Option<SocketAddr>,
    /// `tokens_total` has a series per client key (else its `key` label is
    /// left empty: one series per route, provider and kind).
    pub metrics_tokens_by_key: bool,
}

pub(super) fn server_settings(
    file: &ServerFile,
    problems: &mut Vec<ConfigProblem>,
) -> ServerSettings {
    let listen = file.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen.parse().unwrap_or_else(|_| {
        problems.push(ConfigProblem::new(
            "server.listen",
            format!("{listen:?} is not an address like 127.0.0.1:8080"),
        ));
        DEFAULT_LISTEN.parse().expect("default address parses")
    });
    let max_body_bytes = byte_count(
        file.max_body_bytes,
        "server.max_body_bytes",
        DEFAULT_MAX_BODY_BYTES,
        problems,
    );
    let max_body_bytes_total = byte_count(
        file.max_body_bytes_total,
        "server.max_body_bytes_total",
        DEFAULT_MAX_BODY_BYTES_TOTAL.max(max_body_bytes),
        problems,
    );
    if max_body_bytes_total < max_body_bytes {
        // A body at the limit could then never be read.
        problems.push(ConfigProblem::new(
            "server.max_body_bytes_total",
            format!("{max_body_bytes_total} is less than server.max_body_bytes ({max_body_bytes})"),
        ));
    }
    // By default one key may hold all but the room of one largest body, so
    // that another key's body always finds that room.
    let max_body_bytes_per_key = byte_count(
        file.max_body_bytes_per_key,
        "server.max_body_bytes_per_key",
        max_body_bytes_total
            .saturating_sub(max_body_bytes)
            .max(max_body_bytes),
        problems,
    );
    if max_body_bytes_total >= max_body_bytes
        && !(max_body_bytes..=max_body_bytes_total).contains(&max_body_bytes_per_key)
    {
        problems.push(ConfigProblem::new(
            "server.max_body_bytes_per_key",
            format!(
                "{max_body_bytes_per_key} is not between server.max_body_bytes ({max_body_bytes}) \
                 and server.max_body_bytes_total ({max_body_bytes_total})"
            ),
        ));
    }
    let max_connections = match file.max_connections {
        None => None,
        Some(0) => {
            problems.push(ConfigProblem::new(
                "server.max_connections",
                "must be at least 1",
            ));
            None
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let max_response_bytes = byte_count(
        file.max_response_bytes,
        "server.max_response_bytes",
        DEFAULT_MAX_RESPONSE_BYTES,
        problems,
    );
    let max_answer_bytes_total = file.max_answer_bytes_total.map_or(
        DEFAULT_MAX_ANSWER_BYTES_TOTAL.max(max_response_bytes),
        |n| usize::try_from(n).unwrap_or(usize::MAX),
    );
    if max_answer_bytes_total < max_response_bytes {
        // An answer at the limit could then never be held. (0 included:
        // its least is this, not 1.)
        problems.push(ConfigProblem::new(
            "server.max_answer_bytes_total",
            format!(
                "{max_answer_bytes_total} is less than server.max_response_bytes \
                 ({max_response_bytes}), the least it may be"
            ),
        ));
    }
    let client_send_buffer = socket_buffer(
        file.client_send_buffer_bytes,
        "server.client_send_buffer_bytes",
        DEFAULT_CLIENT_SEND_BUFFER_BYTES,
        problems,
    );
    let drain = seconds(
        file.drain_secs,
        "server.drain_secs",
        Duration::from_secs(30),
        problems,
    );
    let sse_keepalive = seconds_or_off(
        file.sse_keepalive_secs,
        "server.sse_keepalive_secs",
        Duration::from_secs(15),
        "off",
        problems,
    );
    let client_idle = seconds_or_off(
        file.client_idle_secs,
        "server.client_idle_secs",
        Duration::from_secs(75),
        "off",
        problems,
    );
    let metrics_listen = file.metrics_listen.as_deref().and_then(|addr| {
        addr.parse()
            .map_err(|_| {
                problems.push(ConfigProblem::new(
                    "server.metrics_listen",
                    format!("{addr:?} is not an address like 0.0.0.0:9090"),
                ))
            })
            .ok()
    });
    if let Some(metrics) = metrics_listen
        && shares_port(metrics, listen)
    {
        problems.push(ConfigProblem::new(
            "server.metrics_listen",
            format!("{metrics} takes server.listen's port ({listen}): give it a port of its own"),
        ));
    }
    ServerSettings {
        listen,
        max_body_bytes,
        max_body_bytes_total,
        max_body_bytes_per_key,
        max_connections,
        max_response_bytes,
        max_answer_bytes_total,
        client_send_buffer,
        drain,
        sse_keepalive,
        client_idle,
        metrics_listen,
        metrics_tokens_by_key: file.metrics_tokens_by_key.unwrap_or(true),
    }
}

/// A size in bytes, at least 1.
fn byte_count(
    value: Option<u64>,
    path: &str,
    default: usize,
    problems: &mut Vec<ConfigProblem>,
) -> usize {
    match value {
        None => default,
        Some(0) => {
            problems.push(ConfigProblem::new(path, "must be at least 1"));
            default
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

/// Whether two listeners would contend for one port: the same port on the
/// same address, or on any address and one that is the unspecified one
/// (`0.0.0.0` takes the port on every address). Port 0 is the kernel's to
/// pick, so it never contends.
pub(super) fn shares_port(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
