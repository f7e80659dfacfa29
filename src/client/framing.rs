//! How a provider's response body ends (RFC 9112 section 6.3): after a
//! `Content-Length`, at the last chunk of a chunked body, or when the
//! connection closes. Decodes a body out of the connection's read buffer
//! without copying: each frame is a slice of the bytes as they were read.

use super::UpstreamError;
use super::chunk_lines::{SizeLine, TrailerLine, chunk_size_line, trailer_line};
use bytes::{Buf, Bytes, BytesMut};

/// A chunk-size line (size, extensions) longer than this is refused: it is
/// either garbage or a peer trying to make the gateway buffer without end.
const MAX_CHUNK_LINE: usize = 4096;
/// Trailer fields after the last chunk are checked and dropped, up to this
/// many bytes.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a body is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    /// A chunked body, at the given point of a chunk.
    Chunked(Chunk),
    /// Everything until the provider closes the connection.
    UntilClose,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of the current chunk's data are still to come.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last (zero-size) chunk: trailer fields, then an empty
    /// line; the bytes of trailer lines read so far.
    Trailers(u32),
}

/// What the bytes read so far give.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Frame(Bytes),
    /// More bytes must be read first.
    NeedMore,
    End,
}

impl Framing {
    pub fn chunked() -> Framing {
        Framing::Chunked(Chunk::Size)
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done)
    }

    /// Bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(*n),
            Framing::Done => Some(0),
            _ => None,
        }
    }

    /// Bytes the framing has announced and not yet delivered: the rest of
    /// a `Content-Length`, or of the chunk being read (a body's next bytes
    /// can be refused as too large before they arrive).
    pub fn announced(&self) -> u64 {
        match self {
            Framing::Length(n) | Framing::Chunked(Chunk::Data(n)) => *n,
            _ => 0,
        }
    }

    /// Takes the next frame (or the end) out of `buf`, consuming framing
    /// bytes as it goes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, UpstreamError> {
        loop {
            match self {
                Framing::Done => return Ok(Decoded::End),
                Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Decoded::End);
                }
                Framing::Length(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = take_len(*remaining, buf.len());
                    *remaining -= n as u64;
                    return Ok(Decoded::Frame(buf.split_to(n).freeze()));
                }
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Frame(buf.split().freeze()));
                }
                Framing::Chunked(chunk) => match chunk {
                    Chunk::Size => {
                        // Only the first MAX_CHUNK_LINE bytes are looked at:
                        // a line still not over by then is refused.
                        let line = &buf[..buf.len().min(MAX_CHUNK_LINE)];
                        match chunk_size_line(line).map_err(UpstreamError::InvalidBody)? {
                            SizeLine::Complete { len, size } => {
                                buf.advance(len);
                                *chunk = if size == 0 {
                                    Chunk::Trailers(0)
                                } else {
                                    Chunk::Data(size)
                                };
                            }
                            SizeLine::Partial if line.len() < MAX_CHUNK_LINE => {
                                return Ok(Decoded::NeedMore);
                            }
                            SizeLine::Partial => {
                                return Err(UpstreamError::InvalidBody("chunk size line too long"));
                            }
                        }
                    }
                    Chunk::Data(remaining) => {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let n = take_len(*remaining, buf.len());
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            *chunk = Chunk::DataEnd;
                        }
                        return Ok(Decoded::Frame(buf.split_to(n).freeze()));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(UpstreamError::InvalidBody("chunk data not ended by CRLF"));
                        }
                        buf.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers(seen) => {
                        // A line at a time, each checked, so no line can
                        // hide the start of the next message; the limit
                        // counts the lines already read too.
                        let room = MAX_TRAILERS - *seen as usize;
                        let line = &buf[..buf.len().min(room)];
                        match trailer_line(line).map_err(UpstreamError::InvalidBody)? {
                            TrailerLine::Field(len) => {
                                buf.advance(len);
                                *seen += len as u32;
                            }
                            TrailerLine::End(len) => {
                                buf.advance(len);
                                *self = Framing::Done;
                                return Ok(Decoded::End);
                            }
                            TrailerLine::Partial if line.len() < room => {
                                return Ok(Decoded::NeedMore);
                            }
                            TrailerLine::Partial => {
                                return Err(UpstreamError::InvalidBody("trailer fields too large"));
                            }
                        }
                    }
                },
            }
        }
    }

    /// The connection closed (read returned no bytes) while `decode` wanted
    /// more: the end of an until-close body, an error for any other.
    pub fn at_close(&mut self) -> Result<Decoded, UpstreamError> {
        match self {
            Framing::UntilClose | Framing::Done => {
                *self = Framing::Done;
                Ok(Decoded::End)
            }
            _ => Err(UpstreamError::BodyIncomplete),
        }
    }
}

