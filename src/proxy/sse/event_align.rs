//! Event alignment for the stream relay: incoming reads are cut at the last
//! complete SSE event boundary, so the client never sees half an event and
//! comments or an error event can always be inserted cleanly. Reads that end
//! on a boundary (the common case) pass through without a copy.

use crate::proxy::sse_lines::last_event_end;
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

    /// Bytes held of an event not yet complete.
    pub fn pending_len(&self) -> usize {
        self.tail.len()
    }

    /// The bytes held of an event not yet complete.
    pub fn pending(&self) -> &[u8] {
        &self.tail
    }

    /// The bytes after the last whole event, once the stream has ended.
    pub fn take_rest(&mut self) -> Option<Bytes> {
        (!self.tail.is_empty()).then(|| self.tail.split().freeze())
    }

    /// Bytes of an event that never ended (line ends alone are none: the
    /// LF of a CRLF whose CR ended the last event may be all that is left).
    pub fn has_partial(&self) -> bool {
        self.tail.iter().any(|&b| !matches!(b, b'\n' | b'\r'))
    }
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
        assert_eq!(push_all(&["data: a\r", "\r"]), ["data: a\r\r"]);
        assert_eq!(push_all(&["data: a\r\n\r", "\n"]), ["data: a\r\n\r"]);
    }

    #[test]
    fn line_ends_left_over_are_no_partial_event() {
        let mut aligner = EventAligner::default();
        aligner.push(Bytes::from_static(b"data: a\r\r"));
        aligner.push(Bytes::from_static(b"\n"));
        assert!(!aligner.has_partial());
        aligner.push(Bytes::from_static(b"data: b"));
        assert!(aligner.has_partial());
    }

    #[test]
    fn comments_are_events_too() {
        assert_eq!(push_all(&[": ping\n\n"]), [": ping\n\n"]);
    }
}
