//! The lines of the chunked coding itself (RFC 9112 section 7.1), read
//! strictly: each chunk's size line, and the trailer field lines after the
//! last chunk. A line that another
//! HTTP parser could end or split elsewhere (a bare LF, a CR alone, a byte
//! no field line may hold) is an error, not a guess: on the server side the
//! bytes after a body are the next request, and two parsers that disagree
//! on where a body ends disagree on what that request is.

/// A chunk-size line, at the start of the bytes given.
#[derive(Debug, PartialEq, Eq)]
pub enum SizeLine {
    /// The line is `len` bytes, CRLF included, and gives the chunk's size.
    Complete { len: usize, size: u64 },
    /// Valid so far; the line's end has not arrived.
    Partial,
}

/// Hexadecimal digits a size may have after its leading zeros: 16 hold
/// any `u64`.
const MAX_SIZE_DIGITS: usize = 16;

/// A chunk size past what 16 hexadecimal digits hold: on the server side,
/// a body larger than any limit (413), not a malformed one.
pub const SIZE_OVER_U64: &str = "chunk size over 16 hexadecimal digits";

const INVALID_SIZE_LINE: &str = "invalid chunk size line";
const BARE_LF_IN_SIZE_LINE: &str = "chunk size line with a bare LF";

/// Reads the chunk-size line `buf` starts with:
///
/// ```text
/// 1*16HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF
/// ```
///
/// (BWS: spaces and tabs). Extensions are checked and dropped. Anything
/// else is refused (no size, whitespace not before a `;`, a byte neither a
/// token nor a quoted string may hold, a CR or LF alone), as soon as it
/// shows: a line that cannot become valid never waits for more bytes.
pub fn chunk_size_line(buf: &[u8]) -> Result<SizeLine, &'static str> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let zeros = buf[..digits].iter().take_while(|&&b| b == b'0').count();
    if digits - zeros > MAX_SIZE_DIGITS {
        return Err(SIZE_OVER_U64);
    }
    let size = buf[zeros..digits]
        .iter()
        .fold(0u64, |size, &digit| size << 4 | hex_value(digit));
    let mut at = digits;
    if at == buf.len() {
        return Ok(SizeLine::Partial);
    }
    if at == 0 {
        return Err(match buf[0] {
            b'\n' => BARE_LF_IN_SIZE_LINE,
            _ => "chunk size line without a size",
        });
    }
    loop {
        let before_space = at;
        at = skip_whitespace(buf, at);
        match buf.get(at) {
            None => return Ok(SizeLine::Partial),
            Some(b';') => at += 1,
            Some(b'\r') if at == before_space => {
                return Ok(match line_end(buf, at).map_err(|_| INVALID_SIZE_LINE)? {
                    Some(len) => SizeLine::Complete { len, size },
                    None => SizeLine::Partial,
                });
            }
            Some(b'\n') => return Err(BARE_LF_IN_SIZE_LINE),
            Some(_) => return Err(INVALID_SIZE_LINE),
        }
        // One extension: a name, perhaps a value.
        at = match token(buf, skip_whitespace(buf, at))? {
            Some(end) => end,
            None => return Ok(SizeLine::Partial),
        };
        let after_name = skip_whitespace(buf, at);
        match buf.get(after_name) {
            None => return Ok(SizeLine::Partial),
            Some(b'=') => {}
            // No value: the next extension, or the line's end (checked
            // at the loop's top, which also refuses the space before a
            // CR).
            Some(_) => continue,
        }
        let value = skip_whitespace(buf, after_name + 1);
        let end = match buf.get(value) {
            None => return Ok(SizeLine::Partial),
            Some(b'"') => quoted_string(buf, value + 1)?,
            Some(_) => token(buf, value)?,
        };
        at = match end {
            Some(end) => end,
            None => return Ok(SizeLine::Partial),
        };
    }
}

fn hex_value(digit: u8) -> u64 {
    u64::from(match digit {
        b'0'..=b'9' => digit - b'0',
        _ => (digit | 0x20) - b'a' + 10,
    })
}

fn skip_whitespace(buf: &[u8], at: usize) -> usize {
    at + buf[at.min(buf.len())..]
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()
}

/// The end of the token at `at` (at least one byte), `None` if the bytes
/// end first.
fn token(buf: &[u8], at: usize) -> Result<Option<usize>, &'static str> {
    let end = at
        + buf[at.min(buf.len())..]
            .iter()
            .take_while(|b| is_tchar(**b))
            .count();
    match buf.get(end) {
        None => Ok(None),
        Some(_) if end == at => Err(match buf[at] {
            b'\n' => BARE_LF_IN_SIZE_LINE,
            _ => INVALID_SIZE_LINE,
        }),
        Some(_) => Ok(Some(end)),
    }
}

