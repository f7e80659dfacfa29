//! Byte passthrough of an upstream event stream. Events go out as they come,
//! unchanged: a read goes out as the same `Bytes`, except that small reads
//! already waiting together are sent as one frame, and a usage chunk the
//! gateway asked for on its own account is kept back. An event split across
//! two reads is held until its end, so the client never sees half an event
//! and an error event can always be appended cleanly; opening prompt-filter
//! chunks are held with the head until the answer's first event (and then
//! dropped, unless the provider is set to pass them on). Usage is
//! found by scanning bytes and parsing only the event that holds it.

mod after_done;
mod event_align;
mod gather;
mod inspect;
mod relay_waits;
mod unended_done;
use crate::error::code;
use unended_done::BodyNow;

use super::breaker::Breaker;
use super::failover::{Verdict, classify};
use super::normalize::ChunkIdentity;
use super::prompt_filter;
use super::sse_events::first_event_start;
use super::sse_lines::first_event_over;
use super::stream_stats::{StreamEnd, StreamStats};
use super::upstream_errors::{self, Awaited};
use super::usage::UsageReport;
use crate::error::GatewayError;
use crate::unbudgeted;
use after_done::read_rest_in_background;
use bytes::Bytes;
pub use event_align::EventAligner;
use futures_util::Stream;
use http::StatusCode;
use prometheus::{Histogram, IntGauge};
use relay_waits::RelayWaits;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// UTF-8's byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Most bytes of opening prompt-filter chunks held before the answer's
/// first event (one is a few hundred bytes); past it, the attempt fails:
/// a provider that sends nothing else has sent no answer.
const MAX_OPENING: usize = 64 * 1024;

/// How much longer a stream's idle (or first-byte) limit, once seen passed
/// with no event, waits before it is believed: time for the runtime to
/// look at the sockets after a freeze of the process, when every timer is
/// met at once at resume (a single yield to the runtime is not enough: on
/// several workers another may be the one polling the sockets).
const IDLE_GRACE: Duration = Duration::from_millis(100);

/// How long a `[DONE]` event that has come without the blank line after it
/// (or without its own line end's LF, after a CR) waits for the rest
/// before the relay ends it: a provider's writes, split across reads, bring
/// it within milliseconds, and what they bring is passed as it came.
const DONE_LINE_WAIT: Duration = Duration::from_millis(100);

type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, crate::client::UpstreamError>> + Send>>;

/// A comment line alone: a blank line after it would end an (empty) event,
/// which the Python SDK hands on as one once an event has had an `id:`.
static KEEPALIVE: Bytes = Bytes::from_static(b": keep-alive\n");

/// The comment after a frame that ended in CR: the provider's LF may
/// follow (its write stopped inside a CRLF), and after an LF of ours it
/// would be a blank line of its own, the same empty event. After this
/// comment's CR it is the rest of the comment's line end.
static KEEPALIVE_AFTER_CR: Bytes = Bytes::from_static(b": keep-alive\r");

/// What a block of events from the provider comes to.
enum Relayed {
    /// Bytes for the client.
    Send(Bytes),
    /// Nothing for the client yet (comments before the head, a hidden
    /// usage chunk): read on.
    Nothing,
    Fail(GatewayError),
}

/// What the relay does while the provider is silent.
enum Quiet {
    /// `[DONE]`'s line has ended after all: the held end goes out.
    DoneLineEnded,
    /// The poll's answer (`Pending` while nothing is due).
    Answer(Poll<Option<Result<Bytes, GatewayError>>>),
}

/// How a relay behaves, from the provider's settings and the server's.
pub struct RelaySettings {
    /// The provider: its name for messages, its keys to redact from its
    /// own error events.
    pub provider: Arc<crate::config::Provider>,
    /// The client asked for `stream_options.include_usage`.
    pub include_usage: bool,
    /// The gateway asked for it instead (the provider reports a stream's
    /// usage only when asked): the usage chunk is read, not passed on.
    pub hide_usage_chunk: bool,
    pub first_byte_deadline: Instant,
    pub idle: Duration,
    /// Send `: keep-alive` after this much silence (SDKs ignore comments).
    pub keepalive: Option<Duration>,
    /// Largest event the relay holds while waiting for its end.
    pub max_event_bytes: usize,
    /// Cancelled when the gateway's drain deadline passes.
    pub shutdown: CancellationToken,
    /// Silence between upstream events, this provider's series.
    pub chunk_gap: Histogram,
    pub open_streams: IntGauge,
    /// The target's circuit, told when its stream fails after the first
    /// event (the attempt counted as a success then).
    pub breaker: Arc<Breaker>,
}

