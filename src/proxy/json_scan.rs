//! A validating scan of a JSON object's top level that reports each key with
//! the byte span of its value, without building a tree or allocating.
//!
//! The gateway needs two or three fields of a request body that may be many
//! megabytes of base64 images; string contents are skipped with `memchr`, so
//! the cost is a fast linear pass.

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
pub fn scan_object<'a>(
    input: &'a [u8],
    mut on_field: impl FnMut(&'a [u8], Range<usize>),
) -> Result<(), ScanError> {
    let mut s = Scanner { input, pos: 0 };
    s.skip_ws();
    s.expect(b'{', "expected a JSON object")?;
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            s.skip_ws();
            let key_start = s.pos;
            if s.peek() != Some(b'"') {
                return Err(s.error("expected a string key"));
            }
            s.skip_string()?;
            let key = &input[key_start + 1..s.pos - 1];
            s.skip_ws();
            s.expect(b':', "expected ':' after a key")?;
            s.skip_ws();
            let value_start = s.pos;
            s.skip_value(1)?;
            on_field(key, value_start..s.pos);
            s.skip_ws();
            match s.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(s.error_at(s.pos.saturating_sub(1), "expected ',' or '}'")),
            }
        }
    }
    s.skip_ws();
    if s.pos != input.len() {
        return Err(s.error("unexpected data after the JSON object"));
    }
    Ok(())
}

struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn error(&self, reason: &'static str) -> ScanError {
        self.error_at(self.pos, reason)
    }

    fn error_at(&self, offset: usize, reason: &'static str) -> ScanError {
        ScanError { offset, reason }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), ScanError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// At an opening quote: moves past the closing quote.
    fn skip_string(&mut self) -> Result<(), ScanError> {
        let start = self.pos;
        self.pos += 1;
        loop {
            let rest = &self.input[self.pos..];
            match memchr::memchr3(b'"', b'\\', b'\n', rest) {
                Some(i) if rest[i] == b'"' => {
                    self.pos += i + 1;
                    return Ok(());
                }
                Some(i) if rest[i] == b'\\' => {
                    if self.pos + i + 1 >= self.input.len() {
                        break;
                    }
                    self.pos += i + 2;
                }
                Some(i) => return Err(self.error_at(self.pos + i, "raw newline inside a string")),
                None => break,
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
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(close) {
            self.pos += 1;
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
                        self.pos.saturating_sub(1),
                        "expected ',' or a closing bracket",
                    ));
                }
            }
        }
    }

    fn skip_literal(&mut self, literal: &'static [u8]) -> Result<(), ScanError> {
        if self.input[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn skip_number(&mut self) -> Result<(), ScanError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let digits_start = self.pos;
        while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = self.peek() {
            self.pos += 1;
        }
        if self.pos == digits_start || !self.input[digits_start].is_ascii_digit() {
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
