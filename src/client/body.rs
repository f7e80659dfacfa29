//! The two bodies of an upstream exchange: the request body (the client's
//! bytes, possibly in three slices around a spliced model id) and the
//! response body, which reads its connection and returns it to the pool
//! once read to the end.

use super::UpstreamError;
use super::conn::Connection;
use super::framing::{Decoded, Framing};
use super::pool::Pool;
use crate::answer_budget::AnswerHold;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A request body made of buffers sent in order (inline up to three: one
/// buffer, or three slices around a spliced model id), all written with
/// the request head in one vectored write.
pub struct OutgoingBody {
    parts: SmallVec<[Bytes; 3]>,
}

impl OutgoingBody {
    pub fn new(parts: SmallVec<[Bytes; 3]>) -> Self {
        OutgoingBody { parts }
    }

    /// The buffers, in order.
    pub fn parts(&self) -> impl Iterator<Item = &Bytes> {
        self.parts.iter().filter(|p| !p.is_empty())
    }

    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for OutgoingBody {
    fn from(whole: Bytes) -> Self {
        OutgoingBody::new(smallvec::smallvec![whole])
    }
}

/// A response body read straight off its connection: each poll decodes the
/// next frame from the bytes already read, and reads more only when there
/// are none. The connection goes back to the pool once the body has ended
/// and the provider keeps it open; a body dropped before its end closes it.
pub struct PooledBody {
    /// `None` once returned to the pool, or after the connection ended.
    conn: Option<Box<Connection>>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("framing", &self.framing)
            .field("holds_connection", &self.conn.is_some())
            .finish()
    }
}

impl PooledBody {
    pub(super) fn new(
        conn: Box<Connection>,
        framing: Framing,
        keep_alive: bool,
        pool: Arc<Pool>,
    ) -> Self {
        PooledBody {
            conn: Some(conn),
            framing,
            keep_alive,
            pool,
        }
    }

    /// The body has ended: the connection is kept only if the provider
    /// allows it and sent nothing past this response.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.read.is_empty()
        {
            self.pool.checkin(conn);
        }
    }

    fn fail(&mut self, err: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(err)))
    }

    /// The whole body in one buffer (a plain answer). A body that came in
    /// one frame, as most do, is that frame: `http_body_util`'s `collect`
    /// queued every frame in a `VecDeque`, an allocation per answer even
    /// for one frame. Frames after the first are copied into one buffer.
    /// A body over `limit` bytes is an error (declared or as it arrives):
    /// a provider that sends without end does not grow the gateway. Past
    /// 16 KiB the answer's room is claimed from `hold` before more is
    /// kept: its declared length, or `limit` when none was declared. Not
    /// whole by `deadline` is `BodyTimedOut`; the time spent waiting for
    /// room is not counted against it (the provider had answered), but
    /// no room by it is `NoRoom`.
    pub async fn into_bytes(
        mut self,
        limit: usize,
        hold: &mut AnswerHold<'_>,
        mut deadline: Pin<&mut tokio::time::Sleep>,
    ) -> Result<Bytes, UpstreamError> {
        if self.size_hint().lower() > limit as u64 {
            return Err(UpstreamError::BodyTooLarge(limit));
        }
        let most = self.size_hint().exact().unwrap_or(limit as u64);
        let mut whole: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut read = 0usize;
        loop {
            let frame = std::future::poll_fn(|cx| match Pin::new(&mut self).poll_frame(cx) {
                // Outside the budget: a body flooding in spends it.
                Poll::Pending => crate::unbudgeted::poll(cx, |cx| deadline.as_mut().poll(cx))
                    .map(|()| Some(Err(UpstreamError::BodyTimedOut))),
                ready => ready,
            })
            .await;
            let Some(frame) = frame else { break };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            read = read.saturating_add(data.len());
            if read > limit {
                return Err(UpstreamError::BodyTooLarge(limit));
            }
            // Claimed before it is kept; while it waits for room, the
            // rest waits unread in the provider's connection. Boxed: the
            // wait is rare, and its state would enlarge every answer's read.
            if !hold.covers(read, most) {
                let began = tokio::time::Instant::now();
                let room = Box::pin(hold.wait_for_room(most));
                if tokio::time::timeout_at(deadline.deadline(), room)
                    .await
                    .is_err()
                {
                    return Err(UpstreamError::NoRoom);
                }
                let later = deadline.deadline() + began.elapsed();
                deadline.as_mut().reset(later);
            }
            if let Some(joined) = &mut joined {
                joined.extend_from_slice(&data);
            } else if let Some(earlier) = whole.take() {
                let mut both = BytesMut::with_capacity(earlier.len() + data.len());
                both.extend_from_slice(&earlier);
                both.extend_from_slice(&data);
                joined = Some(both);
            } else {
                whole = Some(data);
            }
        }
        Ok(match joined {
            Some(joined) => joined.freeze(),
            None => whole.unwrap_or_default(),
        })
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.decode(&mut conn.read) {
                Ok(Decoded::Frame(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Err(err) => return this.fail(err),
                Ok(Decoded::NeedMore) => {}
            }
            let room = Connection::read_size(this.framing.remaining());
            match conn.poll_read(cx, room) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => match this.framing.at_close() {
                    Ok(_) => {
                        // Ended by the close: nothing to reuse.
                        this.conn = None;
                        this.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Err(err) => return this.fail(err),
                },
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => return this.fail(err),
            }
        }
    }

    /// Only once the end has been polled: a reader that trusted an empty
    /// body's hint and never polled would drop the connection instead of
    /// returning it to the pool.
    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