/// The stream body sent to the client.
pub struct SseRelay {
    upstream: Upstream,
    /// An upstream item read while gathering that did not fit; it comes next.
    held: Option<Option<Result<Bytes, crate::client::UpstreamError>>>,
    aligner: EventAligner,
    /// Frames ready to go out before anything new is read.
    queued: VecDeque<Bytes>,
    /// Frames that follow the current read's (a synthesised usage chunk and
    /// the `[DONE]` after it).
    after: VecDeque<Bytes>,
    /// The first event arrived: idle time is now measured between events.
    idle_between_events: bool,
    /// Started when a `[DONE]` event left unended is first waited on (see
    /// [`DONE_LINE_WAIT`]).
    done_line_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The idle (or first-byte) limit was seen passed, and [`IDLE_GRACE`]
    /// has been given since: no event read still (comments do not count),
    /// the limit holds.
    idle_seen_passed: bool,
    /// When the client was last sent something (events or a comment).
    last_write: Instant,
    /// The client asked for `stream_options.include_usage`.
    include_usage: bool,
    /// The gateway asked for it: the usage chunk is not passed on.
    hide_usage_chunk: bool,
    /// Usage seen on a chunk with choices (Moonshot's in-choice usage, or
    /// a top-level one), kept in case no standard chunk follows.
    usage_to_restate: Option<UsageReport>,
    /// The standard `choices: []` usage chunk came.
    usage_chunk_seen: bool,
    /// The first chunk's `id`, `created` and `model`, read when the client
    /// asked for usage (boxed: most streams never need it).
    first_chunk: Option<Box<ChunkIdentity>>,
    /// The provider's own error event, already forwarded: the stream ends
    /// with it (logged and counted as its error), not with one of ours.
    provider_error: Option<GatewayError>,
    /// That error was the stream's first event: nothing of the answer came
    /// before it, so the attempt failed as a whole and may be retried.
    error_came_first: bool,
    /// Before the head: where the answer's first event starts in the read
    /// being relayed, past opening prompt-filter chunks (`None` while only
    /// those have come, and once the head is out).
    answer_at: Option<usize>,
    /// Opening prompt-filter chunks are held, waiting for the answer.
    opening_held: bool,
    idle: Duration,
    /// Largest event held while waiting for its end.
    max_event_bytes: usize,
    /// An event over `max_event_bytes` came in a read after events of the
    /// answer, which went out first: the next poll fails with it.
    oversized_next: bool,
    /// The idle and keep-alive timers and the drain's cancellation.
    waits: Pin<Box<RelayWaits>>,
    provider: Arc<crate::config::Provider>,
    stats: Arc<StreamStats>,
    head_sent: bool,
    /// How many bytes of a byte order mark have begun the stream (one may
    /// come split across reads), until its first bytes are known to start
    /// with one or not; then `None`.
    bom_seen: Option<u8>,
    /// `[DONE]`'s event went out ending in CR LF CR: the LF that completes
    /// its blank line is still to come, and goes out when it does.
    lf_owed: bool,
    /// The last frame sent ended in CR: an LF of the provider's may follow.
    ended_in_cr: bool,
    finished: bool,
    last_event: Instant,
    chunk_gap: Histogram,
    open_streams: IntGauge,
    breaker: Arc<Breaker>,
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        self.open_streams.dec();
        // A client that stopped reading blocks the error event the drain
        // deadline would send; the connection is then closed under the
        // stream, which must still be logged as the gateway's cut, not as
        // the client leaving.
        if !self.finished {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if self.waits.as_mut().poll_shutdown(&mut cx).is_ready() {
                self.stats
                    .finish(StreamEnd::Failed(crate::drain::stream_ended_at_deadline()));
            }
        }
        // A client that hung up on `[DONE]` before the provider's body
        // ended: the provider's connection is still worth keeping.
        if !self.finished && self.stats.saw_done() {
            let rest =
                std::mem::replace(&mut self.upstream, Box::pin(futures_util::stream::empty()));
            read_rest_in_background(rest);
        }
    }
}