/// The end of the quoted string whose text starts at `at` (after its
/// opening quote), closing quote included; `None` if the bytes end first.
/// Text is `qdtext` (RFC 9110 section 5.6.4: tab, space, visible ASCII but
/// `"` and `\\`, obs-text) or a backslash before tab, space, visible ASCII
/// or obs-text.
fn quoted_string(buf: &[u8], mut at: usize) -> Result<Option<usize>, &'static str> {
    loop {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'"') => return Ok(Some(at + 1)),
            Some(b'\\') => match buf.get(at + 1) {
                None => return Ok(None),
                Some(&escaped) if is_field_value_byte(escaped) => at += 2,
                Some(_) => return Err(INVALID_SIZE_LINE),
            },
            Some(&byte) if is_field_value_byte(byte) => at += 1,
            Some(b'\n') => return Err(BARE_LF_IN_SIZE_LINE),
            Some(_) => return Err(INVALID_SIZE_LINE),
        }
    }
}

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

    /// Valid size lines: their size and length, and every prefix of them
    /// waits for more.
    #[test]
    fn size_lines_in_every_form_the_grammar_allows() {
        let cases: [(&[u8], u64); 19] = [
            (b"0\r\n", 0),
            (b"5\r\n", 5),
            (b"a\r\n", 10),
            (b"Ff\r\n", 255),
            (b"0000000000000005\r\n", 5),
            (b"ffffffffffffffff\r\n", u64::MAX),
            // Leading zeros are not counted against the 16 digits.
            (b"00000000000000005\r\n", 5),
            (b"0000000000ffffffffffffffff\r\n", u64::MAX),
            (b"5;a\r\n", 5),
            (b"5;a=b\r\n", 5),
            (b"5;a=b;c;d=e\r\n", 5),
            (b"5 ;a\r\n", 5),
            (b"5\t; a = b ;\tc\r\n", 5),
            (b"5;!#$%&'*+-.^_`|~=x\r\n", 5),
            (b"5;a=\"\"\r\n", 5),
            (b"5;a=\"text with spaces; and = signs\"\r\n", 5),
            (b"5;a=\"an \\\" escaped quote\"\r\n", 5),
            (b"5;a=\"\\\\\";b=\"\t\xe9\"\r\n", 5),
            (b"5;a=\"x\" ; b\r\n", 5),
        ];
        for (line, size) in cases {
            let mut wire = line.to_vec();
            wire.extend_from_slice(b"hello");
            assert_eq!(
                chunk_size_line(&wire),
                Ok(SizeLine::Complete {
                    len: line.len(),
                    size
                }),
                "{:?}",
                String::from_utf8_lossy(line)
            );
            for end in 0..line.len() {
                assert_eq!(
                    chunk_size_line(&line[..end]),
                    Ok(SizeLine::Partial),
                    "{:?} cut at {end}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }

    /// Each form outside the grammar is refused, before its line ends
    /// when the bytes so far already rule it out.
    #[test]
    fn size_lines_outside_the_grammar_are_refused() {
        for line in [
            // No size, or not only hexadecimal digits.
            &b"\r\n"[..],
            b";a\r\n",
            b" 5\r\n",
            b"0x5\r\n",
            b"+5\r\n",
            b"-1\r\n",
            b"5g\r\n",
            b"10000000000000000\r\n",
            // Whitespace not before a ';' (or '=').
            b"5 \r\n",
            b"5\t\r\n",
            b"5;a \r\n",
            b"5;a=b \r\n",
            b"5 5\r\n",
            // Extensions that are not `name[=value]`.
            b"5;\r\n",
            b"5;;a\r\n",
            b"5;=b\r\n",
            b"5;a=\r\n",
            b"5;a=;b\r\n",
            b"5;a b\r\n",
            b"5;a=b c\r\n",
            b"5;a@b\r\n",
            b"5;a=b@c\r\n",
            b"5;a==b\r\n",
            b"5;a=\"b\"c\r\n",
            // A quoted string with what it may not hold.
            b"5;a=\"b\r\n",
            b"5;a=\"\x01\"\r\n",
            b"5;a=\"\x7f\"\r\n",
            b"5;a=\"\\\x01\"\r\n",
            // A CR or LF alone.
            b"5\n",
            b"5\rX",
            b"5\r\r\n",
            b"5;a\n",
            b"5;a=b\n",
            b"5;\n",
            b"5;a=\n",
            b"5;a=\"b\nc\"\r\n",
            b"5;a=\"\\\n\"\r\n",
            b"\n",
        ] {
            assert!(
                chunk_size_line(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        for line in [&b"5\n"[..], b"2;\nXX\r\n", b"5;a=\"b\nc\"\r\n", b"\n"] {
            assert_eq!(
                chunk_size_line(line),
                Err(BARE_LF_IN_SIZE_LINE),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // A size no `u64` holds, told apart: a request body that large
        // is refused as too large.
        for line in [&b"10000000000000000\r\n"[..], b"0fffffffffffffffff0"] {
            assert_eq!(chunk_size_line(line), Err(SIZE_OVER_U64), "{line:?}");
        }
        // Refused before the line's end arrives.
        for start in [&b"5 x"[..], b"5;a b", b"0x", b"5\n", b"5;a=\"\x00"] {
            assert!(chunk_size_line(start).is_err(), "{start:?}");
        }
    }

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
