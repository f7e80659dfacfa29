//! One client connection, served by the task that accepted it: request
//! heads parsed out of the read buffer, each request handed to the gateway,
//! its body read as the handler asks for it, the client watched for leaving
//! while the handler works (leaving cancels the request), and the response
//! written in as few writes as its body allows.
//!
//! hyper's server connection, which served here before, passes every
//! request, response and body frame between its state machine and the
//! handler through channels and queues, with their wakes and atomic
//! operations; the exchange here has one shape (a head, perhaps a body, a
//! response), so the connection is the gateway's own, like the provider
//! side (`client/`).

use super::output::Output;
use super::request_body::{BodyError, RequestBody, Slot};
use super::request_head::{self, BadHead, RequestHead};
use super::response_head::{self, BodyFraming, ConnectionHeader};
use crate::access_log::{generate_id, request_id};
use crate::app::Gateway;
use crate::client::{Decoded, Framing};
use crate::coarse_clock;
use crate::error::{ErrorType, GatewayError};
use crate::proxy::headers::X_REQUEST_ID;
use crate::wire_fields::WireFields;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};
use http_body::Body as _;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Room made in the read buffer before each read: a request head and a
/// small body fit.
const READ_SIZE: usize = 8 * 1024;
/// Larger reads while a long body is still to come.
const LARGE_READ_SIZE: usize = 64 * 1024;
/// Bytes read ahead (pipelined requests, a body the handler has not asked
/// for yet) while a request is in flight, at most.
const READ_AHEAD: usize = 64 * 1024;
/// Response bytes gathered before they are written even though more are
/// ready.
const WRITE_AT: usize = 64 * 1024;
/// After a response to a request whose body was not read, how long the
/// rest of it is read and dropped before the connection closes: closing
/// with unread bytes resets the connection, and the client may lose the
/// response it has not read yet.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Serves requests on `io` until the client closes it, a response says
/// `connection: close`, `closing` is cancelled (the connection then closes
/// once it has no request in flight), or no complete request head came
/// for `idle`.
pub async fn serve(
    io: TcpStream,
    gateway: Arc<Gateway>,
    closing: CancellationToken,
    idle: Option<Duration>,
) {
    let mut connection = Connection {
        io,
        read: BytesMut::new(),
        output: Output::default(),
        spare_headers: http::HeaderMap::new(),
    };
    let mut closed = pin!(closing.cancelled());
    let drain = &gateway.state().drain;
    let notified = pin!(drain.deadline_notified());
    let mut deadline = DeadlineWatch {
        drain,
        notified,
        registered: false,
    };
    // One timer for the connection's life, armed at the start and re-armed
    // only when it fires before the wait it guards has lasted `idle`: no
    // clock reading or timer work per request (the wait's start is noted on
    // the coarse clock).
    let mut idle_timer = pin!(idle.map(|after| tokio::time::sleep(after)));
    let mut idle = idle
        .zip(idle_timer.as_mut().as_pin_mut())
        .map(|(after, timer)| IdleLimit { after, timer });
    loop {
        let waiting = Waiting {
            closed: closed.as_mut(),
            idle: idle.as_mut(),
        };
        let head = match connection.next_head(waiting).await {
            Ok(head) => head,
            Err(NoHead::Refused(bad)) => {
                crate::request_metrics::observe_refused_head(bad.status, &gateway.state().metrics);
                return connection.refuse(bad, idle.as_mut()).await;
            }
            Err(NoHead::Closed) => return,
        };
        match connection
            .exchange(head, &gateway, &closing, &mut deadline, idle.as_mut())
            .await
        {
            After::KeepAlive => {}
            After::Close => return connection.close().await,
            After::Linger => return connection.linger().await,
            After::Drop => return,
        }
    }
}

struct Connection {
    io: TcpStream,
    /// Bytes read and not yet parsed: heads and bodies are split off it.
    read: BytesMut,
    output: Output,
    /// The last plain request's header map, emptied: the next head's
    /// fields go into its room (see `exchange`).
    spare_headers: http::HeaderMap,
}

/// The drain deadline, as a connection waiting on a handler sees it: one
/// plain load per poll, and one registration per connection for the wake.
struct DeadlineWatch<'a, 'd> {
    drain: &'d crate::drain::Drain,
    notified: Pin<&'a mut tokio::sync::futures::Notified<'d>>,
    registered: bool,
}

