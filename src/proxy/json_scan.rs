//! A validating scan of a JSON object's top level that reports each key with
//! the byte span of its value, without building a tree or allocating.
//!
//! The gateway needs two or three fields of a request body that may be many
//! megabytes of base64 images; string contents are skipped a block of bytes
//! at a time (`string_stop`), so the cost is a fast linear pass. The input may be in several pieces (a
//! request body as its frames arrived): offsets count across them, so the
//! pieces never have to be joined.

use std::borrow::Cow;
use std::ops::Range;

/// Deepest nesting accepted; deeper bodies are rejected rather than risking
/// the stack.
const MAX_DEPTH: usize = 512;

/// Where and why a body is not valid JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub offset: usize,
    pub reason: &'static str,
}

/// Calls `on_field(raw_key, value_span)` for each top-level member of the
/// object in `input`, in order. `raw_key` is the key between its quotes, as
/// written (escapes are not decoded).
pub fn scan_object(
    input: &[u8],
    on_field: impl FnMut(&[u8], Range<usize>),
) -> Result<(), ScanError> {
    scan_pieces(std::slice::from_ref(&input), on_field)
}

/// [`scan_object`] over an input held in `pieces`, in order; spans are
/// offsets into their concatenation.
pub fn scan_pieces<P: AsRef<[u8]>>(
    pieces: &[P],
    mut on_field: impl FnMut(&[u8], Range<usize>),
) -> Result<(), ScanError> {
    let mut s = Scanner {
        pieces,
        piece: 0,
        chunk: pieces.first().map_or(&[], AsRef::as_ref),
        local: 0,
        base: 0,
    };
    s.skip_ws();
    s.expect(b'{', "expected a JSON object")?;
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.bump();
    } else {
        loop {
            s.skip_ws();
            let key_start = s.pos();
            if s.peek() != Some(b'"') {
                return Err(s.error("expected a string key"));
            }
            s.skip_string()?;
            let key = s.span_bytes(key_start + 1..s.pos() - 1);
            s.skip_ws();
            s.expect(b':', "expected ':' after a key")?;
            s.skip_ws();
            let value_start = s.pos();
            s.skip_value(1)?;
            on_field(&key, value_start..s.pos());
            s.skip_ws();
            match s.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(s.error_at(s.pos().saturating_sub(1), "expected ',' or '}'")),
            }
        }
    }
    s.skip_ws();
    if s.peek().is_some() {
        return Err(s.error("unexpected data after the JSON object"));
    }
    Ok(())
}

/// A cursor over the pieces: `chunk` is the current piece, `local` the
/// position in it and `base` its offset in the whole input.
struct Scanner<'a, P> {
    pieces: &'a [P],
    piece: usize,
    chunk: &'a [u8],
    local: usize,
    base: usize,
}

impl<'a, P: AsRef<[u8]>> Scanner<'a, P> {
    fn pos(&self) -> usize {
        self.base + self.local
    }

