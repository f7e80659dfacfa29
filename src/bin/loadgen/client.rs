//! HTTP/1.1 client plumbing: hold mode's connections (hyper's), and load
//! mode's timed exchange over the gateway's own client, which parses a
//! response head without building a header map. The load generator shares
//! its core with the mock provider, and at 64 connections that core is the
//! full one: with hyper's client each header field a proxy's answer carries
//! (a custom name is an allocation and a hash) was paid there, and moved
//! every target's req/s.

use crate::target::Target;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use kimi_gateway::client::{Client, OutgoingBody};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The sending half of one keep-alive connection.
pub(crate) type Sender = SendRequest<Full<Bytes>>;

pub(crate) async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

pub(crate) struct Exchange {
    pub(crate) status: http::StatusCode,
    pub(crate) ttfb: Option<Duration>,
    pub(crate) bytes: u64,
}

/// Why an exchange gave no response.
pub(crate) enum Failure {
    /// No connection could be opened.
    Connect(String),
    /// The request or its response failed on an open connection.
    Exchange(String),
}

/// No answer in this long is a failure (a stuck target ends the run's
/// worker instead of hanging it).
const ANSWER_LIMIT: Duration = Duration::from_secs(600);

/// One request, its whole response body read; time to the first body byte.
pub(crate) async fn exchange(
    client: &Client,
    target: &Target,
    started: Instant,
) -> Result<Exchange, Failure> {
    let body = OutgoingBody::from(target.body.clone());
    let response = client
        .send(|head| target.write_head(head), body, started + ANSWER_LIMIT)
        .await
        .map_err(|e| {
            if e.is_connect() {
                Failure::Connect(format!("connect {}: {e}", target.addr))
            } else {
                Failure::Exchange(format!("request: {e}"))
            }
        })?;
    let status = response.status;
    let mut body = response.body;
    let mut ttfb = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Exchange(format!("response body: {e}")))?;
        if let Some(data) = frame.data_ref()
            && !data.is_empty()
        {
            ttfb.get_or_insert_with(|| started.elapsed());
            bytes += data.len() as u64;
        }
    }
    Ok(Exchange {
        status,
        ttfb,
        bytes,
    })
}
