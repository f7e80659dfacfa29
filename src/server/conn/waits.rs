//! What bounds a connection's waits: the drain deadline while a handler
//! works, and the client idle limit while a head, a body's next bytes or
//! the client's taking of a response is awaited.

use crate::coarse_clock;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

/// The drain deadline, as a connection waiting on a handler sees it: one
/// plain load per poll, and one registration per connection for the wake.
pub(super) struct DeadlineWatch<'a, 'd> {
    pub(super) drain: &'d crate::drain::Drain,
    pub(super) notified: Pin<&'a mut tokio::sync::futures::Notified<'d>>,
    pub(super) registered: bool,
}

impl DeadlineWatch<'_, '_> {
    pub(super) fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.registered {
            // Keeps this task's waker (a task's waker stays valid while
            // the task lives); never polled again.
            let _ = self.notified.as_mut().poll(cx);
            self.registered = true;
        }
        self.drain.deadline_has_passed()
    }
}

/// What else ends a wait for a request head.
pub(super) struct Waiting<'a, 'b, C> {
    /// The server is closing.
    pub(super) closed: Pin<&'a mut C>,
    pub(super) idle: Option<&'a mut IdleLimit<'b>>,
}

/// The client idle limit (`server.client_idle_secs`) and the connection's
/// one timer for it, shared by the waits it bounds: for a complete request
/// head, for a request body's next bytes, and for the client to take the
/// next bytes of a response.
pub(super) struct IdleLimit<'a> {
    pub(super) after: Duration,
    pub(super) timer: Pin<&'a mut tokio::time::Sleep>,
}

impl IdleLimit<'_> {
    /// Whether a wait that began at `began` (on the coarse clock) has lasted
    /// the limit. If not, the timer is due when it will have (it may have
    /// been armed before this wait began) and wakes this task then.
    pub(super) fn passed(&mut self, cx: &mut Context<'_>, began: Duration) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let waited = coarse_clock::monotonic().saturating_sub(began);
            if waited >= self.after {
                return true;
            }
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + (self.after - waited));
        }
        false
    }

    /// Whether a body's wait, which began at `stalled_since` (now, if it
    /// had not begun), has lasted the limit; never without a limit.
    pub(super) fn stall_passed(
        limit: Option<&mut Self>,
        cx: &mut Context<'_>,
        stalled_since: &mut Option<Duration>,
    ) -> bool {
        let Some(limit) = limit else {
            return false;
        };
        let began = *stalled_since.get_or_insert_with(coarse_clock::monotonic);
        limit.passed(cx, began)
    }
}

/// Bytes that restart a body's idle wait, both ways: a client must send at
/// least this much of its request body (or the rest of it), and take this
/// much of its response (or the rest of what is ready), per idle limit, so
/// one that trickles a byte at a time cannot hold a connection for ever.
pub(super) const BODY_PROGRESS: usize = 8 * 1024;
