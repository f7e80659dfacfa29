//! Holds back a response's end until its Redis-held limits are settled.
//! A client that sends its next request the moment the last one ended,
//! to any replica, must find the last one's concurrency lease released and
//! its tokens moved to the real usage; settled in the background after the
//! end, the next request could meet the lease (a spurious 429 at
//! `concurrent_requests = 1`). So the body's last frame waits for the
//! settlement call: a plain answer's only frame; for a stream, the frame
//! that carries `[DONE]` (clients may close the connection on it, without
//! reading the chunked body's end), else the end itself.

use crate::limits::Settlement;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Wraps `response`'s body so that it ends only after `settlement` is
/// settled. A body dropped before its end (the client left) settles in the
/// background, as the settlement does when dropped.
pub fn settle_before_end(response: Response, settlement: Settlement) -> Response {
    response.map(|inner| {
        Body::new(SettledAtEnd {
            inner,
            state: State::Running(Some(settlement)),
        })
    })
}

struct SettledAtEnd {
    inner: Body,
    state: State,
}

type Settling = Pin<Box<dyn Future<Output = ()> + Send>>;

enum State {
    /// The body is still being sent; the settlement waits for its end.
    Running(Option<Settlement>),
    /// The body has ended: its last frame (`None` for the end alone) goes
    /// out once the settlement call is done.
    Settling(Settling, Option<Frame<Bytes>>),
    Done,
}

impl SettledAtEnd {
    fn stream_done(&self) -> bool {
        matches!(&self.state, State::Running(Some(settlement)) if settlement.stream_done())
    }

    fn start_settling(&mut self, last: Option<Frame<Bytes>>) {
        let State::Running(settlement) = &mut self.state else {
            return;
        };
        self.state = match settlement.take() {
            Some(settlement) => State::Settling(Box::pin(settlement.settle_now()), last),
            None => State::Done,
        };
    }
}

impl http_body::Body for SettledAtEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Running(_) => {}
                State::Settling(settling, last) => {
                    ready!(settling.as_mut().poll(cx));
                    let last = last.take();
                    this.state = State::Done;
                    return Poll::Ready(last.map(Ok));
                }
                State::Done => return Pin::new(&mut this.inner).poll_frame(cx),
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                // The last frame of a body that knows its end (a plain
                // answer: a client reading a `content-length` is done when
                // it has it), or a stream's frame with `[DONE]`: held
                // until settled.
                Some(Ok(frame)) if this.inner.is_end_stream() || this.stream_done() => {
                    this.start_settling(Some(frame));
                }
                None => this.start_settling(None),
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Running(_) | State::Done => self.inner.size_hint(),
            State::Settling(_, last) => {
                let left = last
                    .as_ref()
                    .and_then(|frame| frame.data_ref())
                    .map_or(0, |data| data.len() as u64);
                SizeHint::with_exact(left)
            }
        }
    }
}
