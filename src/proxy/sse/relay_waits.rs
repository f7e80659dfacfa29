//! A stream relay's waits besides the provider's next bytes: its idle timer,
//! its keep-alive timer and the drain's cancellation, pinned together in
//! one allocation rather than three boxed on their own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pin_project_lite::pin_project! {
    pub struct RelayWaits {
        #[pin]
        idle: Sleep,
        // With its interval, when the relay sends keep-alive comments.
        keepalive_every: Option<Duration>,
        #[pin]
        keepalive: Option<Sleep>,
        #[pin]
        shutdown: WaitForCancellationFutureOwned,
    }
}

impl RelayWaits {
    /// The idle timer armed for `idle_due`, the keep-alive timer (every
    /// `keepalive`) for one interval after `now`.
    pub fn new(
        idle_due: Instant,
        keepalive: Option<Duration>,
        now: Instant,
        shutdown: CancellationToken,
    ) -> Pin<Box<Self>> {
        Box::pin(RelayWaits {
            idle: tokio::time::sleep_until(idle_due),
            keepalive_every: keepalive,
            keepalive: keepalive.map(|every| tokio::time::sleep_until(now + every)),
            shutdown: shutdown.cancelled_owned(),
        })
    }

    pub fn idle(self: Pin<&mut Self>) -> Pin<&mut Sleep> {
        self.project().idle
    }

    /// The keep-alive interval and its timer, when there is one.
    pub fn keepalive(self: Pin<&mut Self>) -> Option<(Duration, Pin<&mut Sleep>)> {
        let this = self.project();
        Some(((*this.keepalive_every)?, this.keepalive.as_pin_mut()?))
    }

    /// `Ready` once the drain has cancelled open streams.
    pub fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().shutdown.poll(cx)
    }
}
