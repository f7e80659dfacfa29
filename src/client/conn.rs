//! One HTTP/1.1 connection to a provider, driven by whoever holds it: the
//! request head and body go out in one vectored write, the response head is
//! parsed out of the read buffer, and the body is decoded from that same
//! buffer by [`super::PooledBody`]. No channels and no task of its own: a
//! request, its response head and every body frame cost no wake-up beyond
//! the socket's own. A request the socket does not take at once is written
//! while the response is read, so an answer given before the whole body
//! was read (a 413) is not lost.

use super::UpstreamError;
use super::head::{self, ResponseHead};
use super::{OutgoingBody, ProviderStream};
use crate::head_end::HeadEnd;
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
    Tls(Box<TokioIo<ProviderStream>>),
}

impl From<ProviderStream> for Io {
    fn from(io: ProviderStream) -> Io {
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
    /// The current exchange has had an interim (`1xx`) head: the provider
    /// has begun to answer, though its bytes are gone from `read`.
    interim_seen: bool,
    /// How far the response head being read has been searched for its end.
    head_end: HeadEnd,
}

impl Connection {
    pub fn new(io: impl Into<Io>) -> Self {
        Connection {
            io: io.into(),
            read: BytesMut::new(),
            head: Vec::new(),
            deadline: None,
            interim_seen: false,
            head_end: HeadEnd::default(),
        }
    }

