//! What the relay reads in the events it forwards: `[DONE]` (the stream
//! ends there), a provider's error event (redacted, the stream ends with
//! it) and usage (counted; a usage chunk the gateway asked for is hidden,
//! usage on a chunk with choices restated as the standard chunk for a
//! client that asked for it).

use super::SseRelay;
use crate::proxy::normalize::usage_chunk;
use crate::proxy::sse_events::{
    ErrorEventAs, carries_no_choice, find_done, provider_error_event, redacted_error_event,
};
use crate::proxy::sse_lines::{data_value, event_data, event_end, event_start, lines};
use crate::proxy::stream_stats::StreamEnd;
use crate::proxy::usage::{UsagePlace, lines_mentioning_usage, parse_usage};
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::ops::Range;

impl SseRelay {
    /// Notes `[DONE]`, a provider error event and usage in events about to
    /// be forwarded, and returns what to send now (the same bytes, unless a
    /// usage chunk must be inserted before `[DONE]`, in which case the rest
    /// is queued).
    pub(super) fn inspect(&mut self, mut events: Bytes, reads: u64) -> Bytes {
        // The stream ends with `[DONE]`'s event or a provider's error
        // event, whichever comes first: what the provider sent after it,
        // in this read or later, is neither relayed nor read (an error or
        // usage there must not change a finished answer, nor depend on how
        // the provider's writes fell into reads).
        let mut done_at = find_done(&events);
        if let Some(at) = done_at {
            if let Some(end) = event_end(&events, at) {
                if end < events.len() {
                    events = events.slice(..end);
                }
                self.lf_owed = events.ends_with(b"\r\n\r");
            }
        }
        if self.provider_error.is_none() {
            if let Some((found, event)) =
                provider_error_event(&events, &self.provider, self.answer_at)
            {
                let err = found.error;
                // Recorded now: a client that leaves once it has read the
                // event (SDKs raise on it) still logs the provider's error.
                if self.head_sent {
                    self.stats.finish(StreamEnd::Failed(err.clone()));
                }
                done_at = None;
                self.lf_owed = false;
                // Forwarded as it came, but never with the gateway's key,
                // and never as an error one of the SDKs would not raise on.
                let sent_as = if found.send_own {
                    ErrorEventAs::Replaced
                } else {
                    redacted_error_event(&events[event.clone()], &self.provider)
                };
                events = match sent_as {
                    ErrorEventAs::Sent => events.slice(..event.end),
                    ErrorEventAs::Redacted(redacted) => {
                        Bytes::from([&events[..event.start], &redacted].concat())
                    }
                    ErrorEventAs::Replaced => {
                        Bytes::from([&events[..event.start], &err.sse_event()[..]].concat())
                    }
                };
                // Before the head, the read starts at its first event;
                // opening prompt-filter chunks before the error are no
                // part of an answer either.
                self.error_came_first =
                    !self.head_sent && self.answer_at.is_none_or(|at| at >= event.start);
                self.provider_error = Some(err);
            }
        }
        if self.include_usage && self.first_chunk.as_ref().is_none_or(|c| c.wants_more()) {
            // For the usage chunk it may need to build: the first event,
            // and the next few while members are missing.
            let identity = self.first_chunk.get_or_insert_with(Box::default);
            let mut last_event = None;
            // Opening prompt-filter chunks hold no identity, only
            // placeholders: the reads for it start at the answer.
            let answer = if self.head_sent {
                0
            } else {
                self.answer_at.unwrap_or(events.len()).min(events.len())
            };
            for line in lines(&events[answer..]).filter(|line| data_value(line).is_some()) {
                let (event, data) = event_data(&events, line);
                if last_event.replace(event) == Some(event) {
                    continue;
                }
                identity.fill_from(data.trim_ascii());
                if !identity.wants_more() {
                    break;
                }
            }
        }
        self.stats.count_events(events.len(), reads);
        // Spans of `events` to replace, in order: a usage chunk kept back
        // (with nothing), a restated usage's own object (with `null`).
        let mut edits: SmallVec<[(Range<usize>, &'static [u8]); 1]> = SmallVec::new();
        let mut last_event = None;
        for line in lines_mentioning_usage(&events) {
            if data_value(line).is_none() {
                continue;
            }
            let (event, data) = event_data(&events, line);
            // An event whose data lines mention usage twice is read once.
            if last_event.replace(event) == Some(event) {
                continue;
            }
            let in_place = matches!(data, Cow::Borrowed(_));
            let data = data.trim_ascii();
            if let Some(report) = parse_usage(data) {
                // `{}` reports nothing: the stream keeps its estimate.
                if report.counted {
                    self.stats.set_usage(report.usage, report.place);
                }
                match report.place {
                    UsagePlace::TopLevel if carries_no_choice(data) => {
                        self.usage_chunk_seen = true;
                        if self.hide_usage_chunk {
                            let line_start = line.as_ptr() as usize - events.as_ptr() as usize;
                            if let Some(end) = event_end(&events, line_start + line.len()) {
                                edits.push((event_start(&events, line_start)..end, b""));
                            }
                        }
                    }
                    // On a chunk that still has choices: a client that
                    // asked for the standard chunk reads usage there, and
                    // only there, as OpenAI's chunks carry `"usage": null`
                    // before it (a client that adds up every chunk's usage,
                    // as LangChain does, would count it twice). An event of
                    // several data lines keeps its own.
                    UsagePlace::TopLevel => {
                        if self.include_usage && in_place {
                            let at = data.as_ptr() as usize - events.as_ptr() as usize;
                            let span = report.raw_span();
                            edits.push((at + span.start..at + span.end, b"null"));
                        }
                        self.keep_to_restate(report);
                    }
                    UsagePlace::InChoice => self.keep_to_restate(report),
                }
            }
        }
        if !edits.is_empty() {
            let mut kept = BytesMut::with_capacity(events.len());
            let mut from = 0;
            for (range, with) in edits {
                kept.extend_from_slice(&events[from..range.start]);
                kept.extend_from_slice(with);
                from = range.end;
            }
            kept.extend_from_slice(&events[from..]);
            events = kept.freeze();
            // Rare (a usage chunk, a usage restated): `[DONE]` moved.
            done_at = done_at.and_then(|_| find_done(&events));
        }
        let Some(done_at) = done_at else {
            return events;
        };
        self.stats.mark_done();
        // Complete once `[DONE]` is handed on: a client that hangs up on
        // it, before the provider's body ends, got the whole answer.
        if self.head_sent {
            self.stats.finish(StreamEnd::Complete);
        }
        if !self.include_usage || self.usage_chunk_seen {
            return events;
        }
        let Some(report) = self.usage_to_restate.take() else {
            return events;
        };
        // Split where `[DONE]`'s event starts (its `id:` line goes with it).
        let done_event = event_start(&events, done_at);
        self.after
            .push_back(usage_chunk(&report, self.first_chunk.as_deref()));
        self.after.push_back(events.slice(done_event..));
        events.slice(..done_event)
    }
}

impl SseRelay {
    /// Keeps `report` for the standard usage chunk, unless it counts
    /// nothing (`{}`) and a report that counts is kept already.
    fn keep_to_restate(&mut self, report: crate::proxy::usage::UsageReport) {
        // As the stream is settled (`StreamStats::set_usage`): a later
        // report of nothing, `{}` or all zeros, does not undo one that
        // counted.
        let counts =
            |kept: &crate::proxy::usage::UsageReport| kept.counted && !kept.usage.counts_nothing();
        if counts(&report)
            || self
                .usage_to_restate
                .as_ref()
                .is_none_or(|kept| !counts(kept))
        {
            self.usage_to_restate = Some(report);
        }
    }
}

/// Whether `answer`, a stream's first events from the answer's first on
/// (past opening prompt-filter chunks, with `[DONE]` in them), hold no
/// data before `[DONE]`: a stream that ends before a single chunk of an
/// answer. Its first data line is `[DONE]`'s (read from the start: the
/// whole of a short stream often comes in one read).
pub(super) fn done_without_answer(answer: &[u8]) -> bool {
    lines(answer)
        .find_map(data_value)
        .is_some_and(|data| data.starts_with(b"[DONE]"))
}
