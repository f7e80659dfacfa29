//! The gateway's HTTP/1.1 client to one provider: a pool of keep-alive
//! connections, each read and written by the request that holds it, not by
//! a task of its own.
//!
//! A pooled client that spawns a task per connection (hyper-util's, and
//! reqwest on top of it) hands every response frame across tasks through a
//! channel that holds one frame, so each stream event costs two wake-ups and
//! its own write to the client. hyper's connection API driven in place
//! avoids the task but still passes the request, the response head and
//! every body frame through channels between the caller and its state
//! machine. The exchange here is fixed (one `POST` with a body of known
//! length, one response), so the connection is this module's own: the
//! request goes out in one write (with the response read alongside when
//! the socket does not take it at once), the head is parsed with
//! `httparse`, and body frames are slices of the bytes as read
//! (`framing.rs`).

mod body;
mod chunk_lines;
mod conn;
mod framing;
mod head;
mod pool;

pub use body::{OutgoingBody, PooledBody};
pub use chunk_lines::SIZE_OVER_U64;
pub use framing::{Decoded, Framing};
pub use head::Headers;
pub use pool::close_idle_everywhere;

use conn::Connection;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use pool::Pool;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tower::ServiceExt;

/// What the connector gives: TCP, or TLS over it.
type ProviderStream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// Keep-alive connections unused this long are closed rather than reused:
/// providers' load balancers drop idle connections after a minute or two.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A pooled connection reset or closed this soon after it was taken out,
/// with not a byte of answer, was closed by the provider before the
/// request came (its close crossed the request on the wire): the request
/// is sent once more, on a new connection. Longer, and the provider may
/// have begun to work on it.
pub const STALE_WITHIN: Duration = Duration::from_secs(1);

/// TLS to providers: the Mozilla roots compiled in (a `scratch` image has
/// no system store), HTTP/1.1 only.
static TLS: LazyLock<rustls::ClientConfig> = LazyLock::new(|| {
    tls_config(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
});

fn tls_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    // No ALPN list: hyper-rustls sets it, and with HTTP/1.1 alone offers
    // none, which servers answer with HTTP/1.1.
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Why an exchange produced no response head.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Shown to a tenth of a second: the deadline that cut the connect
    /// short may be the request's, read to the nanosecond.
    #[error("timed out after {0:.1?}")]
    ConnectTimeout(Duration),
    #[error("{}", describe(.0.as_ref()))]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Exchange(UpstreamError),
}

impl ClientError {
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            ClientError::Connect(_) | ClientError::ConnectTimeout(_)
        )
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::ConnectTimeout(_))
    }

    /// A connection the gateway could not open for want of a descriptor
    /// (its open-file limit, or the system's).
    pub fn is_out_of_descriptors(&self) -> bool {
        self.os_error()
            .is_some_and(|code| matches!(code, libc::EMFILE | libc::ENFILE))
    }

    /// A connection the gateway could not open for lack of its own
    /// resources (its open-file limit, the system's, socket buffers or
    /// memory): nothing about the provider.
    pub fn is_local_exhaustion(&self) -> bool {
        self.os_error().is_some_and(|code| {
            matches!(
                code,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            )
        })
    }

    /// The system's error code behind a failed connect, if there is one.
    fn os_error(&self) -> Option<i32> {
        let ClientError::Connect(err) = self else {
            return None;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
        while let Some(err) = cause {
            if let Some(code) = err
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
            {
                return Some(code);
            }
            cause = err.source();
        }
        None
    }

    /// The exchange's deadline passed (connecting included) before the
    /// response head came.
    pub fn is_past_deadline(&self) -> bool {
        matches!(self, ClientError::Exchange(UpstreamError::TimedOut))
    }
}

/// What went wrong on an open connection, before or after the head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before the response head")]
    ClosedBeforeHead,
    #[error("connection closed before the response body was complete")]
    BodyIncomplete,
    #[error("response head over {} bytes or {} headers", head::MAX_HEAD_BYTES, 100)]
    HeadTooLarge,
    #[error("invalid response head: {0}")]
    InvalidHead(String),
    #[error("invalid response body: {0}")]
    InvalidBody(&'static str),
    #[error("response body over {0} bytes")]
    BodyTooLarge(usize),
    #[error("no response head by the deadline")]
    TimedOut,
    #[error("no complete response body by the deadline")]
    BodyTimedOut,
    #[error("no room to hold the response body by the deadline")]
    NoRoom,
}

/// A provider's response: its head as received, and its body.
#[derive(Debug)]
pub struct Response {
    pub status: http::StatusCode,
    pub headers: Headers,
    pub body: PooledBody,
}

/// A client for one origin (`scheme://host:port`), cheap to share.
#[derive(Clone)]
pub struct Client {
    connector: HttpsConnector<HttpConnector>,
    origin: http::Uri,
    connect_timeout: Duration,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("origin", &self.origin)
            .field("idle", &self.pool.idle_count())
            .finish()
    }
}

impl Client {
    /// `origin` must be an absolute `http` or `https` URI.
    pub fn new(origin: http::Uri, connect_timeout: Duration) -> Client {
        Client::with_tls(origin, connect_timeout, TLS.clone(), None)
    }

    /// Like [`Client::new`], its connections asking the kernel for a
    /// receive buffer of `bytes` (`SO_RCVBUF`, set before connecting, so
    /// the window it offers fits it) instead of letting it grow one: a
    /// connection the gateway stops reading (its client is slow, or its
    /// answer waits for room) holds at most about twice that queued in the
    /// kernel, where a grown one held megabytes.
    pub fn with_receive_buffer(
        origin: http::Uri,
        connect_timeout: Duration,
        bytes: Option<usize>,
    ) -> Client {
        Client::with_tls(origin, connect_timeout, TLS.clone(), bytes)
    }