impl SseRelay {
    /// Waits for the upstream's first complete event of the answer (past
    /// opening prompt-filter chunks), so a failure before it is still an
    /// ordinary HTTP error (and could be retried elsewhere).
    pub async fn start(
        upstream: Upstream,
        settings: RelaySettings,
        stats: Arc<StreamStats>,
    ) -> Result<SseRelay, GatewayError> {
        let now = Instant::now();
        let first_byte_deadline = settings.first_byte_deadline;
        let mut relay = SseRelay {
            upstream,
            held: None,
            aligner: EventAligner::default(),
            queued: VecDeque::new(),
            after: VecDeque::new(),
            idle_between_events: false,
            done_line_wait: None,
            idle_seen_passed: false,
            last_write: now,
            include_usage: settings.include_usage,
            hide_usage_chunk: settings.hide_usage_chunk,
            max_event_bytes: settings.max_event_bytes,
            oversized_next: false,
            usage_to_restate: None,
            usage_chunk_seen: false,
            first_chunk: None,
            provider_error: None,
            error_came_first: false,
            answer_at: None,
            opening_held: false,
            idle: settings.idle,
            waits: RelayWaits::new(
                settings.first_byte_deadline,
                settings.keepalive,
                now,
                settings.shutdown,
            ),
            provider: settings.provider,
            stats,
            head_sent: false,
            bom_seen: Some(0),
            lf_owed: false,
            ended_in_cr: false,
            finished: false,
            last_event: now,
            chunk_gap: settings.chunk_gap,
            open_streams: settings.open_streams,
            breaker: settings.breaker,
        };
        relay.open_streams.inc();
        let (opening, opening_reads, first) =
            relay.read_past_opening_chunks(first_byte_deadline).await?;
        match first {
            Some(Ok(_)) if relay.error_came_first => {
                // Nothing went to the client yet: a provider that fails in
                // its first event is an ordinary failed attempt, retried
                // or failed over by its type like an HTTP error (its
                // status is the type's: see `stream_error`).
                Err(relay.provider_error.take().expect("set with it"))
            }
            // `[DONE]` with nothing before it: an answer of no chunk at
            // all, which the SDKs would hand on as an empty answer.
            Some(Ok(events))
                if relay.stats.saw_done()
                    && inspect::done_without_answer(
                        events
                            .get(relay.answer_at.unwrap_or(0)..)
                            .unwrap_or_default(),
                    ) =>
            {
                Err(GatewayError::server(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "provider {} ended the stream with [DONE] before any chunk of an answer",
                        relay.provider.name
                    ),
                )
                .with_code(code::UPSTREAM_BAD_RESPONSE))
            }
            Some(Ok(events)) => {
                if relay.provider.pass_prompt_filter_chunks {
                    let lf_owed = opening.as_deref().is_some_and(lf_owed_after);
                    relay.queued.extend(opening);
                    if lf_owed {
                        relay.queued.push_back(Bytes::from_static(b"\n"));
                    }
                    relay.queued.push_back(events);
                } else {
                    // Code written for OpenAI reads `choices[0]` of every
                    // chunk but the usage chunk: the answer is sent from
                    // its own first event on.
                    let at = relay.answer_at.unwrap_or(0).min(events.len());
                    relay.queued.push_back(events.slice(at..));
                    relay.stats.uncount_reads(opening_reads);
                }
                let after = std::mem::take(&mut relay.after);
                relay.queued.extend(after);
                relay.head_sent = true;
                relay.answer_at = None;
                relay.stats.mark_first_event(relay.last_event);
                // Events of the answer came before the provider's error in
                // the same read: the stream has begun, and ends with them
                // and the error, as it would had they come in reads apart.
                if let Some(err) = &relay.provider_error {
                    relay.stats.finish(StreamEnd::Failed(err.clone()));
                }
                if relay.stats.saw_done() {
                    relay.stats.finish(StreamEnd::Complete);
                }
                Ok(relay)
            }
            Some(Err(err)) => Err(err),
            None => Err(upstream_errors::no_event(
                &relay.provider,
                false,
                relay.opening_held,
            )),
        }
    }

    /// Reads until the answer's first events, or the attempt's end: what
    /// came next, with the opening prompt-filter chunks held before it
    /// and how many reads they came in.
    /// They are no part of the answer, so a failure after them still fails
    /// over, and the first-byte deadline and the time to first token are
    /// the answer's.
    async fn read_past_opening_chunks(
        &mut self,
        first_byte_deadline: Instant,
    ) -> Result<(Option<Bytes>, u64, Option<Result<Bytes, GatewayError>>), GatewayError> {
        let mut opening: Option<Bytes> = None;
        let reads_before = self.stats.reads();
        let mut opening_reads = 0;
        loop {
            let next = std::future::poll_fn(|cx| self.poll_upstream(cx)).await;
            match next {
                Some(Ok(events)) if !self.error_came_first && self.holds_no_answer(&events) => {
                    let opening_len = opening.as_ref().map_or(0, Bytes::len);
                    if opening_len + events.len() > MAX_OPENING {
                        return Err(upstream_errors::endless_opening(
                            &self.provider,
                            MAX_OPENING,
                        ));
                    }
                    opening = Some(match opening.take() {
                        None => events,
                        Some(held) => {
                            let lf: &[u8] = if lf_owed_after(&held) { b"\n" } else { b"" };
                            Bytes::from([&held[..], lf, &events[..]].concat())
                        }
                    });
                    self.opening_held = true;
                    opening_reads = self.stats.reads() - reads_before;
                    self.rearm_first_byte_deadline(first_byte_deadline);
                }
                other => return Ok((opening, opening_reads, other)),
            }
        }
    }

    /// Whether `events`, before the head, hold nothing of the answer: only
    /// opening chunks, or what was left of the answer's part once a usage
    /// chunk the gateway asked for was taken out.
    fn holds_no_answer(&self, events: &[u8]) -> bool {
        self.answer_at.is_none_or(|at| at >= events.len())
    }

    /// Only opening chunks so far: the wait for the answer's first event is
    /// still bounded by the first-byte deadline, not the idle limit.
    fn rearm_first_byte_deadline(&mut self, first_byte_deadline: Instant) {
        self.idle_between_events = false;
        self.waits.as_mut().idle().reset(first_byte_deadline);
    }

    /// Next complete events from upstream, an error, or the end.
    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, GatewayError>>> {
        // The provider's error event went out: the stream ends there,
        // whatever the provider does with its body after it.
        if self.provider_error.is_some() && self.head_sent {
            return Poll::Ready(None);
        }
        // `[DONE]` went out: the answer is whole, and nothing the provider
        // sends after it is relayed.
        if self.stats.saw_done() {
            return self.poll_after_done(cx);
        }
        if self.oversized_next {
            self.oversized_next = false;
            let err = upstream_errors::too_large(&self.provider, self.max_event_bytes);
            return Poll::Ready(Some(Err(err)));
        }
        loop {
            let next = match self.held.take() {
                Some(item) => Poll::Ready(item),
                None => self.upstream.as_mut().poll_next(cx),
            };
            match next {
                Poll::Ready(Some(Ok(mut chunk))) => {
                    // A `[DONE]` event waited on: nothing more for
                    // `DONE_LINE_WAIT` from this read on.
                    if let Some(wait) = &mut self.done_line_wait {
                        wait.as_mut().reset(Instant::now() + DONE_LINE_WAIT);
                    }
                    if let Some(seen) = &mut self.bom_seen {
                        match strip_bom(seen, chunk) {
                            Some(rest) => {
                                self.bom_seen = None;
                                chunk = rest;
                            }
                            None => continue,
                        }
                    }
                    if let Some(events) = self.aligner.push(chunk) {
                        match self.relay_events(cx, events) {
                            Relayed::Send(events) => return Poll::Ready(Some(Ok(events))),
                            Relayed::Fail(err) => return Poll::Ready(Some(Err(err))),
                            Relayed::Nothing => continue,
                        }
                    }
                    // Inside an event: one that never ends must not grow
                    // the gateway's memory without bound.
                    if self.aligner.pending_len() > self.max_event_bytes {
                        let err = upstream_errors::too_large(&self.provider, self.max_event_bytes);
                        return Poll::Ready(Some(Err(err)));
                    }
                }
                // Ended by the provider's own error event: however the
                // provider's body ends, nothing is added after it.
                Poll::Ready(Some(Err(_)) | None) if self.provider_error.is_some() => {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(err))) => {
                    return Poll::Ready(Some(Err(upstream_errors::stream_cut(
                        &self.provider,
                        &err,
                    ))));
                }
                // The body ended inside `[DONE]`'s event: the answer is
                // whole all the same.
                Poll::Ready(None) if self.done_event_end(BodyNow::Ended).is_some() => {
                    self.held = self.done_event_end(BodyNow::Ended).map(|end| Some(Ok(end)));
                    self.upstream = Box::pin(futures_util::stream::empty());
                }
                // Ended as its framing says, with no whole event: a
                // stream, but not an answer.
                Poll::Ready(None) if !self.head_sent => {
                    let inside_one = self.aligner.has_partial();
                    return Poll::Ready(Some(Err(upstream_errors::no_event(
                        &self.provider,
                        inside_one,
                        self.opening_held,
                    ))));
                }
                Poll::Ready(None) => {
                    let inside_one = self.aligner.has_partial();
                    return Poll::Ready(Some(Err(upstream_errors::stream_closed_short(
                        &self.provider,
                        inside_one,
                    ))));
                }
                Poll::Pending => match self.poll_quiet(cx) {
                    Quiet::DoneLineEnded => continue,
                    Quiet::Answer(answer) => return answer,
                },
            }
        }
    }

    /// A block of whole events from a read (and the reads waiting behind
    /// it): checked for size, cut to its first event before the head,
    /// timed, and inspected for `[DONE]`, errors and usage.
    fn relay_events(&mut self, cx: &mut Context<'_>, events: Bytes) -> Relayed {
        let (mut events, mut reads) = self.gather_ready(cx, events);
        // An event can arrive whole in one read, never held
        // as pending: its size is checked here. Only a block
        // of events larger than the limit is measured. The
        // answer's events before it go out (and begin the
        // stream) as they would in reads of their own, so
        // how the reads fell does not decide whether the
        // attempt is retried.
        if events.len() > self.max_event_bytes
            && let Some(at) = first_event_over(&events, self.max_event_bytes)
        {
            if first_event_start(&events[..at]).is_none() {
                let err = upstream_errors::too_large(&self.provider, self.max_event_bytes);
                return Relayed::Fail(err);
            }
            events = events.slice(..at);
            self.oversized_next = true;
            // The reads of the events dropped with it are not relayed
            // ones; those kept count as one (where the reads fell in the
            // gathered block is not kept).
            reads = 1;
        }
        // Only a block with data is an event (SSE dispatches
        // nothing for comments, or `id:`/`retry:` alone).
        // Before the head goes out, the rest are dropped,
        // in a read of their own or before the first event
        // in its read: sending the head for them would end
        // fail-over and the first-byte deadline for a
        // provider that has sent nothing yet; the client
        // gets its own keep-alives. After it, they pass, but
        // do not count as the provider's events for the
        // idle limit.
        let first_event = first_event_start(&events);
        if !self.head_sent {
            match first_event {
                None => return Relayed::Nothing,
                Some(0) => {}
                Some(start) => events = events.slice(start..),
            }
            self.answer_at = prompt_filter::answer_start(&events);
        }
        let has_event = first_event.is_some();
        let now = Instant::now();
        // Comments alone do not hold off the idle limit, however fast they
        // come: a provider that floods them never leaves the reads
        // waiting, where the limit's timer is otherwise looked at.
        if !has_event && now >= self.waits.as_mut().idle().deadline() && !self.rearm_idle_timer(cx)
        {
            return Relayed::Fail(self.idle_error());
        }
        if has_event {
            if self.head_sent {
                self.chunk_gap
                    .observe((now - self.last_event).as_secs_f64());
            }
            self.last_event = now;
            self.idle_seen_passed = false;
        }
        self.last_write = now;
        // Timers are not re-armed per event: when one fires,
        // it checks the time of the last event (see below).
        if !self.idle_between_events {
            self.idle_between_events = true;
            let due = now + self.idle;
            self.waits.as_mut().idle().reset(due);
        }
        let events = self.inspect(events, reads);
        // Nothing left: the frame was a usage chunk the
        // client did not ask for, or `[DONE]` alone with a
        // usage chunk to go before it (queued in `after`).
        if events.is_empty() {
            return match self.after.pop_front() {
                Some(next) => Relayed::Send(next),
                None => Relayed::Nothing,
            };
        }
        Relayed::Send(events)
    }

    /// The provider has nothing more for now: a `[DONE]` line that ended in
    /// a bare CR, the drain, the idle limit, or a keep-alive comment due.
    fn poll_quiet(&mut self, cx: &mut Context<'_>) -> Quiet {
        // `[DONE]`'s data line has come without the blank line after it
        // (or with a bare CR, no LF after it yet), and nothing more for
        // [`DONE_LINE_WAIT`]: ended here, as if the provider had sent it.
        // The answer is whole by then: the drain's deadline or the idle
        // limit meanwhile end it there too, not with an error.
        if let Some(end) = self.done_event_end(BodyNow::Quiet) {
            let wait = self
                .done_line_wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(DONE_LINE_WAIT)));
            let ended = wait.as_mut().poll(cx).is_ready()
                || self.waits.as_mut().poll_shutdown(cx).is_ready()
                || unbudgeted::poll(cx, |cx| self.waits.as_mut().idle().poll(cx)).is_ready();
            if ended {
                self.held = Some(Some(Ok(end)));
                return Quiet::DoneLineEnded;
            }
            return Quiet::Answer(Poll::Pending);
        }
        if self.waits.as_mut().poll_shutdown(cx).is_ready() {
            // Before the head, the error is the request's answer.
            let err = if self.head_sent {
                crate::drain::stream_ended_at_deadline()
            } else {
                crate::drain::unanswered_at_deadline()
            };
            return Quiet::Answer(Poll::Ready(Some(Err(err))));
        }
        // Outside the budget: a provider flooding comments spends it.
        let mut idle = self.waits.as_mut().idle();
        if unbudgeted::poll(cx, |cx| idle.as_mut().poll(cx)).is_ready()
            && !self.rearm_idle_timer(cx)
        {
            // Believed once the reads have had a moment more: after a
            // freeze of the process (SIGSTOP, a paused VM) the timer is met
            // at resume before the runtime has looked at the sockets, and
            // so before what the provider sent meanwhile.
            if !self.idle_seen_passed {
                self.idle_seen_passed = true;
                let mut timer = self.waits.as_mut().idle();
                timer.as_mut().reset(Instant::now() + IDLE_GRACE);
                let _ = unbudgeted::poll(cx, |cx| timer.as_mut().poll(cx));
                return Quiet::Answer(Poll::Pending);
            }
            return Quiet::Answer(Poll::Ready(Some(Err(self.idle_error()))));
        }
        // Comments go only between whole events, and only once the
        // head is out: before it, a silent upstream can still fail
        // over to another target.
        if self.head_sent && self.keepalive_due(cx) {
            let comment = if self.ended_in_cr {
                &KEEPALIVE_AFTER_CR
            } else {
                &KEEPALIVE
            };
            return Quiet::Answer(Poll::Ready(Some(Ok(comment.clone()))));
        }
        Quiet::Answer(Poll::Pending)
    }

    /// The idle timer fired: if an event came since it was armed, arm it
    /// for that event's deadline (and register the waker) and say so.
    /// The error of a stream whose idle limit (or first-byte deadline)
    /// passed, naming what it waited for.
    fn idle_error(&self) -> GatewayError {
        let awaited = if self.idle_between_events {
            Awaited::NextEvent
        } else if self.opening_held {
            Awaited::AnswerAfterOpening
        } else {
            Awaited::FirstEvent
        };
        upstream_errors::stream_idle(&self.provider, self.idle, awaited)
    }

    fn rearm_idle_timer(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.idle_between_events {
            return false;
        }
        let due = self.last_event + self.idle;
        if Instant::now() >= due {
            return false;
        }
        let mut timer = self.waits.as_mut().idle();
        timer.as_mut().reset(due);
        let _ = unbudgeted::poll(cx, |cx| timer.as_mut().poll(cx));
        true
    }

    /// Whether a keep-alive comment is due now; re-arms the timer either way.
    fn keepalive_due(&mut self, cx: &mut Context<'_>) -> bool {
        let last_write = self.last_write;
        let Some((every, mut timer)) = self.waits.as_mut().keepalive() else {
            return false;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let now = Instant::now();
        let due = last_write + every;
        let send = now >= due;
        timer.as_mut().reset(if send { now + every } else { due });
        let _ = timer.as_mut().poll(cx);
        if send {
            self.last_write = now;
        }
        send
    }
}

