//! Whether an HTTP head that is arriving in pieces can be complete yet,
//! judged from the bytes new since the last look: parsing the whole head
//! again on every read made a head trickled in a byte at a time cost time
//! quadratic in its size (a 60 KB head written in small pieces took the
//! gateway 0.4 s of CPU to parse; from a client, before any key is
//! checked).
//!
//! A head is parsed as soon as its first bytes are read (nearly every head
//! comes whole in one read, and a malformed start is refused at once). Only
//! after that parse found the head incomplete are later reads searched, and
//! only their new bytes (and the two before them, where a line end may have
//! begun), for the empty line that ends a head; the parser runs again once
//! one is there, or once the bytes reach the head's size limit (for the
//! parser to refuse). A head whose fault comes after its start is refused
//! when its end (or the limit) comes, not at the read that brought the
//! fault.

/// Where a connection's next head stands.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadEnd {
    /// Bytes of the buffer already searched, after a parse that found the
    /// head incomplete; 0 until then.
    searched: usize,
}

impl HeadEnd {
    /// Whether parsing `buf` (the head's bytes so far: the same buffer,
    /// grown, since the last call) could find a whole head, or a head the
    /// parser refuses for its size (`limit` bytes or more).
    pub fn worth_parsing(&mut self, buf: &[u8], limit: usize) -> bool {
        if self.searched == 0 || buf.len() >= limit {
            return true;
        }
        if buf.len() <= self.searched {
            return false;
        }
        let from = self.searched.saturating_sub(2);
        let ended = memchr::memchr_iter(b'\n', &buf[from..]).any(|at| {
            let after = &buf[from + at + 1..];
            after.first() == Some(&b'\n') || after.starts_with(b"\r\n")
        });
        if !ended {
            self.searched = buf.len();
        }
        ended
    }

    /// The parser found `buf_len` bytes an incomplete head.
    pub fn incomplete(&mut self, buf_len: usize) {
        self.searched = buf_len.max(1);
    }

    /// A head was parsed (or the connection is done with this one): the
    /// next starts afresh.
    pub fn reset(&mut self) {
        self.searched = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes; returns the lengths at which
    /// a parse would run after the first.
    fn parses(wire: &[u8], step: usize, limit: usize) -> Vec<usize> {
        let mut end = HeadEnd::default();
        let mut seen = Vec::new();
        let mut first = true;
        for len in (step..wire.len() + step).step_by(step) {
            let buf = &wire[..len.min(wire.len())];
            if end.worth_parsing(buf, limit) {
                if !first {
                    seen.push(buf.len());
                }
                first = false;
                end.incomplete(buf.len());
            }
        }
        seen
    }

    #[test]
    fn the_first_look_always_parses() {
        let mut end = HeadEnd::default();
        assert!(end.worth_parsing(b"G", 100));
    }

    #[test]
    fn after_an_incomplete_parse_only_a_head_end_or_the_limit_parses_again() {
        let head = b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx-b: 2\r\n\r\n";
        for step in 1..head.len() {
            let seen = parses(head, step, 1000);
            // Once, when the empty line is complete (the first look may
            // have had it whole already).
            assert!(seen.len() <= 1, "step {step}: {seen:?}");
            if let Some(&at) = seen.first() {
                assert!(at >= head.len(), "step {step}: parsed at {at}");
            }
        }
    }

    #[test]
    fn every_kind_of_empty_line_ends_a_head_across_any_cut() {
        for ending in [&b"\r\n\r\n"[..], b"\n\n", b"\r\n\n", b"\n\r\n"] {
            let mut wire = b"HTTP/1.1 200 OK\r\nx-a: 1".to_vec();
            wire.extend_from_slice(ending);
            for cut in 1..wire.len() {
                let mut end = HeadEnd::default();
                assert!(end.worth_parsing(&wire[..cut], 1000));
                end.incomplete(cut);
                assert!(end.worth_parsing(&wire, 1000), "{ending:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_head_at_its_limit_is_parsed_to_be_refused() {
        let mut end = HeadEnd::default();
        let wire = vec![b'a'; 64];
        assert!(end.worth_parsing(&wire[..10], 64));
        end.incomplete(10);
        assert!(!end.worth_parsing(&wire[..63], 64));
        assert!(end.worth_parsing(&wire, 64));
    }

    #[test]
    fn no_new_bytes_no_parse_and_reset_starts_afresh() {
        let mut end = HeadEnd::default();
        end.incomplete(5);
        assert!(!end.worth_parsing(b"abcde", 100));
        end.reset();
        assert!(end.worth_parsing(b"abcde", 100));
    }

    #[test]
    fn a_head_trickled_in_is_parsed_again_once() {
        // A 60 KB head a byte at a time: parsed once more, at its end.
        let mut wire = b"GET / HTTP/1.1\r\nx-pad: ".to_vec();
        wire.resize(60_000, b'a');
        wire.extend_from_slice(b"\r\n\r\n");
        let mut end = HeadEnd::default();
        end.incomplete(1);
        let mut parses = 0;
        for len in 2..=wire.len() {
            if end.worth_parsing(&wire[..len], 64 * 1024) {
                parses += 1;
                end.incomplete(len);
            }
        }
        assert_eq!(parses, 1);
    }
}
