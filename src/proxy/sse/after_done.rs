//! After `[DONE]`: the client's response ends at once, and whatever the
//! provider still sends is read in the background, bounded, and dropped.

use super::{SseRelay, Upstream};
use crate::error::GatewayError;
use crate::unbudgeted;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

impl SseRelay {
    /// After `[DONE]`: the client's response ends now, whenever the
    /// provider ends its body (a provider that keeps it open must hold
    /// neither the client, nor the limits' slots, nor the access line).
    /// Only the LF owed to a `[DONE]` event cut after its last CR is still
    /// relayed; whatever else follows is read in the background and
    /// dropped, so the stream the client gets does not depend on how the
    /// provider's writes fell into reads.
    pub(super) fn poll_after_done(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, GatewayError>>> {
        if self.lf_owed {
            if let Some(rest) = self.aligner.take_rest() {
                self.lf_owed = false;
                if rest.starts_with(b"\n") {
                    self.after_done_read(Poll::Pending);
                    return Poll::Ready(Some(Ok(Bytes::from_static(b"\n"))));
                }
            }
        }
        loop {
            let next = match self.held.take() {
                Some(item) => Poll::Ready(item),
                None => self.upstream.as_mut().poll_next(cx),
            };
            match next {
                Poll::Ready(Some(Ok(chunk))) if self.lf_owed => {
                    if chunk.is_empty() {
                        continue;
                    }
                    self.lf_owed = false;
                    if chunk.starts_with(b"\n") {
                        self.after_done_read(Poll::Pending);
                        return Poll::Ready(Some(Ok(Bytes::from_static(b"\n"))));
                    }
                    self.after_done_read(Poll::Pending);
                }
                Poll::Pending if self.lf_owed => {
                    // Neither the drain nor the idle limit turns waiting
                    // for it into an error: the answer is whole.
                    let shutdown = self.waits.as_mut().poll_shutdown(cx).is_ready();
                    if shutdown
                        || (unbudgeted::poll(cx, |cx| self.waits.as_mut().idle().poll(cx))
                            .is_ready()
                            && !self.rearm_idle_timer(cx))
                    {
                        self.lf_owed = false;
                        self.after_done_read(Poll::Pending);
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
                next => self.after_done_read(next),
            }
            return Poll::Ready(None);
        }
    }

    /// What the provider sent after `[DONE]` (`next`, its last poll): at
    /// its end, nothing more to do (a body read to its end gave its
    /// connection back to the pool); otherwise the rest is read in the
    /// background (see [`read_rest`]) and the relay's upstream is an
    /// empty stream from then on.
    fn after_done_read(&mut self, next: Poll<Option<Result<Bytes, crate::client::UpstreamError>>>) {
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            self.upstream = Box::pin(futures_util::stream::empty());
            return;
        }
        let rest = std::mem::replace(&mut self.upstream, Box::pin(futures_util::stream::empty()));
        read_rest_in_background(rest);
    }
}

/// After `[DONE]`, how long the provider's body may take to end, and how
/// much of it is read, before its connection is closed instead of reused.
pub(super) const REST_WAIT: Duration = Duration::from_secs(2);
const REST_BYTES: usize = 64 * 1024;
/// Provider bodies read after `[DONE]` at once, at most: each holds a
/// connection to the provider, and a new request meanwhile opens another;
/// past this many, a body still open is closed instead.
pub(super) const REST_READS: usize = 256;

/// Provider bodies being read after `[DONE]` (see [`REST_READS`]).
pub(super) static REST_READING: AtomicUsize = AtomicUsize::new(0);

/// Reads `rest` to its end in the background, within [`REST_READS`];
/// dropped (its connection closed) when that many are already read.
pub(super) fn read_rest_in_background(rest: Upstream) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    /// One body counted in [`REST_READING`] until dropped, with its task
    /// (also when a runtime shutting down drops the task unfinished).
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            REST_READING.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let counted = Counted;
    if REST_READING.fetch_add(1, Ordering::AcqRel) >= REST_READS {
        return;
    }
    runtime.spawn(async move {
        let _counted = counted;
        read_rest(rest).await;
    });
}

/// Reads what a provider sends after `[DONE]` (normally only its body's
/// end) and drops it: a body read to its end gives its connection back to
/// the pool, one dropped before closes it.
async fn read_rest(mut upstream: Upstream) {
    use futures_util::StreamExt;
    let mut read = 0;
    let _ = tokio::time::timeout(REST_WAIT, async {
        while let Some(Ok(bytes)) = upstream.next().await {
            read += bytes.len();
            if read > REST_BYTES {
                return;
            }
        }
    })
    .await;
}
