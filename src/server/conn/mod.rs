//! One client connection, served by the task that accepted it: request
//! heads parsed out of the read buffer, each request handed to the gateway,
//! its body read as the handler asks for it, the client watched for leaving
//! while the handler works (leaving cancels the request), and the response
//! written in as few writes as its body allows.
//!
//! A general server connection (hyper's) passes every
//! request, response and body frame between its state machine and the
//! handler through channels and queues, with their wakes and atomic
//! operations; the exchange here has one shape (a head, perhaps a body, a
//! response), so the connection is the gateway's own, like the provider
//! side (`client/`).

use super::connection_cap::OpenConnection;
use super::output::Output;
use super::request_body::{BodyError, FrameHandoff, RequestBody};
use super::request_head::{self, BadHead, RequestHead};
use super::response_head::ConnectionHeader;
use crate::app::Gateway;
use crate::body_budget::{BodyClaim, NoRoom};
use crate::client::{Decoded, Framing, SIZE_OVER_U64};
use crate::coarse_clock;
use crate::head_end::HeadEnd;
use crate::proxy::headers::{X_GATEWAY_ATTEMPTS, X_GATEWAY_PROVIDER, X_REQUEST_ID};
use crate::request_id::request_id;
use crate::request_progress::RequestProgress;
use crate::wire_fields::WireFields;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{Method, Version};
use http_body::Body as _;
use std::future::{Future, poll_fn};
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use waits::{BODY_PROGRESS, DeadlineWatch, IdleLimit, RateFloor, Waiting};

/// Room made in the read buffer before each read: a request head and a
/// small body fit.
const READ_SIZE: usize = 8 * 1024;
/// Larger reads while a long body is still to come.
const LARGE_READ_SIZE: usize = 64 * 1024;
/// Bytes read ahead (pipelined requests, a body the handler has not asked
/// for yet) while a request is in flight, at most: what a connection holds
/// uncounted for as long as its request lasts (a stream: minutes), so
/// small; the rest waits in the socket.
const READ_AHEAD: usize = 16 * 1024;
/// A request head part-way in past this many bytes claims what it holds
/// of `server.max_body_bytes_total` until it is whole, and has
/// [`LONG_HEAD_WAIT`] to come whole: heads are a few hundred bytes to a
/// few KiB, and without a shared bound, clients trickling heads of up to
/// 64 KiB on every connection could hold connections × 64 KiB for the
/// idle limit.
const UNCOUNTED_HEAD: usize = 16 * 1024;
/// How long a head past [`UNCOUNTED_HEAD`] may take to come whole from
/// then: a long head is sent at once (a large cookie or token), and one
/// trickled would keep its share of the body budget, which every client
/// shares, for the idle limit (no key is known before the head is whole).
const LONG_HEAD_WAIT: Duration = Duration::from_secs(10);
/// How long a request head part-way in may take to come whole once the
/// server is closing or making room at its connection cap: a head is
/// usually one packet, so its rest is due within a round trip. A
/// connection younger than this that has sent nothing yet is kept until it
/// is this old: it may have been accepted from the backlog just now, its
/// first request on the way.
const HEAD_GRACE: Duration = Duration::from_secs(1);
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Bodies up to this size are not claimed against
/// `server.max_body_bytes_total`: like the bytes read ahead, they are
/// bounded by the connection (and connections by `server.max_connections`),
/// and nearly every chat request is one of them.
const UNCOUNTED_BODY: u64 = READ_AHEAD as u64;

