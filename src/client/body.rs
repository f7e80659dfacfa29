//! The two bodies of an upstream exchange: the request body (the client's
//! bytes, possibly in three slices around a spliced model id) and the
//! response body, which drives its connection and returns it to the pool
//! once read to the end.

use super::pool::{Connection, Pool};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use smallvec::SmallVec;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A request body made of buffers sent in order (inline up to three: one
/// buffer, or three slices around a spliced model id).
pub struct OutgoingBody {
    parts: SmallVec<[Bytes; 3]>,
    next: usize,
}

impl OutgoingBody {
    pub fn new(parts: SmallVec<[Bytes; 3]>) -> Self {
        OutgoingBody { parts, next: 0 }
    }

    fn remaining(&self) -> u64 {
        self.parts[self.next..].iter().map(|p| p.len() as u64).sum()
    }
}

impl From<Bytes> for OutgoingBody {
    fn from(whole: Bytes) -> Self {
        OutgoingBody::new(smallvec::smallvec![whole])
    }
}

impl Body for OutgoingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        while this.next < this.parts.len() {
            let part = std::mem::take(&mut this.parts[this.next]);
            this.next += 1;
            if !part.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(part))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining())
    }
}

/// A response body that moves its own connection: each poll first takes a
/// frame already decoded, else lets the connection read and decode more.
pub struct PooledBody {
    incoming: Incoming,
    /// `None` once returned to the pool, or after the connection ended.
    conn: Option<Box<Connection>>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("holds_connection", &self.conn.is_some())
            .finish()
    }
}

impl PooledBody {
    pub(super) fn new(incoming: Incoming, conn: Box<Connection>, pool: Arc<Pool>) -> Self {
        PooledBody {
            incoming,
            conn: Some(conn),
            pool,
        }
    }

    /// Polls the connection's state machine; it stops on its own once the
    /// body channel holds a frame nobody has taken yet.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = self.conn.as_mut().filter(|c| !c.finished) {
            if Pin::new(&mut conn.driver).poll(cx).is_ready() {
                conn.finished = true;
            }
        }
    }

    fn next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Taking (or asking for) a frame first lets the connection decode the
        // next one in the same poll instead of after a wake-up.
        if let Poll::Ready(frame) = Pin::new(&mut self.incoming).poll_frame(cx) {
            return self.on_frame(frame);
        }
        self.drive(cx);
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(frame) => self.on_frame(frame),
            Poll::Pending => Poll::Pending,
        }
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<Frame<Bytes>, hyper::Error>>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &frame {
            None => {
                if let Some(conn) = self.conn.take() {
                    self.pool.checkin(conn);
                }
            }
            Some(Err(_)) => self.conn = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        // The wakes the connection and its body channel give each other
        // here are this task waking itself for what this call does (a frame
        // put and taken) or what the next call does (the connection is
        // driven on every call): dropped when a frame comes out.
        let (polled, held) = crate::self_wake::hold(|| this.next_frame(cx));
        if !matches!(polled, Poll::Ready(None | Some(Ok(_)))) {
            held.release(cx);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
