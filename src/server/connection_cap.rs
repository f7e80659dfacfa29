//! `server.max_connections`: the most client connections served at once.
//! Every connection is a descriptor, and a stream is two (the client's and
//! the provider's); without a cap, clients that open connections and leave
//! them idle use up the descriptors the gateway needs to reach providers.
//!
//! At the cap the gateway stops accepting: the connection just accepted
//! waits with its request unread, and the ones after it in the listen
//! backlog (the kernel has completed their handshake); they are served as
//! others close. To make room, every connection open then is
//! told to close once it is idle: idle keep-alive connections close at
//! once, busy ones after their response (with `Connection: close`), as
//! nginx closes idle keep-alive connections when it runs short. What is
//! neither (a connection just accepted, a head or body still arriving) has
//! a short grace to go on, then closes too (`conn/`), so slow clients
//! cannot hold the cap.

use prometheus::IntGauge;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections are told to close at most this often while the cap holds,
/// so a gateway at its cap does not churn every connection on each accept.
const SHED_INTERVAL: Duration = Duration::from_secs(1);
/// The cap reached again after this long is logged again.
const QUIET_AFTER: Duration = Duration::from_secs(60);

pub(super) struct ConnectionCap {
    permits: Arc<Semaphore>,
    max: usize,
    /// Cancelled when the server stops.
    closing: CancellationToken,
    /// What connections accepted now are given: cancelled (telling them to
    /// close when idle) when the cap is reached, then replaced.
    close_when_idle: CancellationToken,
    last_shed: Option<Instant>,
    open: IntGauge,
}

/// A connection's place under the cap, given back when it closes.
pub(super) struct OpenConnection {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl ConnectionCap {
    pub(super) fn new(
        max: usize,
        closing: &CancellationToken,
        metrics: &crate::metrics::Metrics,
    ) -> ConnectionCap {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        metrics
            .client_connections_max
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        ConnectionCap {
            permits: Arc::new(Semaphore::new(max)),
            max,
            closing: closing.clone(),
            close_when_idle: closing.child_token(),
            last_shed: None,
            open: metrics.client_connections.clone(),
        }
    }

    /// Room for one more connection: at once under the cap, else once one
    /// closes. Meanwhile the open connections are told to close when idle,
    /// again every [`SHED_INTERVAL`]: connections accepted since the last
    /// time may have filled the cap and gone idle.
    pub(super) async fn room(&mut self) -> OpenConnection {
        let permit = loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                break permit;
            }
            let next_shed = self.shed();
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
                    break permit.expect("the semaphore is never closed");
                }
                () = tokio::time::sleep_until(next_shed) => {}
            }
        };
        self.open.inc();
        OpenConnection {
            _permit: permit,
            open: self.open.clone(),
        }
    }

    /// The token a connection accepted now watches: cancelled when the
    /// server stops or the cap asks it to close once idle.
    pub(super) fn close_token(&self) -> CancellationToken {
        self.close_when_idle.clone()
    }

    /// Tells the open connections to close once idle, unless they were told
    /// less than [`SHED_INTERVAL`] ago; when they may be told next.
    fn shed(&mut self) -> tokio::time::Instant {
        let now = Instant::now();
        if let Some(last) = self
            .last_shed
            .filter(|last| now.duration_since(*last) < SHED_INTERVAL)
        {
            return (last + SHED_INTERVAL).into();
        }
        // Once per stretch at the cap, not once a second through it.
        if self
            .last_shed
            .is_none_or(|last| now.duration_since(last) > QUIET_AFTER)
        {
            tracing::warn!(
                max_connections = self.max,
                "client connections at server.max_connections: new ones wait to be accepted, \
                 and the open ones close once idle"
            );
        }
        self.last_shed = Some(now);
        self.close_when_idle.cancel();
        self.close_when_idle = self.closing.child_token();
        (now + SHED_INTERVAL).into()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}
