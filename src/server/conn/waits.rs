//! What bounds a connection's waits: the drain deadline while a handler
//! works, the client idle limit while a head, a body's next bytes or the
//! client's taking of a response is awaited, and the pace a body must keep
//! once the connection cap needs room.

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
        self.passed_for(cx, began, self.after)
    }

    /// [`Self::passed`] for a wait of `wait` instead of the limit.
    pub(super) fn passed_for(
        &mut self,
        cx: &mut Context<'_>,
        began: Duration,
        wait: Duration,
    ) -> bool {
        if wait < self.after {
            // An earlier wait armed the timer for its whole limit, which
            // may be due after this shorter wait ends: brought forward.
            let waited = coarse_clock::monotonic().saturating_sub(began);
            if waited >= wait {
                return true;
            }
            let due = tokio::time::Instant::now() + (wait - waited);
            if self.timer.deadline() > due {
                self.timer.as_mut().reset(due);
            }
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let waited = coarse_clock::monotonic().saturating_sub(began);
            if waited >= wait {
                return true;
            }
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + (wait - waited));
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

/// How long after a response's write began to wait the client's
/// acknowledgements start to count as taken (a quarter of the idle limit
/// when that is shorter): by then its kernel has filled its receive
/// buffer from the send queue, over any but a very long round trip.
pub(super) const SEND_QUEUE_SETTLES: Duration = Duration::from_secs(1);

/// A TCP socket's send queue, asked how much of what was written its peer
/// has not acknowledged yet. The socket reporting room to write is no
/// measure of a client that reads slowly: the kernel grows a send buffer
/// to megabytes and reports room only once about half of what it holds has
/// drained, which at tens of kilobytes a second takes longer than any idle
/// limit. What the client acknowledged is what it took. Held by descriptor
/// so that it can be asked while the socket is being written.
#[derive(Clone, Copy)]
pub(super) struct SendQueue {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
}

#[cfg(target_os = "linux")]
impl SendQueue {
    pub(super) fn of(socket: &tokio::net::TcpStream) -> SendQueue {
        SendQueue {
            fd: std::os::fd::AsRawFd::as_raw_fd(socket),
        }
    }

    /// Bytes not acknowledged yet (Linux's `SIOCOUTQ`, which is
    /// `TIOCOUTQ`).
    pub(super) fn unacknowledged(self) -> Option<usize> {
        let mut queued: libc::c_int = 0;
        // SAFETY: the socket this was made of, open while it is written
        // to; the ioctl writes one int where it is told to.
        let done = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut queued) };
        (done == 0).then(|| usize::try_from(queued).ok()).flatten()
    }
}

/// Elsewhere the queue cannot be asked: only what the socket takes counts.
#[cfg(not(target_os = "linux"))]
impl SendQueue {
    pub(super) fn of(_: &tokio::net::TcpStream) -> SendQueue {
        SendQueue {}
    }

    pub(super) fn unacknowledged(self) -> Option<usize> {
        None
    }
}

/// The pace a request body must keep once the server is closing or making
/// room at its connection cap: on average [`BODY_PROGRESS`] bytes a second
/// since the body began, after a first [`RATE_FLOOR_GRACE`], and never cut
/// sooner than that grace after the pace began to count. Time is earned by
/// the body's bytes, so a client that sends in bursts (curl's
/// `--limit-rate` sends each second's share at once) keeps what it sent
/// ahead, even before the cap was reached; one that trickles cannot hold
/// its place at the cap.
pub(super) struct RateFloor {
    /// When the body began (its head was read).
    began: tokio::time::Instant,
    /// When the pace began to count.
    since: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// The time a body has before its first bytes are due at the floor: as
/// long as a head part-way in gets to come whole.
pub(super) const RATE_FLOOR_GRACE: Duration = Duration::from_secs(1);

impl RateFloor {
    pub(super) fn start(began: tokio::time::Instant) -> RateFloor {
        let since = tokio::time::Instant::now();
        RateFloor {
            began,
            since,
            timer: Box::pin(tokio::time::sleep_until(since + RATE_FLOOR_GRACE)),
        }
    }

    /// Whether the body, `received` bytes of it so far, has fallen behind
    /// the floor. If not, the timer wakes this task when it would.
    pub(super) fn behind(&mut self, cx: &mut Context<'_>, received: u64) -> bool {
        let due = (self.began + RATE_FLOOR_GRACE + Self::earned(received))
            .max(self.since + RATE_FLOOR_GRACE);
        if self.timer.deadline() != due {
            self.timer.as_mut().reset(due);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// The time `bytes` of body earn at the floor's pace.
    fn earned(bytes: u64) -> Duration {
        let nanos = u128::from(bytes) * 1_000_000_000 / BODY_PROGRESS as u128;
        // Past a day of credit the idle limit bounds the wait anyway.
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            .min(Duration::from_secs(86_400))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_earns_a_second_per_8_kib() {
        assert_eq!(RateFloor::earned(0), Duration::ZERO);
        assert_eq!(RateFloor::earned(8 * 1024), Duration::from_secs(1));
        assert_eq!(RateFloor::earned(64 * 1024), Duration::from_secs(8));
        assert_eq!(RateFloor::earned(4 * 1024), Duration::from_millis(500));
        assert_eq!(RateFloor::earned(u64::MAX), Duration::from_secs(86_400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_falls_behind_only_once_its_credit_is_spent() {
        let began = tokio::time::Instant::now();
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        // 16 KiB sent in a burst before the pace began: 3 s from the start.
        tokio::time::advance(Duration::from_millis(100)).await;
        let mut floor = RateFloor::start(began);
        assert!(!floor.behind(cx, 16 * 1024));
        tokio::time::advance(Duration::from_millis(2800)).await;
        assert!(!floor.behind(cx, 16 * 1024), "2.9 s into 3");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(floor.behind(cx, 16 * 1024), "3.1 s for 16 KiB");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_long_behind_still_gets_the_grace() {
        let began = tokio::time::Instant::now();
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        tokio::time::advance(Duration::from_secs(60)).await;
        let mut floor = RateFloor::start(began);
        assert!(!floor.behind(cx, 10));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!floor.behind(cx, 10));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(floor.behind(cx, 10));
    }

    /// A wait shorter than the limit is met on time even when an earlier
    /// wait armed the connection's one timer for the whole limit, later.
    #[tokio::test]
    async fn a_shorter_wait_brings_the_timer_forward() {
        let timer = tokio::time::sleep(Duration::from_secs(5));
        let mut timer = std::pin::pin!(timer);
        let mut limit = IdleLimit {
            after: Duration::from_secs(5),
            timer: timer.as_mut(),
        };
        let began = coarse_clock::monotonic();
        let started = std::time::Instant::now();
        let short = Duration::from_millis(200);
        std::future::poll_fn(|cx| {
            if limit.passed_for(cx, began, short) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "met after {:?}: at the earlier wait's time",
            started.elapsed()
        );
    }
}
