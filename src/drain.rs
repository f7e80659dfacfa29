//! Graceful drain: on SIGTERM/SIGINT readiness turns false and the listener
//! stops accepting; requests in flight get until the drain deadline, then the
//! streams still open end with an error event and requests not yet answered
//! are answered 503 (`gateway_shutdown`).

use crate::error::GatewayError;
use crate::error::code;
use http::StatusCode;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    /// Cancelled at the drain deadline; every open stream watches it.
    deadline_passed: CancellationToken,
    /// Set at the drain deadline, before `deadline_notify` wakes the
    /// connections waiting on a handler: they read it on every poll (a
    /// plain load) and register with the `Notify` once per connection,
    /// where watching the token would take its lock on every poll.
    ended: AtomicBool,
    deadline_notify: Notify,
}

impl Drain {
    /// Shutdown has begun: `/readyz` reports not ready from now on.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The drain deadline passed: open streams end now, and requests not
    /// yet answered are answered 503.
    pub fn end_streams(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.deadline_passed.cancel();
        self.deadline_notify.notify_waiters();
    }

    /// Whether the drain deadline has passed.
    pub fn deadline_has_passed(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// Wakes the task that polls it when the deadline passes. Poll it once
    /// (it keeps that task's waker), then check [`Drain::deadline_has_passed`]:
    /// a deadline that passed in between is seen there.
    pub fn deadline_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.deadline_notify.notified()
    }

    pub fn stream_token(&self) -> CancellationToken {
        self.deadline_passed.clone()
    }
}

/// The answer to a request its handler had not answered by the drain
/// deadline (503, `gateway_shutdown`): another replica can serve it.
pub fn unanswered_at_deadline() -> GatewayError {
    GatewayError::server(
        StatusCode::SERVICE_UNAVAILABLE,
        "the gateway is shutting down; the request was not answered before the drain deadline",
    )
    .with_code(code::GATEWAY_SHUTDOWN)
}

/// The error a stream still open at the drain deadline ends with: its
/// error event, or, when the client had stopped reading and the event
/// could not be written, its access line's error.
pub fn stream_ended_at_deadline() -> GatewayError {
    GatewayError::server(
        StatusCode::SERVICE_UNAVAILABLE,
        "the gateway is shutting down; the stream was ended early",
    )
    .with_code(code::GATEWAY_SHUTDOWN)
}
