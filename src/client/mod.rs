//! The gateway's HTTP/1.1 client to one provider: a pool of keep-alive
//! connections whose hyper connection state machine is driven by the request
//! that holds it, not by a task of its own.
//!
//! A pooled client that spawns a task per connection (hyper-util's, and
//! reqwest on top of it) hands every response frame across tasks through a
//! channel that holds one frame, so each stream event costs two wake-ups and
//! its own write to the client. Here the task relaying the response polls the
//! connection itself: every event already read from the socket is decoded in
//! one go, and the server writes them out together.

mod body;
mod pool;

pub use body::{OutgoingBody, PooledBody};

use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use pool::{Connection, Pool};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tower::ServiceExt;

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// Keep-alive connections unused this long are closed rather than reused:
/// providers' load balancers drop idle connections after a minute or two.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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
    #[error("timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("{}", describe(.0.as_ref()))]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error("{}", describe(.0))]
    Exchange(hyper::Error),
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
        Client::with_tls(origin, connect_timeout, TLS.clone())
    }

    /// Like [`Client::new`], trusting `roots` instead of the Mozilla roots
    /// (an origin behind a private certificate authority).
    pub fn with_roots(
        origin: http::Uri,
        connect_timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Client {
        Client::with_tls(origin, connect_timeout, tls_config(roots))
    }

    fn with_tls(origin: http::Uri, connect_timeout: Duration, tls: rustls::ClientConfig) -> Client {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Client {
            connector,
            origin,
            connect_timeout,
            pool: Arc::new(Pool::new(IDLE_TIMEOUT)),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set by the caller) and waits
    /// for the response head. A pooled connection that turns out to be closed
    /// before the request went out is replaced by another, transparently.
    pub async fn send(
        &self,
        mut request: http::Request<OutgoingBody>,
    ) -> Result<http::Response<PooledBody>, ClientError> {
        loop {
            let (mut conn, reused) = match self.pool.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting is rare and its state is large; inline
                // it would be allocated and moved with every request.
                None => (Box::pin(self.connect()).await?, false),
            };
            match exchange(&mut conn, request).await {
                Ok(head) => {
                    let pool = Arc::clone(&self.pool);
                    return Ok(head.map(|incoming| PooledBody::new(incoming, conn, pool)));
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(ClientError::Exchange(failed.into_error())),
                },
            }
        }
    }

    async fn connect(&self) -> Result<Box<Connection>, ClientError> {
        let connecting = async {
            let io: Io = self
                .connector
                .clone()
                .oneshot(self.origin.clone())
                .await
                .map_err(ClientError::Connect)?;
            let (sender, driver) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(ClientError::Exchange)?;
            Ok(Box::new(Connection::new(sender, driver)))
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::ConnectTimeout(self.connect_timeout)),
        }
    }

    /// Idle connections in the pool (diagnostics and tests).
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }
}

/// Queues `request` on `conn` and drives the connection until the response
/// head arrives.
async fn exchange(
    conn: &mut Connection,
    request: http::Request<OutgoingBody>,
) -> Result<
    http::Response<hyper::body::Incoming>,
    hyper::client::conn::TrySendError<http::Request<OutgoingBody>>,
> {
    let mut response = std::pin::pin!(conn.sender.try_send_request(request));
    poll_fn(|cx| {
        // The connection handing the head over wakes this task, which
        // takes it right below: held back, dropped once the head is here.
        let (polled, held) = crate::self_wake::hold(|| {
            // Closed or failed: the pending response learns why.
            if !conn.finished && Pin::new(&mut conn.driver).poll(cx).is_ready() {
                conn.finished = true;
            }
            response.as_mut().poll(cx)
        });
        if polled.is_pending() {
            held.release(cx);
        }
        polled
    })
    .await
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
