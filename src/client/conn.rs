//! One HTTP/1.1 connection to a provider, driven by whoever holds it: the
//! request head and body go out in one vectored write, the response head is
//! parsed out of the read buffer, and the body is decoded from that same
//! buffer by [`super::PooledBody`]. No channels and no task of its own: a
//! request, its response head and every body frame cost no wake-up beyond
//! the socket's own.

use super::UpstreamError;
use super::head::{self, ResponseHead};
use super::{HyperIo, OutgoingBody};
use bytes::BytesMut;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use smallvec::SmallVec;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Room made in the read buffer before each read. A provider's response
/// head and a small body fit; a stream's events are read as they come.
const READ_SIZE: usize = 8 * 1024;
/// Larger reads while a body of known length is still to come.
const LARGE_READ_SIZE: usize = 64 * 1024;

/// The socket: plain TCP as it is (no adapter in between), or TLS through
/// hyper-rustls' stream, boxed (its session state is ~1 KB, which a plain
/// connection need not carry).
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TokioIo<HyperIo>>),
}

impl From<HyperIo> for Io {
    fn from(io: HyperIo) -> Io {
        match io {
            MaybeHttpsStream::Http(tcp) => Io::Plain(tcp.into_inner()),
            tls => Io::Tls(Box::new(TokioIo::new(tls))),
        }
    }
}

pub struct Connection {
    io: Io,
    /// Bytes read and not yet handed out: a response head, body frames are
    /// split off it.
    pub(super) read: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    head: Vec<u8>,
    /// The exchange's deadline, made on the connection's first exchange
    /// and moved to each next one's: moving a pending timer later is one
    /// atomic update, where a timer per request is registered with the
    /// runtime's timer wheel and removed again (~1k instructions).
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    pub fn new(io: impl Into<Io>) -> Self {
        Connection {
            io: io.into(),
            read: BytesMut::new(),
            head: Vec::new(),
            deadline: None,
        }
    }

    /// Sends the head `write_head` writes and `body`, and reads up to the
    /// final response head (interim 1xx heads are skipped), by `deadline`
    /// ([`UpstreamError::TimedOut`] after it).
    pub async fn exchange(
        &mut self,
        write_head: impl FnOnce(&mut Vec<u8>),
        body: OutgoingBody,
        deadline: Instant,
    ) -> Result<ResponseHead, UpstreamError> {
        match &mut self.deadline {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.head.clear();
        write_head(&mut self.head);
        self.write_request(&body).await?;
        loop {
            if !self.read.is_empty()
                && let Some(head) = head::parse(&mut self.read)?
            {
                if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    return Err(UpstreamError::InvalidHead("unexpected 101".into()));
                }
                if !head.status.is_informational() {
                    return Ok(head);
                }
                continue;
            }
            let read = poll_fn(|cx| match self.poll_read(cx, READ_SIZE) {
                Poll::Pending => poll_deadline(&mut self.deadline, cx).map(Err),
                ready => ready,
            });
            if read.await? == 0 {
                return Err(UpstreamError::ClosedBeforeHead);
            }
        }
    }

    /// Lets go of the waker of the request that last waited on this
    /// connection's deadline (a pooled connection would keep that task's
    /// memory until its next request, and wake it when the deadline
    /// passes).
    pub fn release_waker(&mut self) {
        if let Some(timer) = &mut self.deadline {
            let _ = timer.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        }
    }

    async fn write_request(&mut self, body: &OutgoingBody) -> Result<(), UpstreamError> {
        let mut slices: SmallVec<[IoSlice<'_>; 4]> = SmallVec::new();
        slices.push(IoSlice::new(&self.head));
        slices.extend(body.parts().map(|p| IoSlice::new(p)));
        let mut rest = &mut slices[..];
        let io = &mut self.io;
        let deadline = &mut self.deadline;
        while !rest.is_empty() {
            let write = poll_fn(
                |cx| match Pin::new(&mut *io).poll_write_vectored(cx, rest) {
                    Poll::Pending => poll_deadline(deadline, cx).map(Err),
                    Poll::Ready(written) => Poll::Ready(written.map_err(UpstreamError::Io)),
                },
            );
            let written = write.await?;
            if written == 0 {
                return Err(UpstreamError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            IoSlice::advance_slices(&mut rest, written);
        }
        poll_fn(|cx| match Pin::new(&mut *io).poll_flush(cx) {
            Poll::Pending => poll_deadline(deadline, cx).map(Err),
            Poll::Ready(flushed) => Poll::Ready(flushed.map_err(UpstreamError::Io)),
        })
        .await
    }

    /// Reads what the socket has into the read buffer, first making room
    /// for `room` bytes when less than half of that is free (an 8 KiB
    /// buffer is reused while nothing still holds its bytes).
    /// `Ready(Ok(0))`: the provider closed the connection.
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        room: usize,
    ) -> Poll<Result<usize, UpstreamError>> {
        if self.read.capacity() - self.read.len() < room / 2 {
            self.read.reserve(room);
        }
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read);
        polled.map_err(UpstreamError::Io)
    }

    /// Room for the next read of a body with `remaining` bytes to come.
    pub(super) fn read_size(remaining: Option<u64>) -> usize {
        match remaining {
            Some(n) if n > READ_SIZE as u64 => {
                usize::try_from(n).map_or(LARGE_READ_SIZE, |n| n.min(LARGE_READ_SIZE))
            }
            _ => READ_SIZE,
        }
    }

    /// Whether an idle connection can take a request: the provider has not
    /// closed it nor sent anything unasked. Usually costs no system call:
    /// after a read that did not fill the buffer tokio knows the socket has
    /// nothing more until the next readiness event.
    pub fn is_open_and_quiet(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.poll_read(&mut cx, READ_SIZE), Poll::Pending)
    }
}

/// `Ready` with [`UpstreamError::TimedOut`] once the exchange's deadline
/// has passed; polled only while the socket is not ready, so an exchange
/// that never waits never touches its timer.
fn poll_deadline(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<UpstreamError> {
    match deadline {
        Some(timer) => timer.as_mut().poll(cx).map(|()| UpstreamError::TimedOut),
        None => Poll::Pending,
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
