//! Reads already waiting go out together: one frame of at most
//! [`GATHER_LIMIT`] bytes instead of one HTTP chunk per provider write.

use super::SseRelay;
use bytes::{Bytes, BytesMut};
use std::task::{Context, Poll};

/// Events already read when a frame goes out are sent with it, up to this
/// many bytes: a provider that writes each event as its own HTTP chunk then
/// costs one chunk to encode (and one for the client to decode) per read,
/// not one per event. Larger reads go out as they are, without a copy.
pub(super) const GATHER_LIMIT: usize = 16 * 1024;

/// A gathered frame's first capacity, at least.
const GATHER_START: usize = 4 * 1024;

impl SseRelay {
    /// `events` followed by the complete events of reads that are already
    /// waiting (no waiting for more), as one frame of at most about
    /// [`GATHER_LIMIT`] bytes, and how many reads it holds. An item that does
    /// not fit is held for the next poll.
    pub(super) fn gather_ready(&mut self, cx: &mut Context<'_>, events: Bytes) -> (Bytes, u64) {
        let mut batch = BytesMut::new();
        let mut reads = 1;
        let gathered = |batch: &BytesMut| events.len().max(batch.len());
        // A partial event growing past the limit too ends the gathering:
        // the main loop holds it to `max_event_bytes`.
        while gathered(&batch) < GATHER_LIMIT && self.aligner.pending_len() < GATHER_LIMIT {
            let chunk = match self.upstream.as_mut().poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(chunk))) if gathered(&batch) + chunk.len() <= GATHER_LIMIT => {
                    chunk
                }
                Poll::Ready(item) => {
                    self.held = Some(item);
                    break;
                }
            };
            if let Some(more) = self.aligner.push(chunk) {
                if batch.is_empty() {
                    // Room for several more reads without growing (a
                    // provider's burst of small events is a few KiB).
                    let room = (4 * (events.len() + more.len())).max(GATHER_START);
                    batch.reserve(GATHER_LIMIT.min(room));
                    batch.extend_from_slice(&events);
                }
                batch.extend_from_slice(&more);
                reads += 1;
            }
        }
        if batch.is_empty() {
            (events, reads)
        } else {
            (batch.freeze(), reads)
        }
    }
}