    /// The next byte, moving on to the next non-empty piece when this one is
    /// used up.
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        match self.chunk.get(self.local) {
            Some(&b) => Some(b),
            None => self.peek_in_next_piece(),
        }
    }

    #[cold]
    #[inline(never)]
    fn peek_in_next_piece(&mut self) -> Option<u8> {
        self.next_piece().then(|| self.chunk[self.local])
    }

    /// Steps over the byte `peek` returned.
    #[inline]
    fn bump(&mut self) {
        self.local += 1;
    }

    #[cold]
    #[inline(never)]
    fn next_piece(&mut self) -> bool {
        while self.local >= self.chunk.len() && self.piece + 1 < self.pieces.len() {
            self.base += self.chunk.len();
            self.piece += 1;
            self.chunk = self.pieces[self.piece].as_ref();
            self.local = 0;
        }
        self.local < self.chunk.len()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.bump();
        Some(b)
    }

    fn span_bytes(&self, span: Range<usize>) -> Cow<'a, [u8]> {
        if span.start >= self.base {
            Cow::Borrowed(&self.chunk[span.start - self.base..span.end - self.base])
        } else {
            super::body_pieces::span_of(self.pieces, span)
        }
    }

    fn error(&self, reason: &'static str) -> ScanError {
        self.error_at(self.pos(), reason)
    }

    fn error_at(&self, offset: usize, reason: &'static str) -> ScanError {
        ScanError { offset, reason }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), ScanError> {
        if self.peek() == Some(byte) {
            self.bump();
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.bump();
        }
    }

    /// At an opening quote: moves past the closing quote.
    fn skip_string(&mut self) -> Result<(), ScanError> {
        let start = self.pos();
        self.bump();
        loop {
            let rest = &self.chunk[self.local..];
            match super::string_stop::find(rest) {
                Some(i) if rest[i] == b'"' => {
                    self.local += i + 1;
                    return Ok(());
                }
                Some(i) if rest[i] == b'\\' => {
                    self.local += i + 1;
                    // The escaped byte, maybe in the next piece.
                    if self.next().is_none() {
                        break;
                    }
                }
                Some(i) => return Err(self.error_at(self.pos() + i, "raw newline inside a string")),
                None => {
                    self.local = self.chunk.len();
                    if !self.next_piece() {
                        break;
                    }
                }
            }
        }
        Err(self.error_at(start, "unterminated string"))
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), ScanError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'{') => self.skip_container(depth, b'}', true),
            Some(b'[') => self.skip_container(depth, b']', false),
            Some(b't') => self.skip_literal(b"true"),
            Some(b'f') => self.skip_literal(b"false"),
            Some(b'n') => self.skip_literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            Some(_) => Err(self.error("expected a JSON value")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    fn skip_container(&mut self, depth: usize, close: u8, keyed: bool) -> Result<(), ScanError> {
        self.bump();
        self.skip_ws();
        if self.peek() == Some(close) {
            self.bump();
            return Ok(());
        }
        loop {
            self.skip_ws();
            if keyed {
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a string key"));
                }
                self.skip_string()?;
                self.skip_ws();
                self.expect(b':', "expected ':' after a key")?;
                self.skip_ws();
            }
            self.skip_value(depth + 1)?;
            self.skip_ws();
            match self.next() {
                Some(b',') => continue,
                Some(b) if b == close => return Ok(()),
                _ => {
                    return Err(self.error_at(
                        self.pos().saturating_sub(1),
                        "expected ',' or a closing bracket",
                    ));
                }
            }
        }
    }

    fn skip_literal(&mut self, literal: &'static [u8]) -> Result<(), ScanError> {
        let start = self.pos();
        for &expected in literal {
            if self.peek() != Some(expected) {
                return Err(self.error_at(start, "invalid literal"));
            }
            self.bump();
        }
        Ok(())
    }

    fn skip_number(&mut self) -> Result<(), ScanError> {
        let start = self.pos();
        if self.peek() == Some(b'-') {
            self.bump();
        }
        let first = self.peek();
        while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = self.peek() {
            self.bump();
        }
        if !first.is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.error_at(start, "invalid number"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(input: &str) -> Result<Vec<(String, String)>, ScanError> {
        let mut out = Vec::new();
        scan_object(input.as_bytes(), |k, span| {
            out.push((
                String::from_utf8(k.to_vec()).unwrap(),
                input[span].to_string(),
            ))
        })?;
        Ok(out)
    }

    #[test]
    fn reports_top_level_fields_only() {
        let got = fields(
            r#" { "model" : "kimi" , "messages":[{"model":"inner","x":[1,2,{"a":null}]}],
                "stream":true, "t": -1.5e3, "s":"a\"b\\" } "#,
        )
        .unwrap();
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["model", "messages", "stream", "t", "s"]);
        assert_eq!(got[0].1, "\"kimi\"");
        assert_eq!(got[2].1, "true");
        assert_eq!(got[3].1, "-1.5e3");
        assert_eq!(got[4].1, r#""a\"b\\""#);
    }

    #[test]
    fn empty_object() {
        assert_eq!(fields("{}").unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":[1,2}"#,
            r#"{"a":{"b":1]}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":tru}"#,
            r#"{"a":1} x"#,
            r#"{"a":-}"#,
            r#"{a:1}"#,
            "{\"a\":\"line\nbreak\"}",
        ] {
            assert!(fields(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(fields(&deep).unwrap_err().reason, "nesting too deep");
    }
}

#[cfg(test)]
mod piece_tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Range<usize>)>;

    /// Keys and spans, or the error, for `input` held as `pieces`.
    fn scan(pieces: &[&[u8]]) -> Result<Fields, ScanError> {
        let mut out = Vec::new();
        scan_pieces(pieces, |k, span| out.push((k.to_vec(), span)))?;
        Ok(out)
    }

    const INPUTS: &[&str] = &[
        r#" { "model" : "kimi" , "messages":[{"model":"in\"ner","x":[1,2,{"a":null}]}],
            "stream":true, "t": -1.5e3, "s":"a\"b\\", "f":false } "#,
        r#"{"a":"\\\\\"","b":[[],{}],"c":12}"#,
        r#"{"a":1,}"#,
        r#"{"a":tru}"#,
        r#"{"a":-}"#,
        r#"{"a":"unterminated\"}"#,
        "{\"a\":\"line\nbreak\"}",
        r#"{"a":1} x"#,
        r#"{"a":[1,2}"#,
    ];

    /// Wherever the input is cut (one cut, two cuts, empty pieces), the
    /// scan reports what it reports for the whole input.
    #[test]
    fn any_cut_gives_the_same_result() {
        for input in INPUTS.iter().map(|s| s.as_bytes()) {
            let whole = scan(&[input]);
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(scan(&[a, b]), whole, "cut at {i} of {input:?}");
                assert_eq!(scan(&[&[], a, &[], b, &[]]), whole);
                for j in i..=input.len() {
                    let pieces = [&input[..i], &input[i..j], &input[j..]];
                    assert_eq!(scan(&pieces), whole, "cuts at {i},{j}");
                }
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(scan(&bytes), whole, "one byte per piece");
        }
    }

    #[test]
    fn no_pieces_is_an_error() {
        let none: [&[u8]; 0] = [];
        assert_eq!(scan(&none).unwrap_err().reason, "expected a JSON object");
    }
}