/// Serves requests on `io` until the client closes it, a response says
/// `connection: close`, `closing` is cancelled (the connection then closes
/// once it has no request in flight), or no complete request head came
/// for `idle`. `_place` is the connection's place under
/// `server.max_connections`, given back when this ends.
pub async fn serve(
    io: TcpStream,
    client: IpAddr,
    gateway: Arc<Gateway>,
    closing: CancellationToken,
    idle: Option<Duration>,
    _place: OpenConnection,
) {
    let mut connection = Connection {
        io,
        client: client.to_canonical(),
        read: BytesMut::new(),
        output: Output::default(),
        spare_headers: http::HeaderMap::new(),
        first_head_due: Some(tokio::time::Instant::now() + HEAD_GRACE),
        long_head: None,
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
        let head = match connection.next_head(waiting, &gateway).await {
            Ok(head) => head,
            Err(NoHead::Refused(bad)) => {
                crate::request_metrics::observe_refused_head(bad.status, &gateway.state().metrics);
                return connection.refuse(bad, idle.as_mut(), closed).await;
            }
            Err(NoHead::Closed) => return,
        };
        let after = connection
            .exchange(
                head,
                &gateway,
                &closing,
                closed.as_mut(),
                &mut deadline,
                idle.as_mut(),
            )
            .await;
        // A long head's claim lasts as long as its exchange: the request id
        // (and a stream's access record) are slices of its buffer until the
        // answer is written.
        connection.long_head = None;
        match after {
            // A drain (or the cap making room) that began after the
            // answer's head said keep-alive: the next request is not
            // served, as on an idle connection; another replica serves
            // the client's retry.
            After::KeepAlive if closing.is_cancelled() => return connection.linger(closed).await,
            After::KeepAlive => {}
            After::Linger => return connection.linger(closed).await,
            After::Drop => return,
        }
    }
}

mod ending;
mod respond;
mod waits;

struct Connection {
    io: TcpStream,
    /// The peer's address (an IPv4 client of a dual-stack listener as
    /// IPv4), for the access line.
    client: IpAddr,
    /// Bytes read and not yet parsed: heads and bodies are split off it.
    read: BytesMut,
    output: Output,
    /// The last plain request's header map, emptied: the next head's
    /// fields go into its room (see `exchange`).
    spare_headers: http::HeaderMap,
    /// Until the first request head has come: when the connection's
    /// [`HEAD_GRACE`] after its accept ends.
    first_head_due: Option<tokio::time::Instant>,
    /// A head past [`UNCOUNTED_HEAD`]'s claim on the body budget, kept
    /// until its answer is written: the head's fields (the request id
    /// among them) are slices of the buffer it came in.
    long_head: Option<BodyClaim>,
}

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
    /// Close it (the client has been told), reading and dropping what the
    /// client still sends meanwhile: what is left of a request body, or
    /// bytes sent after the answer.
    Linger,
    /// Drop it: the client left or the connection failed.
    Drop,
}

/// A request body the connection reads as the handler asks.
struct BodyReading {
    handoff: Arc<FrameHandoff>,
    framing: Framing,
    /// Bytes of `100 Continue` written, while one is owed.
    continue_owed: Option<usize>,
    /// When the current wait for body bytes began (coarse clock), and the
    /// bytes read since: [`BODY_PROGRESS`] of them start a new wait.
    stalled_since: Option<Duration>,
    progress: usize,
    /// When the body began to be read, and, once the server is closing or
    /// making room at its connection cap, the pace it must keep.
    began: tokio::time::Instant,
    rate_floor: Option<RateFloor>,
    /// `server.max_body_bytes`, and the body's bytes handed over so far:
    /// a chunk announced past the limit is refused before its bytes come
    /// (a client trickling a huge chunk is not waited for).
    limit: u64,
    received: u64,
    /// `server.max_body_bytes_total`, and the body's claim on it (see
    /// `body_budget`), given back once the handler has answered.
    total: u64,
    claim: Option<BodyClaim>,
    /// `server.max_body_bytes_per_key`, and whether the claim has been
    /// charged to the request's key: once, when the handler first asks
    /// for the body (its key checked by then).
    per_key: u64,
    key_charged: bool,
}

impl BodyReading {
    /// The declared length still to come when it is counted against the
    /// body budget: over [`UNCOUNTED_BODY`], and within the limit (a
    /// larger one, a `Content-Length` past 64 bits included, gets 413 when
    /// the body is read, not a refusal for room).
    fn declared_counted(&self) -> Option<u64> {
        self.framing
            .remaining()
            .filter(|&n| n > UNCOUNTED_BODY && n <= self.limit)
    }
}

