//! How a connection ends: a refused head answered, then every close the
//! same way, reading and dropping what the client still sends.

use super::waits::IdleLimit;
use super::{Connection, LARGE_READ_SIZE, READ_SIZE};
use crate::error::code;
use crate::error::{ErrorType, GatewayError};
use crate::proxy::headers::X_REQUEST_ID;
use crate::request_id::generate_id;
use crate::server::request_head::BadHead;
use crate::server::response_head::ConnectionHeader;
use crate::wire_fields::WireFields;
use axum::response::IntoResponse;
use bytes::BytesMut;
use http::Version;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// After a response that closes the connection (a request whose body was
/// not read, or any answer that said `connection: close`), how long what
/// the client still sends is read and dropped at most before the
/// connection closes: closing with unread bytes resets the connection,
/// and the client may lose the response it has not read yet. A client that sends its whole
/// body before it reads (a reverse proxy that buffers the request, as
/// nginx does) reads the answer only then: a 30 MiB body over a modest
/// link takes seconds. As nginx's `lingering_time`; no byte count bounds
/// it, what is read is dropped at once.
const LINGER: Duration = Duration::from_secs(30);
/// How long the lingering waits for the client's next bytes: one that has
/// stopped sending is closed on.
const LINGER_QUIET: Duration = Duration::from_secs(2);
/// How long the lingering lasts at most once the server is closing or
/// making room at its connection cap: a lingering connection keeps its
/// place under the cap, and a client that keeps its end open would hold
/// it for all of [`LINGER`]. Time enough to read an answer over a LAN or a
/// short round trip.
const LINGER_AT_CAP: Duration = Duration::from_millis(250);

impl Connection {
    /// Answers a head that cannot be served, then closes.
    pub(super) async fn refuse<C: Future<Output = ()>>(
        mut self,
        bad: BadHead,
        idle: Option<&mut IdleLimit<'_>>,
        closed: Pin<&mut C>,
    ) {
        // Not an access line: there is no method, path or key to record.
        let id = generate_id();
        tracing::info!(
            request_id = id.to_str().unwrap_or(""),
            client_addr = %self.client,
            status = bad.status.as_u16(),
            error = bad.message,
            "request head refused"
        );
        let error = if bad.status == http::StatusCode::SERVICE_UNAVAILABLE {
            GatewayError::server(bad.status, bad.message)
                .with_code(code::GATEWAY_OUT_OF_RESOURCES)
                .with_retry_after(Some(http::HeaderValue::from_static("1")))
        } else {
            GatewayError::new(bad.status, ErrorType::InvalidRequestError, bad.message)
        };
        let response = error.into_response();
        let mut fields = WireFields::default();
        fields.push(&X_REQUEST_ID, &id);
        if self
            .respond(
                response,
                &fields,
                false,
                Version::HTTP_11,
                ConnectionHeader::Close,
                idle,
            )
            .await
            .is_ok()
        {
            self.linger(closed).await;
        }
    }

    /// Closes the sending side, then reads and drops what the client still
    /// sends (the rest of a body not read, a request pipelined or a stray
    /// line break sent after the one answered) until it closes too, for a
    /// while: up to [`LINGER`] while bytes keep coming (each within
    /// [`LINGER_QUIET`] of the last), or [`LINGER_AT_CAP`] once `closed`
    /// (the server closing or making room at its connection cap) has come.
    /// Every close goes this way, not only one with bytes waiting: bytes
    /// that arrive after the socket is closed reset the connection too,
    /// and a reset throws away the end of the answer still unsent.
    pub(super) async fn linger<C: Future<Output = ()>>(mut self, closed: Pin<&mut C>) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        // A buffer grown for a large body is let go: most clients send
        // nothing more, and a small one waits for them. Reads grow again
        // once bytes come (the rest of a large body, read and dropped).
        self.read = BytesMut::new();
        let dropping = async {
            let mut room = READ_SIZE;
            loop {
                self.read.clear();
                let read = poll_fn(|cx| self.poll_read(cx, room));
                match tokio::time::timeout(LINGER_QUIET, read).await {
                    Ok(Ok(n)) if n > 0 => room = LARGE_READ_SIZE,
                    _ => break,
                }
            }
        };
        let cut_short = async {
            closed.await;
            tokio::time::sleep(LINGER_AT_CAP).await;
        };
        tokio::select! {
            _ = tokio::time::timeout(LINGER, dropping) => {}
            () = cut_short => {}
        }
    }
}