    /// Sends the head `write_head` writes and `body`, and reads up to the
    /// final response head (interim 1xx heads are skipped), by `deadline`
    /// ([`UpstreamError::TimedOut`] after it).
    pub async fn exchange(
        &mut self,
        write_head: impl FnOnce(&mut Vec<u8>),
        body: &OutgoingBody,
        deadline: Instant,
    ) -> Result<ResponseHead, UpstreamError> {
        match &mut self.deadline {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.head.clear();
        self.interim_seen = false;
        self.head_end.reset();
        write_head(&mut self.head);
        let mut early = None;
        match self.write_request(body, &mut early).await? {
            Written::All => {
                if let Some(head) = early {
                    return Ok(head);
                }
            }
            Written::Refused(head) => return Ok(not_reusable(head)),
            Written::Failed(err) => {
                // The provider may have answered, then closed without
                // reading the rest (the reset is what failed the write):
                // its answer, if it is here already, says more than the
                // broken pipe.
                if let Some(head) = early {
                    return Ok(not_reusable(head));
                }
                return match self.head_already_received() {
                    Ok(Some(head)) => Ok(not_reusable(head)),
                    _ => Err(UpstreamError::Io(err)),
                };
            }
        }
        loop {
            if let Some(head) =
                final_head(&mut self.read, &mut self.interim_seen, &mut self.head_end)?
            {
                return Ok(head);
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

    /// The final response head, if the bytes already received (read now,
    /// without waiting) hold it whole.
    fn head_already_received(&mut self) -> Result<Option<ResponseHead>, UpstreamError> {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Some(head) =
                final_head(&mut self.read, &mut self.interim_seen, &mut self.head_end)?
            {
                return Ok(Some(head));
            }
            match self.poll_read(&mut cx, READ_SIZE) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                _ => return Ok(None),
            }
        }
    }

    /// Whether `err`, which ended an exchange on this connection, shows the
    /// provider had closed it before the request came: the connection was
    /// reset or closed and not one byte of an answer had arrived (not even
    /// an interim head, which says the provider has the request).
    pub fn closed_before_the_request(&self, err: &UpstreamError) -> bool {
        let closed = match err {
            UpstreamError::ClosedBeforeHead => true,
            UpstreamError::Io(err) => matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        };
        closed && self.read.is_empty() && !self.interim_seen
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

    /// Writes the request head and body. While the socket takes no more,
    /// reads what the provider sends: a provider may answer before it has
    /// read the whole body (a 413 for a body too large) and stop reading,
    /// and waiting for the write to finish first would end in the deadline
    /// or a broken pipe instead of its answer. An early error status
    /// (4xx, 5xx) ends the write (RFC 9112 9.5); an early head of any other
    /// status is kept in `early` and the body still written whole, as the
    /// provider may yet read it. A write that completes at once, as nearly
    /// every request's does, reads nothing here.
    async fn write_request(
        &mut self,
        body: &OutgoingBody,
        early: &mut Option<ResponseHead>,
    ) -> Result<Written, UpstreamError> {
        let Connection {
            io,
            read,
            head,
            deadline,
            interim_seen,
            head_end,
        } = self;
        let mut slices: SmallVec<[IoSlice<'_>; 4]> = SmallVec::new();
        slices.push(IoSlice::new(head));
        slices.extend(body.parts().map(|p| IoSlice::new(p)));
        let mut rest = &mut slices[..];
        let mut flushed = false;
        poll_fn(|cx| {
            loop {
                let wrote = if rest.is_empty() {
                    Pin::new(&mut *io)
                        .poll_flush(cx)
                        .map_ok(|()| flushed = true)
                } else {
                    Pin::new(&mut *io)
                        .poll_write_vectored(cx, rest)
                        .map(|written| match written {
                            Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
                            Ok(n) => {
                                IoSlice::advance_slices(&mut rest, n);
                                Ok(())
                            }
                            Err(err) => Err(err),
                        })
                };
                match wrote {
                    Poll::Ready(Ok(())) if flushed => return Poll::Ready(Ok(Written::All)),
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(err)) => return Poll::Ready(Ok(Written::Failed(err))),
                    Poll::Pending => {}
                }
                // The socket takes no more for now: an answer may be here.
                while early.is_none() {
                    if let Some(head) = final_head(read, interim_seen, head_end)? {
                        if head.status.is_client_error() || head.status.is_server_error() {
                            return Poll::Ready(Ok(Written::Refused(head)));
                        }
                        *early = Some(head);
                        break;
                    }
                    match read_into(io, read, cx, READ_SIZE) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(UpstreamError::ClosedBeforeHead));
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                        Poll::Pending => break,
                    }
                }
                return poll_deadline(deadline, cx).map(Err);
            }
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
        read_into(&mut self.io, &mut self.read, cx, room)
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

/// How writing a request ended.
enum Written {
    All,
    /// The provider refused the request (an error status) before the whole
    /// of it was written; the rest of it is not sent.
    Refused(ResponseHead),
    /// The write failed (the provider may have answered and closed).
    Failed(std::io::Error),
}

/// A response whose request was not sent whole: the connection cannot
/// carry another request, whatever the provider says.
fn not_reusable(mut head: ResponseHead) -> ResponseHead {
    head.keep_alive = false;
    head
}

/// The final response head, if `read` holds it whole; interim `1xx` heads
/// before it are dropped (`interim` set when one is).
fn final_head(
    read: &mut BytesMut,
    interim: &mut bool,
    end: &mut HeadEnd,
) -> Result<Option<ResponseHead>, UpstreamError> {
    while !read.is_empty() {
        if !end.worth_parsing(read, head::MAX_HEAD_BYTES) {
            return Ok(None);
        }
        let Some(head) = head::parse(read)? else {
            end.incomplete(read.len());
            return Ok(None);
        };
        end.reset();
        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::InvalidHead("unexpected 101".into()));
        }
        if !head.status.is_informational() {
            return Ok(Some(head));
        }
        *interim = true;
    }
    Ok(None)
}

/// [`Connection::poll_read`] on the connection's parts, for when the
/// request being written holds the connection's head buffer.
fn read_into(
    io: &mut Io,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
    room: usize,
) -> Poll<Result<usize, UpstreamError>> {
    if read.capacity() - read.len() < room / 2 {
        read.reserve(room);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read).map_err(UpstreamError::Io)
}

/// `Ready` with [`UpstreamError::TimedOut`] once the exchange's deadline
/// has passed; polled only while the socket is not ready, so an exchange
/// that never waits never touches its timer.
fn poll_deadline(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<UpstreamError> {
    match deadline {
        // Outside the budget: a provider flooding interim heads spends it.
        Some(timer) => crate::unbudgeted::poll(cx, |cx| timer.as_mut().poll(cx))
            .map(|()| UpstreamError::TimedOut),
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