impl Stream for SseRelay {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = this.next_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &next
            && let Some(&last) = frame.last()
        {
            this.ended_in_cr = last == b'\r';
        }
        next
    }
}

impl SseRelay {
    /// The next frame for the client: one queued, or what the provider's
    /// stream brings (its events, a comment, or the error that ends it).
    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Infallible>>> {
        if let Some(frame) = self.queued.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if self.finished {
            return Poll::Ready(None);
        }
        match self.poll_upstream(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(events))) => {
                self.queued.extend(self.after.drain(..));
                Poll::Ready(Some(Ok(events)))
            }
            Poll::Ready(Some(Err(err))) => self.finish(Err(err)),
            Poll::Ready(None) => self.finish(Ok(())),
        }
    }

    /// The stream failed after its first event (its attempt counted as a
    /// success then): the provider cut it, fell silent, ended it unfinished
    /// or sent a server error event. Counted as the target's health as a
    /// failed attempt would be; the drain ending it, or a rate-limit or
    /// overloaded event, is not.
    fn count_against_the_circuit(&self, err: &GatewayError) {
        if matches!(classify(err), Verdict::Retry { unhealthy: true }) {
            self.breaker.late_failure();
        }
    }

    fn finish(&mut self, end: Result<(), GatewayError>) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.finished = true;
        match end {
            Ok(()) => {
                let end = match self.provider_error.take() {
                    Some(err) => {
                        self.count_against_the_circuit(&err);
                        StreamEnd::Failed(err)
                    }
                    None => StreamEnd::Complete,
                };
                self.stats.finish(end);
                Poll::Ready(None)
            }
            Err(err) => {
                self.count_against_the_circuit(&err);
                // After the first byte the status is already sent: end with
                // one error event and no [DONE], so SDKs raise.
                let event = err.sse_event();
                self.stats.finish(StreamEnd::Failed(err));
                Poll::Ready(Some(Ok(event)))
            }
        }
    }
}

/// The stream's first bytes without the byte order mark that may start an
/// event stream (and is no part of its first line: passed on, the first
/// event would not start with `data:`), however the reads split it, `seen`
/// counting its bytes in the reads before; `None` while the reads so far
/// are all the start of one.
fn strip_bom(seen: &mut u8, chunk: Bytes) -> Option<Bytes> {
    let before = usize::from(*seen);
    let wanted = &BOM[before..];
    let n = wanted.len().min(chunk.len());
    if chunk[..n] == wanted[..n] {
        let now = before + n;
        *seen = now as u8;
        return (now == BOM.len()).then(|| chunk.slice(n..));
    }
    // What looked like a mark's start was the stream's own first bytes:
    // put back in front.
    Some(match before {
        0 => chunk,
        before => Bytes::from([&BOM[..before], &chunk[..]].concat()),
    })
}

/// Whether held opening chunks end their blank line in the CR of a CR LF
/// the provider's write split: its LF began the next read, before that
/// read's first event, where the relay drops what comes before the head,
/// so it is owed after them.
fn lf_owed_after(held: &[u8]) -> bool {
    held.ends_with(b"\r\n\r")
}

#[cfg(test)]
mod tests;