impl DeadlineWatch<'_, '_> {
    fn passed(&mut self, cx: &mut Context<'_>) -> bool {
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
struct Waiting<'a, 'b, C> {
    /// The server is closing.
    closed: Pin<&'a mut C>,
    idle: Option<&'a mut IdleLimit<'b>>,
}

/// The client idle limit (`server.client_idle_secs`) and the connection's
/// one timer for it, shared by the waits it bounds: for a complete request
/// head, for a request body's next bytes, and for the client to take the
/// next bytes of a response.
struct IdleLimit<'a> {
    after: Duration,
    timer: Pin<&'a mut tokio::time::Sleep>,
}

impl IdleLimit<'_> {
    /// Whether a wait that began at `began` (on the coarse clock) has lasted
    /// the limit. If not, the timer is due when it will have (it may have
    /// been armed before this wait began) and wakes this task then.
    fn passed(&mut self, cx: &mut Context<'_>, began: Duration) -> bool {
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
    fn stall_passed(
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
const BODY_PROGRESS: usize = 8 * 1024;

/// Why no request head came (or none in time).
enum NoHead {
    Refused(BadHead),
    /// The client closed the connection (or it failed), or the server is
    /// closing and no request had begun.
    Closed,
}

/// What happens to the connection after an exchange.
enum After {
    KeepAlive,
    /// Close it (the client has been told).
    Close,
    /// Close it after reading what is left of the request body.
    Linger,
    /// Drop it: the client left or the connection failed.
    Drop,
}

/// A request body the connection reads as the handler asks.
struct BodyReading {
    slot: Arc<Slot>,
    framing: Framing,
    /// Bytes of `100 Continue` written, while one is owed.
    continue_owed: Option<usize>,
    /// When the current wait for body bytes began (coarse clock), and the
    /// bytes read since: [`BODY_PROGRESS`] of them start a new wait.
    stalled_since: Option<Duration>,
    progress: usize,
    /// `server.max_body_bytes`, and the body's bytes handed over so far:
    /// a chunk announced past the limit is refused before its bytes come
    /// (a client trickling a huge chunk is not waited for).
    limit: u64,
    received: u64,
}

/// What the response body has next.
enum Next {
    Data(Bytes),
    /// Nothing ready: write what is gathered.
    Write,
    End,
    Failed,
    ClientLeft,
}

impl Connection {
    async fn next_head<C: Future<Output = ()>>(
        &mut self,
        mut waiting: Waiting<'_, '_, C>,
    ) -> Result<RequestHead, NoHead> {
        // When the wait began (not per read: a head trickled in must still
        // be complete in time), on the coarse clock.
        let mut began = None;
        loop {
            if !self.read.is_empty() {
                match request_head::parse(&mut self.read, &mut self.spare_headers) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) => {}
                    Err(bad) => return Err(NoHead::Refused(bad)),
                }
            }
            let idle = self.read.is_empty();
            let read = poll_fn(|cx| {
                if let Poll::Ready(read) = self.poll_read(cx, READ_SIZE) {
                    return Poll::Ready(Some(read));
                }
                // Between requests a closing server closes the connection.
                if idle && waiting.closed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                if let Some(limit) = &mut waiting.idle {
                    let began = *began.get_or_insert_with(coarse_clock::monotonic);
                    if limit.passed(cx, began) {
                        return Poll::Ready(None);
                    }
                }
                Poll::Pending
            })
            .await;
            match read {
                Some(Ok(n)) if n > 0 => {}
                _ => return Err(NoHead::Closed),
            }
        }
    }

    /// One request: handled, its body read as asked, its response written.
    async fn exchange(
        &mut self,
        head: RequestHead,
        gateway: &Arc<Gateway>,
        closing: &CancellationToken,
        deadline: &mut DeadlineWatch<'_, '_>,
        mut idle: Option<&mut IdleLimit<'_>>,
    ) -> After {
        let RequestHead {
            mut parts,
            body: framing,
            keep_alive,
            expect_continue,
        } = head;
        let head_only = parts.method == Method::HEAD;
        let version = parts.version;
        let mut reading = None;
        let body = match framing {
            Framing::Length(0) => RequestBody::empty(),
            Framing::Length(n) if self.read.len() as u64 >= n => {
                RequestBody::whole(self.read.split_to(n as usize).freeze())
            }
            framing => {
                let slot = Arc::new(Slot::default());
                reading = Some(BodyReading {
                    slot: slot.clone(),
                    framing,
                    continue_owed: expect_continue.then_some(0),
                    stalled_since: None,
                    progress: 0,
                    limit: gateway.state().config().max_body_bytes as u64,
                    received: 0,
                });
                RequestBody::read_into(slot, framing.remaining())
            }
        };
        let id = request_id(&parts.headers);
        let handled = {
            // The handler borrows the head; both end before the response
            // is written (a stream's head would otherwise live as long).
            let mut handling = pin!(gateway.clone().handle(&parts, body, id.clone()));
            poll_fn(|cx| {
                let polled = self.poll_handling(
                    cx,
                    handling.as_mut(),
                    reading.as_mut(),
                    idle.as_deref_mut(),
                );
                if polled.is_pending() && deadline.passed(cx) {
                    return Poll::Ready(Some(None));
                }
                polled.map(|answer| answer.map(Some))
            })
            .await
        };
        // A plain answer is written at once and the connection is likely
        // to bring another request: the head's map is emptied and kept for
        // it. A stream's may hold the connection for minutes; its map is
        // dropped, so an open stream costs no more memory than before.
        let plain = handled
            .as_ref()
            .and_then(Option::as_ref)
            .is_some_and(|(response, _)| response.body().size_hint().exact().is_some());
        if plain {
            let mut headers = std::mem::take(&mut parts.headers);
            headers.clear();
            self.spare_headers = headers;
        }
        drop(parts);
        let (response, fields, keep_alive) = match handled {
            Some(Some((response, fields))) => (response, fields, keep_alive),
            // The drain deadline passed before the handler answered: the
            // client gets an answer it can retry elsewhere, not a closed
            // connection (the request is logged when its handler is dropped).
            Some(None) => {
                let mut fields = WireFields::default();
                fields.push(&X_REQUEST_ID, &id);
                (
                    crate::drain::unanswered_at_deadline().into_response(),
                    fields,
                    false,
                )
            }
            None => return After::Drop,
        };
        let body_read = reading
            .as_ref()
            .is_none_or(|r| r.framing.remaining() == Some(0));
        let keep_alive = keep_alive && body_read && !closing.is_cancelled();
        let connection = match (keep_alive, version) {
            (false, _) => ConnectionHeader::Close,
            (true, Version::HTTP_10) => ConnectionHeader::KeepAlive,
            (true, _) => ConnectionHeader::Default,
        };
        match self
            .respond(response, &fields, head_only, version, connection, idle)
            .await
        {
            Ok(true) => After::KeepAlive,
            Ok(false) if !body_read => After::Linger,
            Ok(false) => After::Close,
            Err(err) => {
                if err.kind() == std::io::ErrorKind::TimedOut {
                    tracing::info!(
                        request_id = id.to_str().unwrap_or(""),
                        "client stopped reading its response (server.client_idle_secs): response dropped, connection reset"
                    );
                }
                After::Drop
            }
        }
    }

    /// Polls the handler; while it waits, reads the request body it asks
    /// for, and otherwise watches for the client leaving. `Ready(None)`:
    /// the client left (the handler is dropped, which cancels the request).
    fn poll_handling<Answer, F: Future<Output = Answer>>(
        &mut self,
        cx: &mut Context<'_>,
        mut handling: Pin<&mut F>,
        mut reading: Option<&mut BodyReading>,
        mut idle: Option<&mut IdleLimit<'_>>,
    ) -> Poll<Option<Answer>> {
        'handler: loop {
            if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            let Some(body) = reading.as_deref_mut().filter(|r| r.slot.is_wanted()) else {
                return self.poll_client_left(cx).map(|()| None);
            };
            if let Some(sent) = &mut body.continue_owed {
                while *sent < CONTINUE.len() {
                    match Pin::new(&mut self.io).poll_write(cx, &CONTINUE[*sent..]) {
                        Poll::Ready(Ok(n)) if n > 0 => *sent += n,
                        Poll::Ready(_) => return Poll::Ready(None),
                        Poll::Pending => {
                            // A client that takes no bytes at all (its
                            // earlier answers unread) is waited for as long
                            // as a body, then treated as gone: the handler
                            // is dropped, as when a client leaves.
                            let stalled = &mut body.stalled_since;
                            if !IdleLimit::stall_passed(idle.as_deref_mut(), cx, stalled) {
                                return Poll::Pending;
                            }
                            let _ = self.io.set_zero_linger();
                            return Poll::Ready(None);
                        }
                    }
                }
                body.continue_owed = None;
            }
            loop {
                match body.framing.decode(&mut self.read) {
                    Ok(Decoded::Frame(frame)) => {
                        body.received += frame.len() as u64;
                        body.slot.put(frame, cx);
                        if body.framing.remaining() == Some(0) {
                            // The last frame: the handler sees the end
                            // with it, without asking again.
                            body.slot.end(Ok(()), cx);
                        }
                        continue 'handler;
                    }
                    Ok(Decoded::End) => {
                        body.slot.end(Ok(()), cx);
                        continue 'handler;
                    }
                    Ok(Decoded::NeedMore) => {
                        let announced = body.framing.announced();
                        if body.received.saturating_add(announced) > body.limit {
                            body.slot.end(Err(BodyError::TOO_LARGE), cx);
                            continue 'handler;
                        }
                        let room = match body.framing.remaining() {
                            Some(n) if n > READ_SIZE as u64 => LARGE_READ_SIZE,
                            _ => READ_SIZE,
                        };
                        match self.poll_read(cx, room) {
                            Poll::Ready(Ok(n)) if n > 0 => {
                                body.progress += n;
                                if body.progress >= BODY_PROGRESS {
                                    body.progress = 0;
                                    body.stalled_since = None;
                                }
                            }
                            // The client left halfway through its body.
                            Poll::Ready(_) => return Poll::Ready(None),
                            Poll::Pending => {
                                let stalled = &mut body.stalled_since;
                                if !IdleLimit::stall_passed(idle.as_deref_mut(), cx, stalled) {
                                    return Poll::Pending;
                                }
                                body.slot.end(Err(BodyError::TIMED_OUT), cx);
                                continue 'handler;
                            }
                        }
                    }
                    Err(err) => {
                        let message = match err {
                            crate::client::UpstreamError::InvalidBody(what) => what,
                            _ => "invalid chunked body",
                        };
                        body.slot.end(Err(BodyError(message)), cx);
                        continue 'handler;
                    }
                }
            }
        }
    }

