//! Event alignment for the stream relay: incoming reads are cut at the last
//! complete SSE event boundary, so the client never sees half an event and
//! comments or an error event can always be inserted cleanly. Reads that end
//! on a boundary (the common case) pass through without a copy.

use bytes::{Bytes, BytesMut};

/// Splits incoming bytes at the last complete event boundary.
#[derive(Debug, Default)]
pub struct EventAligner {
    tail: BytesMut,
}

impl EventAligner {
    /// Returns the complete events now available (zero-copy when the chunk
    /// ends on a boundary, the common case), keeping any partial event.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.tail.is_empty() {
            match last_event_end(&chunk) {
                Some(end) if end == chunk.len() => Some(chunk),
                Some(end) => {
                    self.tail.extend_from_slice(&chunk[end..]);
                    Some(chunk.slice(..end))
                }
                None => {
                    self.tail.extend_from_slice(&chunk);
                    None
                }
            }
        } else {
            // A boundary may straddle the join: look back two bytes.
            let from = self.tail.len().saturating_sub(2);
            self.tail.extend_from_slice(&chunk);
            let end = last_event_end(&self.tail[from..])?;
            Some(self.tail.split_to(from + end).freeze())
        }
    }

    /// Bytes of an event that never ended.
    pub fn has_partial(&self) -> bool {
        !self.tail.is_empty()
    }
}

/// Index just past the last `\n\n` (or `\n\r\n`) in `data`.
fn last_event_end(data: &[u8]) -> Option<usize> {
    // The common case, a read that ends on an event boundary, costs nothing.
    if data.ends_with(b"\n\n") {
        return Some(data.len());
    }
    let lf = memchr::memmem::rfind(data, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memchr(b'\r', data)
        .and_then(|_| memchr::memmem::rfind(data, b"\n\r\n"))
        .map(|i| i + 3);
    lf.max(crlf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_all(chunks: &[&str]) -> Vec<String> {
        let mut aligner = EventAligner::default();
        chunks
            .iter()
            .filter_map(|c| aligner.push(Bytes::copy_from_slice(c.as_bytes())))
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn whole_events_pass_untouched() {
        assert_eq!(
            push_all(&["data: a\n\ndata: b\n\n"]),
            ["data: a\n\ndata: b\n\n"]
        );
    }

    #[test]
    fn split_events_are_held_until_complete() {
        assert_eq!(
            push_all(&["data: a\n\ndata: b", "b\n", "\ndata: c\n\n"]),
            ["data: a\n\n", "data: bb\n\ndata: c\n\n"]
        );
    }

    #[test]
    fn boundary_straddling_two_chunks() {
        assert_eq!(push_all(&["data: a\n", "\n"]), ["data: a\n\n"]);
        assert_eq!(push_all(&["data: a\r\n", "\r\n"]), ["data: a\r\n\r\n"]);
    }

    #[test]
    fn comments_are_events_too() {
        assert_eq!(push_all(&[": ping\n\n"]), [": ping\n\n"]);
    }
}
