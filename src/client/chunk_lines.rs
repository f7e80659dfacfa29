//! The lines of the chunked coding itself (RFC 9112 section 7.1), read
//! strictly: trailer field lines after the last chunk. A line that another
//! HTTP parser could end or split elsewhere (a bare LF, a CR alone, a byte
//! no field line may hold) is an error, not a guess: on the server side the
//! bytes after a body are the next request, and two parsers that disagree
//! on where a body ends disagree on what that request is.

/// The next line of a trailer section, at the start of the bytes given.
#[derive(Debug, PartialEq, Eq)]
pub enum TrailerLine {
    /// A field line of this many bytes, CRLF included (its field is
    /// dropped: the gateway forwards no trailers).
    Field(usize),
    /// The empty line that ends the section: this many bytes (2).
    End(usize),
    /// Valid so far; the line's end has not arrived.
    Partial,
}

const BARE_LF_IN_TRAILERS: &str = "trailer section line ended by a bare LF";
const CR_WITHOUT_LF: &str = "CR not followed by LF in the trailer section";
const INVALID_TRAILER: &str = "invalid trailer field line";

/// Reads the trailer line `buf` starts with: `field-name ":" field-value
/// CRLF`, or CRLF alone. The name is a token (no whitespace before the
/// colon, no folded continuation line); the value holds no control bytes
/// but HTAB. Checked byte by byte, so a line that cannot become valid is
/// refused before its end arrives.
pub fn trailer_line(buf: &[u8]) -> Result<TrailerLine, &'static str> {
    let name = buf.iter().take_while(|b| is_tchar(**b)).count();
    let mut at = match buf.get(name) {
        None => return Ok(TrailerLine::Partial),
        Some(b':') if name > 0 => name + 1,
        Some(b'\r') if name == 0 => {
            return line_end(buf, 0).map(|end| end.map_or(TrailerLine::Partial, TrailerLine::End));
        }
        Some(b'\n') => return Err(BARE_LF_IN_TRAILERS),
        Some(_) => return Err(INVALID_TRAILER),
    };
    loop {
        match buf.get(at) {
            None => return Ok(TrailerLine::Partial),
            Some(b'\r') => break,
            Some(b'\n') => return Err(BARE_LF_IN_TRAILERS),
            Some(&byte) if is_field_value_byte(byte) => at += 1,
            Some(_) => return Err(INVALID_TRAILER),
        }
    }
    Ok(line_end(buf, at)?.map_or(TrailerLine::Partial, TrailerLine::Field))
}

/// The CRLF at `at` (where a CR is): the line's length through it, or
/// `None` while the LF has not arrived.
fn line_end(buf: &[u8], at: usize) -> Result<Option<usize>, &'static str> {
    match buf.get(at + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(at + 2)),
        Some(_) => Err(CR_WITHOUT_LF),
    }
}

/// `tchar` (RFC 9110 section 5.6.2): the bytes of a token.
pub fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A byte a field value may hold (RFC 9110 section 5.5): visible ASCII,
/// space, HTAB and obs-text; no other control byte.
fn is_field_value_byte(byte: u8) -> bool {
    byte == b'\t' || (byte >= b' ' && byte != 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lines_and_the_end_of_the_section() {
        let cases: [(&[u8], TrailerLine); 7] = [
            (b"\r\nNEXT", TrailerLine::End(2)),
            (b"x-a: 1\r\n\r\n", TrailerLine::Field(8)),
            (b"x-a:\r\n", TrailerLine::Field(6)),
            (b"x-a: \tv w\t\r\n", TrailerLine::Field(12)),
            (b"x-a: caf\xc3\xa9\r\n", TrailerLine::Field(12)),
            (b"x-a: 1", TrailerLine::Partial),
            (b"x-a: 1\r", TrailerLine::Partial),
        ];
        for (line, expected) in cases {
            assert_eq!(trailer_line(line), Ok(expected), "{line:?}");
        }
        for partial in [&b""[..], b"\r", b"x", b"x-a"] {
            assert_eq!(
                trailer_line(partial),
                Ok(TrailerLine::Partial),
                "{partial:?}"
            );
        }
    }

    #[test]
    fn anything_else_is_refused_as_soon_as_it_shows() {
        for line in [
            &b"\n"[..],
            b"x-a: 1\n",
            b"\rX",
            b"x-a: 1\rX",
            b"GET / HTTP/1.1\r\n",
            b"x-a : 1\r\n",
            b" folded\r\n",
            b"\tfolded\r\n",
            b": 1\r\n",
            b"x-a\r\n",
            b"x-a: \x00",
            b"x-a: \x1b",
            b"x-a: \x7f",
            b"x(a): 1\r\n",
        ] {
            assert!(trailer_line(line).is_err(), "{line:?}");
        }
        assert_eq!(trailer_line(b"\n"), Err(BARE_LF_IN_TRAILERS));
        assert_eq!(trailer_line(b"x-a: 1\n"), Err(BARE_LF_IN_TRAILERS));
    }
}