/// What reading the request body for its handler came to.
enum BodyStep {
    /// A frame, the body's end or its error was handed over: poll the
    /// handler again.
    Again,
    /// Waiting for the client's bytes.
    Pending,
    /// The client left (or the connection failed).
    ClientLeft,
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
        gateway: &Gateway,
    ) -> Result<RequestHead, NoHead> {
        // A long head's claim on the shared total, held until it is whole,
        // and when it must be whole.
        let mut claim: Option<BodyClaim> = None;
        let mut long_head_due: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // When the wait began (not per read: a head trickled in must still
        // be complete in time), on the coarse clock.
        let mut began = None;
        // Started when the server is closing (or making room at its
        // connection cap) while a head is part-way in.
        let mut cut_off: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut head_end = HeadEnd::default();
        loop {
            if !self.read.is_empty() {
                let (buffered, buffer) = (self.read.len(), self.read.capacity());
                let parsed = if head_end.worth_parsing(&self.read, request_head::MAX_HEAD_BYTES) {
                    let parsed = request_head::parse(&mut self.read, &mut self.spare_headers);
                    if let Ok(None) = parsed {
                        head_end.incomplete(self.read.len());
                    }
                    parsed
                } else {
                    Ok(None)
                };
                match parsed {
                    Ok(Some(head)) => {
                        self.first_head_due = None;
                        if claim.is_none() && buffered - self.read.len() > UNCOUNTED_HEAD {
                            // A long head that came whole in one read is
                            // claimed as one that came in pieces is.
                            let state = gateway.state();
                            let total = state.config().server.max_body_bytes_total as u64;
                            claim = state.body_budget.claim(buffer as u64, total);
                            if claim.is_none() {
                                return Err(NoHead::Refused(BadHead::no_room()));
                            }
                        }
                        if claim.is_some() {
                            // The long head's buffer is held by its fields
                            // alone, and its claim with them: what came
                            // after the head (a body, the next request)
                            // moves to a buffer of its own, so that neither
                            // keeps the long head's room once its request
                            // is done.
                            self.read = match self.read.is_empty() {
                                true => BytesMut::new(),
                                false => BytesMut::from(&self.read[..]),
                            };
                            self.long_head = claim;
                        }
                        return Ok(head);
                    }
                    Ok(None) if self.read.len() > UNCOUNTED_HEAD => {
                        let state = gateway.state();
                        let total = state.config().server.max_body_bytes_total as u64;
                        // What it holds once the next read is in: the
                        // buffer, whose room for that read is made here
                        // so that what is claimed is what was allocated
                        // (a buffer grows by doubling).
                        self.reserve_room(READ_SIZE);
                        let holding = self.read.capacity() as u64;
                        let claimed = match &mut claim {
                            Some(claim) => claim.grow_to(holding, total).is_ok(),
                            None => {
                                claim = state.body_budget.claim(holding, total);
                                long_head_due = Some(Box::pin(tokio::time::sleep(LONG_HEAD_WAIT)));
                                claim.is_some()
                            }
                        };
                        if !claimed {
                            return Err(NoHead::Refused(BadHead::no_room()));
                        }
                    }
                    Ok(None) => {}
                    Err(bad) => return Err(NoHead::Refused(bad)),
                }
            }
            let idle = self.read.is_empty();
            let first_head_due = self.first_head_due;
            let read = poll_fn(|cx| {
                if let Poll::Ready(read) = self.poll_read(cx, READ_SIZE) {
                    return Poll::Ready(Some(read));
                }
                // Between requests a closing server closes the connection;
                // a head part-way in has `HEAD_GRACE` more to come whole,
                // so clients that send heads a byte at a time cannot keep
                // the cap filled (or a drain waiting) for the idle limit.
                // A connection just accepted is kept until its own grace
                // ends: at the cap it was waiting in the backlog, and its
                // client may be about to send (closing it then would give
                // a first request an empty reply).
                if waiting.closed.as_mut().poll(cx).is_ready() {
                    let timer =
                        match first_head_due {
                            Some(due) if idle => cut_off
                                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due))),
                            _ if idle => return Poll::Ready(None),
                            _ => cut_off
                                .get_or_insert_with(|| Box::pin(tokio::time::sleep(HEAD_GRACE))),
                        };
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                }
                if let Some(limit) = &mut waiting.idle {
                    let began = *began.get_or_insert_with(coarse_clock::monotonic);
                    if limit.passed(cx, began) {
                        return Poll::Ready(None);
                    }
                }
                if let Some(due) = &mut long_head_due
                    && due.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            match read {
                // A head begun: its own grace, not the fresh connection's.
                Some(Ok(n)) if n > 0 && idle => cut_off = None,
                Some(Ok(n)) if n > 0 => {}
                _ => return Err(NoHead::Closed),
            }
        }
    }

    /// One request: handled, its body read as asked, its response written.
    /// `closed` is `closing`'s wait.
    async fn exchange<C: Future<Output = ()>>(
        &mut self,
        head: RequestHead,
        gateway: &Arc<Gateway>,
        closing: &CancellationToken,
        mut closed: Pin<&mut C>,
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
        let (body, mut reading) = self.start_body(framing, expect_continue, gateway);
        let id = request_id(&parts.headers, gateway.state());
        let progress = RequestProgress::from_client(self.client, reading.is_some());
        let handled = {
            // The handler borrows the head; both end before the response
            // is written (a stream's head would otherwise live as long).
            let mut handling = pin!(gateway.clone().handle(&parts, body, id.clone(), &progress));
            poll_fn(|cx| {
                let polled = self.poll_handling(
                    cx,
                    handling.as_mut(),
                    reading.as_mut(),
                    &progress,
                    closed.as_mut(),
                    idle.as_deref_mut(),
                );
                if polled.is_pending() && deadline.passed(cx) {
                    return Poll::Ready(Some(None));
                }
                polled.map(|answer| answer.map(Some))
            })
            .await
        };
        // The handler is done with the body: its bytes are no longer held.
        if let Some(reading) = &mut reading {
            reading.claim = None;
        }
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
                let (response, fields) = deadline_answer(&id, &progress);
                (response, fields, false)
            }
            None => return After::Drop,
        };
        let body_read = match reading.as_mut() {
            None => true,
            Some(r) => r.framing.remaining() == Some(0) || self.drop_buffered_body(&mut r.framing),
        };
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
            Ok(false) => After::Linger,
            Err(err) => {
                if err.kind() == std::io::ErrorKind::TimedOut {
                    tracing::info!(
                        request_id = id.to_str().unwrap_or(""),
                        client_addr = %self.client,
                        "client stopped reading its response (server.client_idle_secs): response dropped, connection reset"
                    );
                }
                After::Drop
            }
        }
    }

    /// Whether the rest of a body its handler left unread (a `GET` that
    /// came with a small chunked body, a request refused before its body
    /// was wanted) is already in the read buffer whole: it is then dropped
    /// there, and the connection can carry the next request, as it does
    /// after a small body that came whole with a `Content-Length`. Anything
    /// short of the body's end, or malformed, leaves the connection to be
    /// closed.
    fn drop_buffered_body(&mut self, framing: &mut Framing) -> bool {
        loop {
            match framing.decode(&mut self.read) {
                Ok(Decoded::Frame(_)) => {}
                Ok(Decoded::End) => return true,
                Ok(Decoded::NeedMore) | Err(_) => return false,
            }
        }
    }

    /// The request's body as its handler gets it: already read (small, or
    /// none), or read by the connection as the handler asks, with its room
    /// claimed from the body budget first (none, and the body is refused).
    fn start_body(
        &mut self,
        framing: Framing,
        expect_continue: bool,
        gateway: &Arc<Gateway>,
    ) -> (RequestBody, Option<BodyReading>) {
        match framing {
            Framing::Length(0) => (RequestBody::empty(), None),
            // One over `UNCOUNTED_BODY` is claimed (and charged to its key)
            // even when it is all there: it came with a long head.
            Framing::Length(n) if n <= UNCOUNTED_BODY && self.read.len() as u64 >= n => {
                let whole = self.read.split_to(n as usize).freeze();
                (RequestBody::whole(whole), None)
            }
            framing => {
                let config = gateway.state().config();
                let (limit, total, per_key) = (
                    config.server.max_body_bytes as u64,
                    config.server.max_body_bytes_total as u64,
                    config.server.max_body_bytes_per_key as u64,
                );
                // The body claims its bytes as they come (see
                // `body_budget`); a declared length over `UNCOUNTED_BODY`
                // that would not fit now is refused before any of it is
                // read. One over the limit is refused with 413 instead.
                let declared = framing
                    .remaining()
                    .filter(|&n| n > UNCOUNTED_BODY && n <= limit)
                    .unwrap_or(0);
                let budget = &gateway.state().body_budget;
                let claim = budget
                    .fits(declared, total)
                    .then(|| budget.claim(0, total))
                    .flatten();
                let handoff = Arc::new(match claim {
                    Some(_) => FrameHandoff::default(),
                    None => FrameHandoff::ended(BodyError::NoRoom),
                });
                let reading = BodyReading {
                    handoff: handoff.clone(),
                    framing,
                    continue_owed: expect_continue.then_some(0),
                    stalled_since: None,
                    progress: 0,
                    began: tokio::time::Instant::now(),
                    rate_floor: None,
                    limit,
                    total,
                    claim,
                    per_key,
                    key_charged: false,
                    received: 0,
                };
                (
                    RequestBody::read_into(handoff, framing.remaining()),
                    Some(reading),
                )
            }
        }
    }

    /// Polls the handler; while it waits, reads the request body it asks
    /// for, and otherwise watches for the client leaving. `Ready(None)`:
    /// the client left (the handler is dropped, which cancels the request).
    fn poll_handling<Answer, F: Future<Output = Answer>, C: Future<Output = ()>>(
        &mut self,
        cx: &mut Context<'_>,
        mut handling: Pin<&mut F>,
        mut reading: Option<&mut BodyReading>,
        progress: &RequestProgress,
        mut closed: Pin<&mut C>,
        mut idle: Option<&mut IdleLimit<'_>>,
    ) -> Poll<Option<Answer>> {
        loop {
            if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            let Some(body) = reading.as_deref_mut().filter(|r| r.handoff.is_wanted()) else {
                return self.poll_client_left(cx).map(|()| None);
            };
            match self.poll_request_body(cx, body, progress, closed.as_mut(), idle.as_deref_mut()) {
                BodyStep::Again => {}
                BodyStep::Pending => return Poll::Pending,
                BodyStep::ClientLeft => return Poll::Ready(None),
            }
        }
    }

    /// Reads the request body its handler asks for, and hands it over: a
    /// frame, its end or why it cannot be read. Out of line: most requests'
    /// bodies come whole with their heads and never get here, and inlined,
    /// this made the exchange too large to be inlined in turn.
    #[inline(never)]
    fn poll_request_body<C: Future<Output = ()>>(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut BodyReading,
        progress: &RequestProgress,
        mut closed: Pin<&mut C>,
        mut idle: Option<&mut IdleLimit<'_>>,
    ) -> BodyStep {
        if !body.key_charged {
            body.key_charged = true;
            // A declared length over the key's share is refused before
            // any of it is read, as one over the total is (one over
            // the limit gets 413 instead, below).
            let declared = body.declared_counted();
            if let Some(key) = progress.key()
                && let Some(claim) = &mut body.claim
                && let Err(no_room) = claim.charge_to_key(&key, body.per_key, declared.unwrap_or(0))
            {
                body.handoff.end(Err(no_room.into()), cx);
                return BodyStep::Again;
            }
        }
        let declared = body.declared_counted();
        let over_limit = body.framing.remaining().is_some_and(|n| n > body.limit);
        if let Some(sent) = &mut body.continue_owed {
            // `100 Continue` invites the whole body: not sent when its
            // declared length is over the limit (a `Content-Length` past
            // 64 bits: the handler refuses the others first), or no
            // longer fits beside what others hold (it was checked, not
            // claimed, when the body began).
            if *sent == 0 && over_limit {
                body.handoff.end(Err(BodyError::TooLarge), cx);
                return BodyStep::Again;
            }
            if *sent == 0
                && let Some(declared) = declared
                && let Err(refused) = could_grow_to(&body.claim, declared, body.total)
            {
                body.handoff.end(Err(refused), cx);
                return BodyStep::Again;
            }
            while *sent < CONTINUE.len() {
                match Pin::new(&mut self.io).poll_write(cx, &CONTINUE[*sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 => *sent += n,
                    Poll::Ready(_) => return BodyStep::ClientLeft,
                    Poll::Pending => {
                        // A client that takes no bytes at all (its
                        // earlier answers unread) is waited for as long
                        // as a body, then treated as gone: the handler
                        // is dropped, as when a client leaves.
                        let stalled = &mut body.stalled_since;
                        if !IdleLimit::stall_passed(idle.as_deref_mut(), cx, stalled) {
                            return BodyStep::Pending;
                        }
                        let _ = self.io.set_zero_linger();
                        return BodyStep::ClientLeft;
                    }
                }
            }
            body.continue_owed = None;
        }
        loop {
            match body.framing.decode(&mut self.read) {
                Ok(Decoded::Frame(frame)) => {
                    // The body's own bytes are its progress: chunk
                    // framing and extensions earn no time.
                    body.received += frame.len() as u64;
                    // Bytes that came before they were asked for (with
                    // the head) were read unclaimed: claimed now.
                    if body.received > UNCOUNTED_BODY
                        && let Some(claim) = &mut body.claim
                        && let Err(no_room) = claim.grow_to(body.received, body.total)
                    {
                        body.handoff.end(Err(no_room.into()), cx);
                        return BodyStep::Again;
                    }
                    body.progress += frame.len();
                    if body.progress >= BODY_PROGRESS {
                        body.progress = 0;
                        body.stalled_since = None;
                    }
                    body.handoff.put(frame, cx);
                    if body.framing.remaining() == Some(0) {
                        // The last frame: the handler sees the end
                        // with it, without asking again.
                        body.handoff.end(Ok(()), cx);
                    }
                    return BodyStep::Again;
                }
                Ok(Decoded::End) => {
                    body.handoff.end(Ok(()), cx);
                    return BodyStep::Again;
                }
                Ok(Decoded::NeedMore) => {
                    let announced = body.framing.announced();
                    let needed = body.received.saturating_add(announced);
                    if needed > body.limit {
                        body.handoff.end(Err(BodyError::TooLarge), cx);
                        return BodyStep::Again;
                    }
                    let remaining = body.framing.remaining();
                    // A chunk announced that would not fit beside what
                    // others hold now is refused before its bytes
                    // come, as a declared length is when the body
                    // starts; either is claimed only as it comes.
                    if remaining.is_none()
                        && needed > UNCOUNTED_BODY
                        && let Err(refused) = could_grow_to(&body.claim, needed, body.total)
                    {
                        body.handoff.end(Err(refused), cx);
                        return BodyStep::Again;
                    }
                    let room = match remaining {
                        Some(n) if n > READ_SIZE as u64 => LARGE_READ_SIZE,
                        _ => READ_SIZE,
                    };
                    // What the body holds once this read is in: what
                    // it sent, and the read buffer (the read fills
                    // whatever room it has, at least `room`); never
                    // more than the body's own length (or the limit),
                    // so a body alone always fits.
                    let most = remaining.map_or(body.limit, |n| body.received.saturating_add(n));
                    let buffer = self.read.capacity().max(self.read.len() + room);
                    let holding = body.received.saturating_add(buffer as u64).min(most);
                    if holding > UNCOUNTED_BODY {
                        let grown = match &mut body.claim {
                            Some(claim) => claim.grow_to(holding, body.total),
                            None => Err(NoRoom::Total),
                        };
                        if let Err(no_room) = grown {
                            body.handoff.end(Err(no_room.into()), cx);
                            return BodyStep::Again;
                        }
                    }
                    match self.poll_read(cx, room) {
                        Poll::Ready(Ok(n)) if n > 0 => {}
                        // The client left halfway through its body.
                        Poll::Ready(_) => return BodyStep::ClientLeft,
                        Poll::Pending => {
                            // At the cap (or when closing) a body that
                            // comes slower than the floor is cut off:
                            // slow bodies must not hold the cap.
                            let began = body.began;
                            let behind = closed.as_mut().poll(cx).is_ready()
                                && body
                                    .rate_floor
                                    .get_or_insert_with(|| RateFloor::start(began))
                                    .behind(cx, body.received);
                            let stalled = &mut body.stalled_since;
                            let error = if behind {
                                BodyError::TooSlow
                            } else if IdleLimit::stall_passed(idle.as_deref_mut(), cx, stalled) {
                                BodyError::TimedOut
                            } else {
                                return BodyStep::Pending;
                            };
                            body.handoff.end(Err(error), cx);
                            return BodyStep::Again;
                        }
                    }
                }
                Err(err) => {
                    let error = match err {
                        // More than any `u64`, so more than the limit.
                        crate::client::UpstreamError::InvalidBody(SIZE_OVER_U64) => {
                            BodyError::TooLarge
                        }
                        crate::client::UpstreamError::InvalidBody(what) => BodyError::Invalid(what),
                        _ => BodyError::Invalid("invalid chunked body"),
                    };
                    body.handoff.end(Err(error), cx);
                    return BodyStep::Again;
                }
            }
        }
    }

    /// `Ready` once the client has closed the connection (or it failed);
    /// bytes it sends meanwhile are kept for the next request, up to a
    /// limit past which the connection is no longer read.
    /// Asked outside the task's cooperative budget (see `unbudgeted`): a
    /// handler reading a provider that sends without pause spends it.
    fn poll_client_left(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        crate::unbudgeted::poll(cx, |cx| self.poll_client_left_now(cx))
    }

    fn poll_client_left_now(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.read.len() < READ_AHEAD {
            match ready!(self.poll_read(cx, READ_SIZE)) {
                Ok(n) if n > 0 => {}
                _ => return Poll::Ready(()),
            }
        }
        Poll::Pending
    }

    /// Reads what the socket has into the read buffer, first making room
    /// for `room` bytes when less than half of that is free.
    /// `Ready(Ok(0))`: the client closed the connection.
    fn poll_read(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<std::io::Result<usize>> {
        self.reserve_room(room);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Makes room for `room` bytes in the read buffer when less than half
    /// of that is free.
    fn reserve_room(&mut self, room: usize) {
        if self.read.capacity() - self.read.len() < room / 2 {
            self.read.reserve(room);
        }
    }
}

/// Whether a body's claim could hold `bytes` now; a body without one was
/// refused when it began.
fn could_grow_to(claim: &Option<BodyClaim>, bytes: u64, total: u64) -> Result<(), BodyError> {
    match claim {
        Some(claim) => claim.could_grow_to(bytes, total).map_err(BodyError::from),
        None => Err(BodyError::NoRoom),
    }
}

/// The answer to a request whose handler the drain deadline cut off: 503
/// `gateway_shutdown`, with the request id and the provider it had
/// reached.
fn deadline_answer(id: &http::HeaderValue, progress: &RequestProgress) -> (Response, WireFields) {
    let mut fields = WireFields::default();
    fields.push(&X_REQUEST_ID, id);
    if let Some((provider, attempts)) = progress.last_attempt() {
        if let Ok(name) = http::HeaderValue::from_str(&provider) {
            fields.push(&X_GATEWAY_PROVIDER, &name);
        }
        fields.push_u64(&X_GATEWAY_ATTEMPTS, attempts.into());
    }
    (
        crate::drain::unanswered_at_deadline().into_response(),
        fields,
    )
}
