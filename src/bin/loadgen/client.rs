//! HTTP/1.1 client plumbing: opening a connection and one timed exchange.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
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

/// One request, its whole response body read; time to the first body byte.
pub(crate) async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
    started: Instant,
) -> Result<Exchange, String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut ttfb = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("response body: {e}"))?;
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