fn take_len(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes and gathers the frames.
    fn decode_in_steps(
        mut framing: Framing,
        wire: &[u8],
        step: usize,
        close_at_end: bool,
    ) -> Result<(Vec<u8>, BytesMut), UpstreamError> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match framing.decode(&mut buf)? {
                Decoded::Frame(frame) => {
                    assert!(!frame.is_empty(), "no empty frames");
                    body.extend_from_slice(&frame);
                }
                Decoded::End => return Ok((body, buf)),
                Decoded::NeedMore if fed < wire.len() => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
                Decoded::NeedMore => {
                    assert!(close_at_end, "wanted more after the whole input");
                    match framing.at_close()? {
                        Decoded::End => return Ok((body, buf)),
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";

    #[test]
    fn chunked_bodies_decode_the_same_however_the_bytes_arrive() {
        for step in 1..=CHUNKED.len() {
            let (body, rest) = decode_in_steps(Framing::chunked(), CHUNKED, step, false).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
            // What follows the body stays for the next response.
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn a_last_chunk_without_trailers_ends_the_body() {
        let (body, rest) =
            decode_in_steps(Framing::chunked(), b"3\r\nabc\r\n0\r\n\r\n", 1, false).unwrap();
        assert_eq!(body, b"abc");
        assert!(rest.is_empty());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        for step in 1..=12 {
            let (body, rest) =
                decode_in_steps(Framing::Length(10), b"0123456789AB", step, false).unwrap();
            assert_eq!(body, b"0123456789");
            assert!(b"AB".starts_with(&rest));
        }
        let (body, _) = decode_in_steps(Framing::Length(0), b"", 1, false).unwrap();
        assert!(body.is_empty());
    }

    #[test]
    fn until_close_bodies_end_at_the_close() {
        let (body, _) = decode_in_steps(Framing::UntilClose, b"all of it", 4, true).unwrap();
        assert_eq!(body, b"all of it");
    }

    #[test]
    fn a_close_before_the_end_is_an_incomplete_body() {
        for (framing, wire) in [
            (Framing::Length(10), &b"01234"[..]),
            (Framing::chunked(), b"5\r\nhel"),
            (Framing::chunked(), b"5\r\nhello\r\n"),
            (Framing::chunked(), b"0\r\n"),
        ] {
            let err = decode_in_steps(framing, wire, 3, true).unwrap_err();
            assert!(
                matches!(err, UpstreamError::BodyIncomplete),
                "{wire:?}: {err}"
            );
        }
    }

    /// Size lines with extensions in every form the grammar allows decode
    /// to the same body, however the bytes arrive.
    #[test]
    fn chunk_extensions_are_read_and_dropped() {
        let wire: &[u8] = b"5;a\r\nhello\r\n1 ; b = c\t;d\r\n \r\n\
            A;q=\"x \\\" ; y\";r=\"\"\r\n0123456789\r\n\
            0000000000000001\r\n!\r\n0;last=\"\\\\\"\r\n\r\nNEXT";
        for step in 1..=wire.len() {
            let (body, rest) = decode_in_steps(Framing::chunked(), wire, step, false)
                .unwrap_or_else(|err| panic!("step {step}: {err}"));
            assert_eq!(body, b"hello 0123456789!", "step {step}");
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    /// Each way a size line can be read two ways (a bare LF, whitespace
    /// where the grammar has none, no size at all) is an error, whatever
    /// the reads it arrives in.
    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"ffffffffffffffffffff\r\n",
            b"\r\n\r\n",
            b";a\r\n",
            b"5 \r\nhello\r\n",
            b"5\t\r\nhello\r\n",
            b" 5\r\nhello\r\n",
            b"5\nhello\r\n",
            b"0\n\r\n",
            b"2;\nXX\r\n",
            b"5;a\nhello\r\n",
            b"5;a=\"b\nc\"\r\n",
            b"5;\r\nhello\r\n",
            b"5;a=\r\nhello\r\n",
            b"5;a b\r\nhello\r\n",
            b"5;a=b c\r\nhello\r\n",
            b"5;a=\"b\r\nhello\r\n",
            b"5;a=\"\x01\"\r\nhello\r\n",
            b"5;a@b\r\nhello\r\n",
            b"5\rX",
            b"0x5\r\nhello\r\n",
            b"+5\r\nhello\r\n",
        ] {
            for step in 1..=wire.len() {
                match decode_in_steps(Framing::chunked(), wire, step, true) {
                    Err(UpstreamError::InvalidBody(_)) => {}
                    other => panic!("{:?} step {step}: {other:?}", String::from_utf8_lossy(wire)),
                }
            }
        }
        let err = decode_in_steps(Framing::chunked(), b"2;\nXX\r\n", 64, true).unwrap_err();
        assert!(err.to_string().contains("bare LF"), "{err}");
        let endless_line = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_in_steps(Framing::chunked(), &endless_line, 512, true).is_err());
        let mut endless_extension = b"5;a=".to_vec();
        endless_extension.resize(MAX_CHUNK_LINE + 1, b'b');
        match decode_in_steps(Framing::chunked(), &endless_extension, 512, true) {
            Err(UpstreamError::InvalidBody(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    /// Trailer sections as a peer sends them: each ends the body, and
    /// only what follows the empty line is left for the next message.
    #[test]
    fn well_formed_trailer_sections_end_the_body() {
        for trailers in [
            &b"\r\n"[..],
            b"x-a: 1\r\n\r\n",
            b"x-a:1\r\nX-B: \t two  words \r\n\r\n",
            b"x-empty:\r\n\r\n",
            b"x-obs: caf\xc3\xa9\r\n\r\n",
            b"!#$%&'*+-.^_`|~09az: v\r\n\r\n",
        ] {
            let mut wire = b"3\r\nabc\r\n0\r\n".to_vec();
            wire.extend_from_slice(trailers);
            wire.extend_from_slice(b"NEXT");
            for step in 1..=wire.len() {
                let (body, rest) = decode_in_steps(Framing::chunked(), &wire, step, false)
                    .unwrap_or_else(|err| panic!("{trailers:?} step {step}: {err}"));
                assert_eq!(body, b"abc");
                assert!(
                    b"NEXT".starts_with(&rest),
                    "{trailers:?} step {step}: {rest:?}"
                );
            }
        }
    }

    /// A trailer section is read a line at a time and each line must be a
    /// field line ended by CRLF: anything else is an error, never skipped,
    /// or the bytes after it (another request, on the server side) would
    /// be read differently by the gateway and a peer that ends lines at a
    /// bare LF.
    #[test]
    fn malformed_trailer_sections_are_errors() {
        let smuggled = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
        let cases = [
            (
                "an empty line ended by a bare LF",
                format!("\nPOST / HTTP/1.1\r\n{smuggled}"),
            ),
            ("a request line", smuggled.to_string()),
            ("a field ended by a bare LF", "x-a: 1\n\r\n".to_string()),
            ("a bare LF after a field", format!("x-a: 1\r\n\n{smuggled}")),
            ("a folded line", "x-a: 1\r\n folded\r\n\r\n".to_string()),
            ("a space before the colon", "x-a : 1\r\n\r\n".to_string()),
            ("no name", ": 1\r\n\r\n".to_string()),
            ("no colon", "x-a\r\n\r\n".to_string()),
            ("a control byte", "x-a: 1\x012\r\n\r\n".to_string()),
            ("a CR inside the value", "x-a: 1\r2\r\n\r\n".to_string()),
            ("DEL", "x-a: 1\x7f\r\n\r\n".to_string()),
            ("a CR not followed by LF", "\rX".to_string()),
        ];
        for (what, trailers) in cases {
            let wire = format!("3\r\nabc\r\n0\r\n{trailers}");
            for step in 1..=wire.len() {
                match decode_in_steps(Framing::chunked(), wire.as_bytes(), step, true) {
                    Err(UpstreamError::InvalidBody(_)) => {}
                    other => panic!("{what}, step {step}: {other:?}"),
                }
            }
        }
        let err = decode_in_steps(Framing::chunked(), b"0\r\n\nGET", 64, false).unwrap_err();
        assert!(err.to_string().contains("bare LF"), "{err}");
    }

    #[test]
    fn trailer_sections_over_the_limit_are_errors() {
        // Many valid lines, and one line that never ends.
        let mut many = b"0\r\n".to_vec();
        while many.len() <= MAX_TRAILERS {
            many.extend_from_slice(b"x-trailer: 0123456789\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let mut endless = b"0\r\nx-trailer: ".to_vec();
        endless.resize(MAX_TRAILERS + 16, b'a');
        for wire in [many, endless] {
            match decode_in_steps(Framing::chunked(), &wire, 1000, true) {
                Err(UpstreamError::InvalidBody(what)) => {
                    assert!(what.contains("large"), "{what}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn frames_are_slices_of_the_read_buffer() {
        let mut buf = BytesMut::from(&b"4\r\nabcd\r\n"[..]);
        let start = buf.as_ptr() as usize;
        let mut framing = Framing::chunked();
        let Decoded::Frame(frame) = framing.decode(&mut buf).unwrap() else {
            panic!("a frame");
        };
        assert_eq!(frame.as_ptr() as usize, start + 3, "no copy");
    }
}
