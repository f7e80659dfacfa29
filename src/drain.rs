//! Graceful drain: on SIGTERM/SIGINT readiness turns false and the listener
//! stops accepting; requests in flight get until the drain deadline, then the
//! streams still open end with an error event.

use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    /// Cancelled at the drain deadline; every open stream watches it.
    deadline_passed: CancellationToken,
}

impl Drain {
    /// Shutdown has begun: `/readyz` reports not ready from now on.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The drain deadline passed: open streams end now.
    pub fn end_streams(&self) {
        self.deadline_passed.cancel();
    }

    pub fn stream_token(&self) -> CancellationToken {
        self.deadline_passed.clone()
    }
}