    /// Like [`Client::new`], trusting `roots` instead of the Mozilla roots
    /// (an origin behind a private certificate authority).
    pub fn with_roots(
        origin: http::Uri,
        connect_timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Client {
        Client::with_tls(origin, connect_timeout, tls_config(roots), None)
    }

    fn with_tls(
        origin: http::Uri,
        connect_timeout: Duration,
        tls: rustls::ClientConfig,
        receive_buffer: Option<usize>,
    ) -> Client {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_recv_buffer_size(receive_buffer);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Client {
            connector,
            origin,
            connect_timeout,
            pool: Pool::shared(IDLE_TIMEOUT),
        }
    }

    /// The same client with idle connections kept `timeout` instead of
    /// [`IDLE_TIMEOUT`] (tests of the pool's upkeep).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Client {
        self.pool = Pool::shared(timeout);
        self
    }

    /// Sends a request and waits for the response head. `write_head` writes
    /// the whole request head (see [`request_line`] and [`header_line`]:
    /// origin-form target, `Host` and `Content-Length` included, then the
    /// blank line) into a buffer the connection keeps, so a head built
    /// once per provider key is copied, not rebuilt. Pooled connections the
    /// provider has closed are noticed, and passed over, before the request
    /// is written; one whose close the gateway had not seen yet (it came
    /// just before the request did) and which is reset or closed with not
    /// a byte of answer within [`STALE_WITHIN`] has the request sent once
    /// more on a new connection; otherwise, once written, a request is
    /// never sent again. The head must come by `deadline` (connecting
    /// included); the connection is closed if it does not.
    pub async fn send(
        &self,
        write_head: impl Fn(&mut Vec<u8>),
        body: OutgoingBody,
        deadline: tokio::time::Instant,
    ) -> Result<Response, ClientError> {
        let (mut conn, mut reused_at) = match self.pool.checkout() {
            Some((conn, at)) => (conn, Some(at)),
            None => (self.connect_by(deadline).await?, None),
        };
        loop {
            let exchanged = conn.exchange(&write_head, &body, deadline).await;
            if let Err(err) = &exchanged
                && reused_at.is_some_and(|at| stale(&conn, at, err))
            {
                tracing::debug!(origin = %self.origin, "pooled connection closed by the provider: request sent on a new one");
                conn = self.connect_by(deadline).await?;
                reused_at = None;
                continue;
            }
            let head = exchanged.map_err(ClientError::Exchange)?;
            return Ok(Response {
                status: head.status,
                headers: head.headers,
                body: PooledBody::new(conn, head.framing, head.keep_alive, self.pool.clone()),
            });
        }
    }

    /// A new connection, by `deadline`.
    async fn connect_by(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<Box<Connection>, ClientError> {
        let began = tokio::time::Instant::now();
        // Boxed: connecting is rare and its state is large; inline it
        // would be allocated and moved with every request.
        match tokio::time::timeout_at(deadline, Box::pin(self.connect())).await {
            Ok(connected) => connected,
            // The request's deadline came first, while connecting: said as
            // a connect that timed out, which it is.
            Err(_) => Err(ClientError::ConnectTimeout(began.elapsed())),
        }
    }

    /// A new connection. Out of descriptors, the idle connections of every
    /// provider are closed and the connection tried once more (also when
    /// another request closed them a moment before).
    async fn connect(&self) -> Result<Box<Connection>, ClientError> {
        match self.connect_once().await {
            Err(err) if err.is_out_of_descriptors() => {
                let closed = pool::close_idle_everywhere();
                if closed > 0 {
                    tracing::warn!(
                        closed,
                        "out of descriptors: closed the idle provider connections to open one"
                    );
                }
                self.connect_once().await
            }
            result => result,
        }
    }

    async fn connect_once(&self) -> Result<Box<Connection>, ClientError> {
        let connecting = self.connector.clone().oneshot(self.origin.clone());
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(io)) => Ok(Box::new(Connection::new(io))),
            Ok(Err(err)) => Err(ClientError::Connect(err)),
            Err(_) => Err(ClientError::ConnectTimeout(self.connect_timeout)),
        }
    }

    /// Idle connections in the pool (diagnostics and tests).
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }
}

/// Whether `err`, which ended an exchange on `conn`, a pooled connection
/// taken at `taken` (on the coarse clock), shows the provider had closed
/// it before the request came: see [`STALE_WITHIN`].
fn stale(conn: &Connection, taken: Duration, err: &UpstreamError) -> bool {
    crate::coarse_clock::monotonic().saturating_sub(taken) < STALE_WITHIN
        && conn.closed_before_the_request(err)
}

/// Appends `METHOD target HTTP/1.1` and its line end.
pub fn request_line(out: &mut Vec<u8>, method: &http::Method, target: &str) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Appends `name: value` and its line end. Both come from `http`'s checked
/// types (or digits), which cannot hold a line break.
pub fn header_line(out: &mut Vec<u8>, name: &http::HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// An error and its causes in one line.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_timeout_reads_in_tenths_of_a_second() {
        let cut_by_the_request = ClientError::ConnectTimeout(Duration::from_nanos(3_001_555_431));
        assert_eq!(cut_by_the_request.to_string(), "timed out after 3.0s");
        let configured = ClientError::ConnectTimeout(Duration::from_secs(2));
        assert_eq!(configured.to_string(), "timed out after 2.0s");
    }
}