    /// `Ready` once the client has closed the connection (or it failed);
    /// bytes it sends meanwhile are kept for the next request, up to a
    /// limit past which the connection is no longer read.
    fn poll_client_left(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.read.len() < READ_AHEAD {
            match ready!(self.poll_read(cx, READ_SIZE)) {
                Ok(n) if n > 0 => {}
                _ => return Poll::Ready(()),
            }
        }
        Poll::Pending
    }

    /// Writes the response, `fields` after its header map's. `Ok(true)`:
    /// the connection can take another request.
    async fn respond(
        &mut self,
        response: Response,
        fields: &WireFields,
        head_only: bool,
        version: Version,
        mut connection: ConnectionHeader,
        mut idle: Option<&mut IdleLimit<'_>>,
    ) -> std::io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let framing = if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            BodyFraming::None
        } else if let Some(length) = head_only.then(|| declared_length(&parts.headers)).flatten() {
            // A HEAD response's length is the one GET would have (the
            // handler's field), not its empty body's.
            BodyFraming::Length(length)
        } else if let Some(length) = http_body::Body::size_hint(&body).exact() {
            BodyFraming::Length(length)
        } else if version == Version::HTTP_11 {
            BodyFraming::Chunked
        } else {
            connection = ConnectionHeader::Close;
            BodyFraming::UntilClose
        };
        let keep_alive = connection != ConnectionHeader::Close;
        self.output.copy_with(|out| {
            let encoded = fields.as_bytes();
            response_head::encode(status, &parts.headers, encoded, framing, connection, out);
        });
        drop(parts);
        if head_only || matches!(framing, BodyFraming::None | BodyFraming::Length(0)) {
            drop(body);
            self.write_output(idle.as_deref_mut()).await?;
            return Ok(keep_alive);
        }
        // Bytes still owed after a `content-length`.
        let mut owed = match framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        };
        loop {
            match poll_fn(|cx| self.poll_body(cx, &mut body)).await {
                Next::Data(mut data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if framing == BodyFraming::Chunked {
                        self.output.copy_with(|out| {
                            let mut size = [0u8; 16];
                            out.extend_from_slice(hex(data.len(), &mut size));
                            out.extend_from_slice(b"\r\n");
                        });
                        self.output.push(data);
                        self.output.copy(b"\r\n");
                    } else if let Some(owed) = &mut owed {
                        // More than the length the body announced: what
                        // the client was told wins.
                        data.truncate(usize::try_from(*owed).unwrap_or(usize::MAX));
                        *owed -= data.len() as u64;
                        self.output.push(data);
                        if *owed == 0 {
                            self.write_output(idle.as_deref_mut()).await?;
                            return Ok(keep_alive);
                        }
                    } else {
                        self.output.push(data);
                    }
                    if self.output.len() >= WRITE_AT {
                        self.write_output(idle.as_deref_mut()).await?;
                    }
                }
                Next::Write => self.write_output(idle.as_deref_mut()).await?,
                Next::End => {
                    if framing == BodyFraming::Chunked {
                        self.output.copy(b"0\r\n\r\n");
                    }
                    self.write_output(idle.as_deref_mut()).await?;
                    // A body shorter than its announced length leaves the
                    // client waiting for the rest: only a close ends that.
                    return Ok(keep_alive && owed.is_none_or(|n| n == 0));
                }
                Next::Failed => {
                    // No way to say so in HTTP/1.1 but to end the
                    // connection before the body's end.
                    self.write_output(idle.as_deref_mut()).await?;
                    return Ok(false);
                }
                Next::ClientLeft => return Err(std::io::ErrorKind::ConnectionReset.into()),
            }
        }
    }

    /// Writes what the output holds. A client that takes none of it for the
    /// idle limit (or less than [`BODY_PROGRESS`] bytes of it in that
    /// time) fails the write with `TimedOut`, and the connection is set to
    /// be reset when dropped: closed normally, it would keep the unsent
    /// bytes in the kernel, trying to deliver them to a client that does
    /// not read. The clock is read and the timer polled only when the
    /// socket takes nothing.
    async fn write_output(&mut self, mut idle: Option<&mut IdleLimit<'_>>) -> std::io::Result<()> {
        // When the current wait began (coarse clock), and the bytes
        // written by then.
        let mut wait: Option<(Duration, usize)> = None;
        let written = self.output.write_to(&mut self.io, |cx, written| {
            let Some(limit) = idle.as_deref_mut() else {
                return false;
            };
            let began = match wait {
                Some((began, from)) if written - from < BODY_PROGRESS => began,
                _ => {
                    let now = coarse_clock::monotonic();
                    wait = Some((now, written));
                    now
                }
            };
            limit.passed(cx, began)
        });
        let result = written.await;
        if result
            .as_ref()
            .is_err_and(|err| err.kind() == std::io::ErrorKind::TimedOut)
        {
            let _ = self.io.set_zero_linger();
        }
        result
    }

    fn poll_body(&mut self, cx: &mut Context<'_>, body: &mut axum::body::Body) -> Poll<Next> {
        loop {
            return match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Next::Data(data)),
                    // Trailers are not sent.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(err))) => {
                    tracing::debug!(error = %err, "response body failed");
                    Poll::Ready(Next::Failed)
                }
                Poll::Ready(None) => Poll::Ready(Next::End),
                Poll::Pending if !self.output.is_empty() => Poll::Ready(Next::Write),
                Poll::Pending => self.poll_client_left(cx).map(|()| Next::ClientLeft),
            };
        }
    }

    /// Answers a head that cannot be served, then closes.
    async fn refuse(mut self, bad: BadHead, idle: Option<&mut IdleLimit<'_>>) {
        // Not an access line: there is no method, path or key to record.
        let id = generate_id();
        tracing::info!(
            request_id = id.to_str().unwrap_or(""),
            status = bad.status.as_u16(),
            error = bad.message,
            "request head refused"
        );
        let response = GatewayError::new(bad.status, ErrorType::InvalidRequestError, bad.message)
            .into_response();
        let mut fields = WireFields::default();
        fields.push(&X_REQUEST_ID, &id);
        if self
            .respond(
                response,
                &fields,
                false,
                Version::HTTP_11,
                ConnectionHeader::Close,
                idle,
            )
            .await
            .is_ok()
        {
            self.linger().await;
        }
    }

    async fn close(mut self) {
        let _ = self.io.shutdown().await;
    }

    /// Closes the sending side, then reads and drops what the client still
    /// sends (the rest of a body not read) until it closes too, for a
    /// while.
    async fn linger(mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(LINGER, async {
            let mut dropped = 0;
            while dropped < LINGER_BYTES {
                self.read.clear();
                match poll_fn(|cx| self.poll_read(cx, LARGE_READ_SIZE)).await {
                    Ok(n) if n > 0 => dropped += n,
                    _ => break,
                }
            }
        })
        .await;
    }

    /// Reads what the socket has into the read buffer, first making room
    /// for `room` bytes when less than half of that is free.
    /// `Ready(Ok(0))`: the client closed the connection.
    fn poll_read(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < room / 2 {
            self.read.reserve(room);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// The handler's own `content-length`, if it set one.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `n` in hexadecimal (a chunk's size line), written into `out`.
fn hex(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &out[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_sizes_are_hexadecimal() {
        let mut out = [0u8; 16];
        assert_eq!(super::hex(0, &mut out), b"0");
        assert_eq!(super::hex(255, &mut out), b"ff");
        assert_eq!(super::hex(16_384, &mut out), b"4000");
        assert_eq!(super::hex(usize::MAX, &mut out), b"ffffffffffffffff");
    }
}
