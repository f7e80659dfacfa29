//! What happened to one streamed response, written by the relay as it goes and
//! read once when the response body is dropped (the access log).

use super::usage::{Usage, UsagePlace};
use crate::error::GatewayError;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::time::Instant;

/// How a stream ended.
#[derive(Debug, Clone)]
pub enum StreamEnd {
    /// The upstream finished with `[DONE]`.
    Complete,
    /// The stream was ended with an error event.
    Failed(GatewayError),
}

/// Shared between the relay (writer) and the access log (reader).
#[derive(Debug)]
pub struct StreamStats {
    /// When the client's request arrived.
    arrived: Instant,
    first_event: std::sync::OnceLock<Instant>,
    events_bytes: AtomicU64,
    /// Upstream reads that completed at least one event.
    reads: AtomicU64,
    saw_done: AtomicBool,
    usage: Mutex<Option<(Usage, UsagePlace)>>,
    end: Mutex<Option<StreamEnd>>,
}

impl StreamStats {
    pub fn new(arrived: Instant) -> Self {
        StreamStats {
            arrived,
            first_event: std::sync::OnceLock::new(),
            events_bytes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            saw_done: AtomicBool::new(false),
            usage: Mutex::new(None),
            end: Mutex::new(None),
        }
    }

    /// The first event was ready to go to the client at `at`.
    pub fn mark_first_event(&self, at: Instant) {
        let _ = self.first_event.set(at);
    }

    /// When the first event was ready to go to the client.
    pub fn first_event(&self) -> Option<Instant> {
        self.first_event.get().copied()
    }

    /// Time to first token: from the request's arrival to the first event.
    pub fn first_event_after(&self) -> Option<std::time::Duration> {
        self.first_event.get().map(|t| *t - self.arrived)
    }

    /// How long the stream has run since its first event.
    pub fn streaming_for(&self) -> Option<std::time::Duration> {
        self.first_event.get().map(Instant::elapsed)
    }

    /// Events relayed: `bytes` of them, from `reads` upstream reads.
    pub fn count_events(&self, bytes: usize, reads: u64) {
        self.events_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.reads.fetch_add(reads, Ordering::Relaxed);
    }

    /// Reads counted that were not relayed after all: the opening
    /// prompt-filter chunks dropped.
    pub fn uncount_reads(&self, reads: u64) {
        self.reads.fetch_sub(reads, Ordering::Relaxed);
    }

    pub fn mark_done(&self) {
        self.saw_done.store(true, Ordering::Relaxed);
    }

    pub fn saw_done(&self) -> bool {
        self.saw_done.load(Ordering::Relaxed)
    }

    /// The stream's usage is its last report, but a report of all zeros
    /// after one that counted (some servers send zeros in every chunk)
    /// does not undo that count.
    pub fn set_usage(&self, usage: Usage, place: UsagePlace) {
        let mut held = self.usage.lock().expect("stats lock");
        if usage.counts_nothing() && held.is_some_and(|(had, _)| !had.counts_nothing()) {
            return;
        }
        *held = Some((usage, place));
    }

    pub fn usage(&self) -> Option<(Usage, UsagePlace)> {
        *self.usage.lock().expect("stats lock")
    }

    pub fn finish(&self, end: StreamEnd) {
        self.end.lock().expect("stats lock").get_or_insert(end);
    }

    /// `None` while the stream has not ended (or the client left first).
    pub fn end(&self) -> Option<StreamEnd> {
        self.end.lock().expect("stats lock").clone()
    }

    pub fn bytes(&self) -> u64 {
        self.events_bytes.load(Ordering::Relaxed)
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}
