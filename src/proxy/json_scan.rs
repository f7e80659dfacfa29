//! A validating scan of a JSON object's top level that reports each key with
//! the byte span of its value, without building a tree or allocating.
//!
//! The gateway needs two or three fields of a request body that may be many
//! megabytes: a long conversation or base64 images. String contents are
//! skipped a block of bytes at a time (`string_stop`), so the cost is a fast
//! linear pass. The scan is fed the body piece by piece as it arrives
//! ([`ObjectScan::feed`]), so a large body's scan overlaps its arrival
//! instead of following it, and the pieces never have to be joined.
//! Offsets count across all pieces. It keeps its place as a state and one
//! bit per open container, not as recursion, so nesting costs no stack.

use smallvec::SmallVec;
use std::ops::Range;

/// Deepest nesting accepted; deeper bodies are rejected (the scan keeps one
/// bit per open container, so the limit bounds its memory).
const MAX_DEPTH: usize = 512;

/// Where and why a body is not valid JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub offset: usize,
    pub reason: &'static str,
    /// The top-level member whose string value is broken (an escape, a
    /// newline), by its key as written, so that the error can name it.
    pub in_value_of: Option<Box<[u8]>>,
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
    let mut scan = ObjectScan::default();
    for piece in pieces {
        scan.feed(piece.as_ref(), &mut on_field);
    }
    scan.finish()
}

/// Where the scan is between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening brace.
    Start,
    /// Just inside `{`: a key or the closing brace.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// After a key: the colon.
    Colon,
    /// Just inside `[`: a value or the closing bracket.
    ValueOrClose,
    /// After `:` or `,` in an array: a value.
    Value,
    /// Inside a string (a key or a value); `escaped` when the previous
    /// piece ended inside an escape sequence (how far in:
    /// `ObjectScan::hex_left`). Two flags, as before escapes were checked:
    /// an `Escape` here made every byte's dispatch on the state dearer
    /// (~280 instructions per small request).
    Str { key: bool, escaped: bool },
    /// Inside `LITERALS[word]`, its first `matched` bytes seen.
    Literal { word: u8, matched: u8 },
    /// Inside a number.
    Number(NumberAt),
    /// After a value: `,` or the container's closing bracket.
    AfterValue,
    /// After the top-level object: only whitespace may follow.
    Done,
    /// An error was found; the rest is ignored.
    Failed,
}

/// How much of an escape sequence has been read. Each is checked against
/// JSON's grammar (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, `\u` and
/// four hex digits): a member the gateway does not read is still passed
/// on, and one spelled with an escape a lenient parser reads as a plain
/// letter (`"m\odel"`) could be taken for one it checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// Not in one.
    None,
    /// After the backslash.
    Backslash,
    /// After `\u`, this many hex digits still to come.
    Hex(u8),
}

/// Where a number is in JSON's grammar:
/// `-`? (`0` | `1`-`9` digits*) (`.` digits+)? ((`e`|`E`) (`+`|`-`)? digits+)?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberAt {
    /// After `-`: the first digit.
    Sign,
    /// After a leading `0`: a fraction, an exponent or the end.
    Zero,
    /// In the integer part's digits.
    Integer,
    /// After `.`: a digit.
    Point,
    /// In the fraction's digits.
    Fraction,
    /// After `e` or `E`: a sign or a digit.
    E,
    /// After the exponent's sign: a digit.
    ExponentSign,
    /// In the exponent's digits.
    Exponent,
}

/// What a byte does to a number.
enum NumberStep {
    Continue(NumberAt),
    /// The byte is not part of the number, which is complete before it.
    End,
    Invalid,
}

impl NumberAt {
    fn next(self, byte: u8) -> NumberStep {
        use NumberAt::*;
        let digit = byte.is_ascii_digit();
        let next = match (self, byte) {
            (Sign, b'0') => Zero,
            (Sign, _) if digit => Integer,
            (Zero, _) if digit => return NumberStep::Invalid,
            (Zero | Integer, b'.') => Point,
            (Zero | Integer | Fraction, b'e' | b'E') => E,
            (Integer, _) if digit => Integer,
            (Point | Fraction, _) if digit => Fraction,
            (E, b'+' | b'-') => ExponentSign,
            (E | ExponentSign | Exponent, _) if digit => Exponent,
            _ if self.complete() => return NumberStep::End,
            _ => return NumberStep::Invalid,
        };
        NumberStep::Continue(next)
    }

    /// Whether the number may end here.
    fn complete(self) -> bool {
        matches!(
            self,
            NumberAt::Zero | NumberAt::Integer | NumberAt::Fraction | NumberAt::Exponent
        )
    }
}

/// A resumable scan of one JSON object: fed its bytes in pieces, it calls
/// back each top-level member as soon as its value ends.
#[derive(Debug)]
pub struct ObjectScan {
    state: State,
    /// Bytes fed before the current piece.
    base: usize,
    /// Open containers inside the top-level object.
    depth: usize,
    /// One bit per open container: set for an object, clear for an array.
    keyed: [u64; MAX_DEPTH / 64],
    /// Where the current top-level key is (between its quotes).
    key_start: usize,
    key_end: usize,
    /// A copy of that key, made only when its member goes on into the next
    /// piece (the usual key is read from the piece it is in).
    saved_key: SmallVec<[u8; 32]>,
    /// Where the current top-level member's value starts.
    value_start: usize,
    /// Where the string, literal or number being scanned starts (errors
    /// inside one point at its start).
    token_start: usize,
    /// The hex digits of a `\u` escape still to come, when a piece ended
    /// inside one.
    hex_left: u8,
    error: Option<ScanError>,
}

impl Default for ObjectScan {
    fn default() -> Self {
        ObjectScan {
            state: State::Start,
            base: 0,
            depth: 0,
            keyed: [0; MAX_DEPTH / 64],
            key_start: 0,
            key_end: 0,
            saved_key: SmallVec::new(),
            value_start: NO_VALUE,
            token_start: 0,
            hex_left: 0,
            error: None,
        }
    }
}

/// The words a value can be; `State::Literal` indexes them.
const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// `value_start` when no top-level value is open.
const NO_VALUE: usize = usize::MAX;

#[inline(always)]
fn is_ws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\r' | b'\t')
}

impl ObjectScan {
    /// Scans the next piece of the input; `on_field(raw_key, value_span)`
    /// is called for each top-level member whose value ends in it.
    pub fn feed(&mut self, bytes: &[u8], on_field: &mut impl FnMut(&[u8], Range<usize>)) {
        // The state lives in a register while the piece is scanned (kept in
        // `self`, every byte would wait for the previous byte's store).
        let mut state = self.state;
        if state == State::Failed {
            return;
        }
        let mut token_start = self.token_start;
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            state = match state {
                State::Str { key, escaped } => {
                    let escape = match (escaped, self.hex_left) {
                        (false, _) => Escape::None,
                        (true, 0) => Escape::Backslash,
                        (true, left) => Escape::Hex(left),
                    };
                    let (next, end) = string_run(bytes, at, escape);
                    match end {
                        RunEnd::Quote => {
                            at = next;
                            if key {
                                if self.depth == 0 {
                                    self.key_closed(bytes, at - 1);
                                }
                                State::Colon
                            } else {
                                self.value_ended(bytes, self.base + at, on_field)
                            }
                        }
                        RunEnd::Open { escape } => {
                            at = bytes.len();
                            self.hex_left = match escape {
                                Escape::Hex(left) => left,
                                _ => 0,
                            };
                            State::Str {
                                key,
                                escaped: escape != Escape::None,
                            }
                        }
                        RunEnd::Newline => {
                            return self.fail_in_string(
                                bytes,
                                key,
                                next,
                                "raw newline inside a string",
                            );
                        }
                        RunEnd::BadEscape => {
                            return self.fail_in_string(
                                bytes,
                                key,
                                next,
                                "invalid escape in a string",
                            );
                        }
                    }
                }
                State::Number(place) => match place.next(byte) {
                    NumberStep::Continue(place) => {
                        at += 1;
                        State::Number(place)
                    }
                    // The byte after a number is looked at again as what
                    // follows a value.
                    NumberStep::End => self.value_ended(bytes, self.base + at, on_field),
                    NumberStep::Invalid => return self.fail_at(token_start, "invalid number"),
                },
                State::Literal { word, matched } => {
                    let literal = LITERALS[usize::from(word)];
                    if literal[usize::from(matched)] != byte {
                        return self.fail_at(token_start, "invalid literal");
                    }
                    at += 1;
                    if usize::from(matched) + 1 == literal.len() {
                        self.value_ended(bytes, self.base + at, on_field)
                    } else {
                        State::Literal {
                            word,
                            matched: matched + 1,
                        }
                    }
                }
                // Whitespace between tokens.
                _ if is_ws(byte) => {
                    at += 1;
                    state
                }
                State::Start => {
                    if byte != b'{' {
                        return self.fail(at, "expected a JSON object");
                    }
                    at += 1;
                    State::KeyOrClose
                }
                State::KeyOrClose | State::Key => {
                    at += 1;
                    if byte == b'"' {
                        token_start = self.base + at - 1;
                        if self.depth == 0 {
                            self.key_start = self.base + at;
                        }
                        State::Str {
                            key: true,
                            escaped: false,
                        }
                    } else if byte == b'}' && state == State::KeyOrClose {
                        self.close_container(bytes, self.base + at, on_field)
                    } else {
                        return self.fail(at - 1, "expected a string key");
                    }
                }
                State::Colon => {
                    if byte != b':' {
                        return self.fail(at, "expected ':' after a key");
                    }
                    at += 1;
                    State::Value
                }
                State::ValueOrClose if byte == b']' => {
                    at += 1;
                    self.close_container(bytes, self.base + at, on_field)
                }
                State::ValueOrClose | State::Value => {
                    // Only a container nests: a scalar at the deepest
                    // level is fine.
                    if self.depth >= MAX_DEPTH && matches!(byte, b'{' | b'[') {
                        return self.fail(at, "nesting too deep");
                    }
                    token_start = self.base + at;
                    if self.depth == 0 {
                        self.value_start = token_start;
                    }
                    at += 1;
                    let literal = |word| State::Literal { word, matched: 1 };
                    match byte {
                        b'"' => State::Str {
                            key: false,
                            escaped: false,
                        },
                        b'{' => self.open_container(true),
                        b'[' => self.open_container(false),
                        b't' => literal(0),
                        b'f' => literal(1),
                        b'n' => literal(2),
                        b'-' => State::Number(NumberAt::Sign),
                        b'0' => State::Number(NumberAt::Zero),
                        b'1'..=b'9' => State::Number(NumberAt::Integer),
                        _ => return self.fail(at - 1, "expected a JSON value"),
                    }
                }
                State::AfterValue => {
                    at += 1;
                    if byte == b',' {
                        if self.in_object() {
                            State::Key
                        } else {
                            State::Value
                        }
                    } else if byte == self.closing_bracket() {
                        self.close_container(bytes, self.base + at, on_field)
                    } else {
                        return self.fail(at - 1, self.after_value_reason());
                    }
                }
                State::Done => return self.fail(at, "unexpected data after the JSON object"),
                State::Failed => unreachable!("a failed scan returns before its loop"),
            };
        }
        self.state = state;
        self.token_start = token_start;
        self.save_key_for_next_piece(bytes);
        self.base += bytes.len();
    }

    /// The end of the input: `Ok` when it held exactly one JSON object.
    pub fn finish(self) -> Result<(), ScanError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let end = self.base;
        let reason = match self.state {
            State::Done => return Ok(()),
            State::Start => "expected a JSON object",
            State::KeyOrClose | State::Key => "expected a string key",
            State::Colon => "expected ':' after a key",
            State::ValueOrClose | State::Value => "unexpected end of input",
            State::Str { .. } => return Err(error_at(self.token_start, "unterminated string")),
            State::Literal { .. } => return Err(error_at(self.token_start, "invalid literal")),
            State::Number(place) if !place.complete() => {
                return Err(error_at(self.token_start, "invalid number"));
            }
            // A value ended by the input's end is followed by nothing: the
            // `,` or the closing bracket is missing at the end.
            State::Number(_) | State::AfterValue => {
                return Err(error_at(end, self.after_value_reason()));
            }
            State::Failed => unreachable!("a failed scan keeps its error"),
        };
        Err(error_at(end, reason))
    }

    fn open_container(&mut self, keyed: bool) -> State {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        if keyed {
            self.keyed[word] |= 1 << bit;
        } else {
            self.keyed[word] &= !(1 << bit);
        }
        self.depth += 1;
        if keyed {
            State::KeyOrClose
        } else {
            State::ValueOrClose
        }
    }

    /// The container that just closed at `end`; at the top level that is
    /// the object, one level in it is a top-level member's value.
    fn close_container(
        &mut self,
        bytes: &[u8],
        end: usize,
        on_field: &mut impl FnMut(&[u8], Range<usize>),
    ) -> State {
        if self.depth == 0 {
            return State::Done;
        }
        self.depth -= 1;
        self.value_ended(bytes, end, on_field)
    }

    fn closing_bracket(&self) -> u8 {
        if self.in_object() { b'}' } else { b']' }
    }

    /// Inside an object (the top-level one or a nested one).
    fn in_object(&self) -> bool {
        self.depth == 0 || self.keyed[(self.depth - 1) / 64] & (1 << ((self.depth - 1) % 64)) != 0
    }

    fn after_value_reason(&self) -> &'static str {
        if self.depth == 0 {
            "expected ',' or '}'"
        } else {
            "expected ',' or a closing bracket"
        }
    }

    /// A value ended at `end`; a top-level one is reported with its key.
    fn value_ended(
        &mut self,
        bytes: &[u8],
        end: usize,
        on_field: &mut impl FnMut(&[u8], Range<usize>),
    ) -> State {
        if self.depth == 0 && self.value_start != NO_VALUE {
            on_field(self.member_key(bytes), self.value_start..end);
            self.value_start = NO_VALUE;
        }
        State::AfterValue
    }

    /// The key of the top-level member whose value is being read, in
    /// `bytes` (the current piece) or saved from an earlier one.
    fn member_key<'b>(&'b self, bytes: &'b [u8]) -> &'b [u8] {
        if self.key_start >= self.base {
            &bytes[self.key_start - self.base..self.key_end - self.base]
        } else {
            &self.saved_key[..]
        }
    }

    /// The top-level key's closing quote is at `quote` in `bytes`; a key
    /// that began in an earlier piece is completed in `saved_key`.
    fn key_closed(&mut self, bytes: &[u8], quote: usize) {
        self.key_end = self.base + quote;
        if self.key_start < self.base {
            self.saved_key.extend_from_slice(&bytes[..quote]);
        }
    }

    /// At the end of a piece: a top-level key still being read, or whose
    /// value is not yet over, is copied, since `bytes` will be gone when
    /// the member is reported.
    fn save_key_for_next_piece(&mut self, bytes: &[u8]) {
        if self.depth == 0 && matches!(self.state, State::Str { key: true, .. }) {
            if self.key_start >= self.base {
                self.saved_key.clear();
                self.saved_key
                    .extend_from_slice(&bytes[self.key_start - self.base..]);
            } else {
                self.saved_key.extend_from_slice(bytes);
            }
            return;
        }
        let member_open = self.value_start != NO_VALUE
            || self.depth == 0 && matches!(self.state, State::Colon | State::Value);
        if member_open && self.key_start >= self.base {
            self.saved_key.clear();
            self.saved_key
                .extend_from_slice(&bytes[self.key_start - self.base..self.key_end - self.base]);
        }
    }

    fn fail(&mut self, at: usize, reason: &'static str) {
        self.fail_at(self.base + at, reason);
    }

    fn fail_at(&mut self, offset: usize, reason: &'static str) {
        self.state = State::Failed;
        self.error = Some(error_at(offset, reason));
    }

    /// A string broken at `at` in `bytes`: a top-level member's value is
    /// named in the error.
    fn fail_in_string(&mut self, bytes: &[u8], key: bool, at: usize, reason: &'static str) {
        let in_value_of = (!key && self.depth == 0).then(|| self.member_key(bytes).into());
        self.fail(at, reason);
        if let Some(error) = &mut self.error {
            error.in_value_of = in_value_of;
        }
    }
}

/// How a run inside a string ended.
enum RunEnd {
    /// At the closing quote.
    Quote,
    /// At the piece's end, in `escape` of an escape sequence.
    Open { escape: Escape },
    /// At a raw newline.
    Newline,
    /// At a byte an escape sequence cannot have.
    BadEscape,
}

/// From `from` inside a string, `escape` of an escape sequence read before
/// it: where the run ends (the index after the closing quote, the piece's
/// length, or the index of the newline or of the byte that breaks an
/// escape) and how.
#[inline(always)]
fn string_run(bytes: &[u8], mut from: usize, escape: Escape) -> (usize, RunEnd) {
    if escape != Escape::None {
        match escape_end(bytes, from, escape) {
            Ok(after) => from = after,
            Err(cut) => return cut.run_end(bytes),
        }
    }
    while from < bytes.len() {
        match super::string_stop::find(&bytes[from..]) {
            Some(i) => {
                let at = from + i;
                match bytes[at] {
                    b'"' => return (at + 1, RunEnd::Quote),
                    // The backslash and the byte it escapes: the usual
                    // escapes are one byte, checked here; the rest (`\u`,
                    // a cut, a wrong one) out of line.
                    b'\\' => match bytes.get(at + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            from = at + 2
                        }
                        _ => match escape_end(bytes, at + 1, Escape::Backslash) {
                            Ok(after) => from = after,
                            Err(cut) => return cut.run_end(bytes),
                        },
                    },
                    _ => return (at, RunEnd::Newline),
                }
            }
            None => from = bytes.len(),
        }
    }
    let escape = Escape::None;
    (bytes.len(), RunEnd::Open { escape })
}

/// Why an escape sequence did not end in the piece.
enum EscapeCut {
    /// The piece ended inside it.
    Open(Escape),
    /// The byte at this index cannot be in it.
    Bad(usize),
}

impl EscapeCut {
    /// Where and how the string's run ends, for [`string_run`].
    fn run_end(self, bytes: &[u8]) -> (usize, RunEnd) {
        match self {
            EscapeCut::Open(escape) => (bytes.len(), RunEnd::Open { escape }),
            EscapeCut::Bad(at) => (at, RunEnd::BadEscape),
        }
    }
}

/// The rest of an escape sequence, `escape` of it read, from `from`: the
/// index after its end. Out of line: most escapes are one byte, checked
/// where the backslash is found.
#[inline(never)]
fn escape_end(bytes: &[u8], mut from: usize, mut escape: Escape) -> Result<usize, EscapeCut> {
    loop {
        let Some(&byte) = bytes.get(from) else {
            return Err(EscapeCut::Open(escape));
        };
        escape = match (escape, byte) {
            (Escape::Backslash, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                return Ok(from + 1);
            }
            (Escape::Backslash, b'u') => Escape::Hex(4),
            (Escape::Hex(1), hex) if hex.is_ascii_hexdigit() => return Ok(from + 1),
            (Escape::Hex(left), hex) if hex.is_ascii_hexdigit() => Escape::Hex(left - 1),
            _ => return Err(EscapeCut::Bad(from)),
        };
        from += 1;
    }
}

fn error_at(offset: usize, reason: &'static str) -> ScanError {
    ScanError {
        offset,
        reason,
        in_value_of: None,
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
    fn numbers_are_read_by_jsons_grammar() {
        // Every string of up to five bytes from the bytes numbers are made
        // of: the scan accepts it exactly when serde_json does, whole and
        // cut anywhere.
        let alphabet = b"01-+.eE";
        let mut candidates: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = candidates.clone();
        for _ in 0..5 {
            last = last
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |&b| {
                        let mut next = prefix.clone();
                        next.push(b);
                        next
                    })
                })
                .collect();
            candidates.extend(last.iter().cloned());
        }
        let mut accepted = 0;
        for number in &candidates[1..] {
            let body = [&b"{\"n\":"[..], number, b"}"].concat();
            let valid = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
            for cut in 0..=body.len() {
                let (a, b) = body.split_at(cut);
                let scanned = scan_pieces(&[a, b], |_, _| {});
                assert_eq!(scanned.is_ok(), valid, "{}", String::from_utf8_lossy(&body));
            }
            accepted += usize::from(valid);
        }
        assert!(accepted > 100, "{accepted}");
        assert_eq!(fields(r#"{"a":01}"#).unwrap_err().reason, "invalid number");
        assert_eq!(fields(r#"{"a":1.}"#).unwrap_err().reason, "invalid number");
        assert_eq!(fields(r#"{"a":1e}"#).unwrap_err().offset, 5);
    }

    /// Every backslash followed by up to five bytes of an alphabet that
    /// makes valid and broken escapes: the scan accepts the string exactly
    /// when serde_json does, whole and cut anywhere.
    #[test]
    fn escapes_are_read_by_jsons_grammar() {
        let alphabet = b"u0Ag\"\\nq";
        let mut tails: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = tails.clone();
        for _ in 0..5 {
            last = last
                .iter()
                .flat_map(|prefix| alphabet.iter().map(move |&b| [&prefix[..], &[b]].concat()))
                .collect();
            tails.extend(last.iter().cloned());
        }
        let (mut accepted, mut refused) = (0, 0);
        for tail in &tails {
            let input = [&br#"{"s":"\"#[..], tail, b"\"}"].concat();
            let serde_reads = serde_json::from_slice::<serde_json::Value>(&input).is_ok();
            assert_eq!(
                scan_object(&input, |_, _| {}).is_ok(),
                serde_reads,
                "{:?}",
                String::from_utf8_lossy(&input)
            );
            for cut in 0..=input.len() {
                let (a, b) = input.split_at(cut);
                assert_eq!(scan_pieces(&[a, b], |_, _| {}).is_ok(), serde_reads);
            }
            if serde_reads {
                accepted += 1
            } else {
                refused += 1
            }
        }
        assert!(accepted > 100 && refused > 1000, "{accepted} {refused}");
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
            r#"{"a":"\q"}"#,
            r#"{"m\odel":1}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12g4"}"#,
            r#"{"a":["\x"]}"#,
            r#"{"a":"\U0041"}"#,
        ] {
            assert!(fields(bad).is_err(), "accepted {bad:?}");
        }
    }

    /// A body cut right after a value misses its `,` or closing bracket
    /// at its end, where a JSON parser reports it too.
    #[test]
    fn a_body_ended_after_a_value_is_reported_at_its_end() {
        for (cut, reason) in [
            (r#"{"model":"alias1""#, "expected ',' or '}'"),
            (r#"{"model":"alias1" "#, "expected ',' or '}'"),
            (r#"{"a":1"#, "expected ',' or '}'"),
            (r#"{"x":[1"#, "expected ',' or a closing bracket"),
            (r#"{"x":{}"#, "expected ',' or '}'"),
            (r#"{"x":true"#, "expected ',' or '}'"),
        ] {
            let err = fields(cut).unwrap_err();
            assert_eq!((err.offset, err.reason), (cut.len(), reason), "{cut}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(fields(&deep).unwrap_err().reason, "nesting too deep");
        // 512 lists inside the object, the most: a scalar at the deepest
        // level does not nest further, a list does.
        let at_the_limit =
            |inner: &str| format!("{{\"a\":{}{inner}{}}}", "[".repeat(512), "]".repeat(512));
        assert!(fields(&at_the_limit("1")).is_ok());
        assert!(fields(&at_the_limit("\"s\"")).is_ok());
        assert_eq!(
            fields(&at_the_limit("[]")).unwrap_err().reason,
            "nesting too deep"
        );
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
        r#"{"e":"\u00e9\uD83D\uDE00\b\f\n\r\t\/\\\"","k":"\u0041"}"#,
        r#"{"a":"ok \u12x4"}"#,
        r#"{"a":"\q"}"#,
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

    /// Against serde_json on valid inputs and many near-misses (each byte
    /// removed, replaced or preceded by a JSON-significant byte): whatever
    /// serde_json reads as an object, the scan accepts too, cut anywhere,
    /// reporting the same keys with spans that hold the same values.
    #[test]
    fn agrees_with_serde_json_on_every_object_it_reads() {
        use serde_json::{Map, Value};
        let seeds = [
            INPUTS[0],
            INPUTS[1],
            r#"{"k\"ey":1,"long key \\ with escapes":[{"a":"b"},[[null]]],"z":{},"n":-0.5E+2}"#,
            " {\"a\" :\t\"b\"\r\n, \"c\":[true,false]}\n",
        ];
        let alphabet = b"{}[],:\"\\ 0a-tfnue.E+\n";
        let mut read_by_serde = 0;
        for seed in seeds.iter().map(|s| s.as_bytes()) {
            let mut inputs = vec![seed.to_vec()];
            for i in 0..seed.len() {
                let mut removed = seed.to_vec();
                removed.remove(i);
                inputs.push(removed);
                for &byte in alphabet {
                    let mut replaced = seed.to_vec();
                    replaced[i] = byte;
                    inputs.push(replaced);
                    let mut inserted = seed.to_vec();
                    inserted.insert(i, byte);
                    inputs.push(inserted);
                }
            }
            for input in &inputs {
                let Ok(expected) = serde_json::from_slice::<Map<String, Value>>(input) else {
                    continue;
                };
                read_by_serde += 1;
                let fields = scan(&[input]).unwrap_or_else(|err| {
                    panic!("{err:?} for {:?}", String::from_utf8_lossy(input))
                });
                let mut got = Map::new();
                for (raw_key, span) in fields {
                    let quoted = [&b"\""[..], &raw_key, b"\""].concat();
                    let key: String = serde_json::from_slice(&quoted).expect("a key");
                    let value: Value = serde_json::from_slice(&input[span]).expect("a value");
                    got.insert(key, value);
                }
                assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(input));
                for cut in 0..=input.len() {
                    let (a, b) = input.split_at(cut);
                    assert!(scan(&[a, b]).is_ok());
                }
            }
        }
        assert!(
            read_by_serde > 500,
            "only {read_by_serde} inputs were valid"
        );
    }

    #[test]
    fn no_pieces_is_an_error() {
        let none: [&[u8]; 0] = [];
        assert_eq!(scan(&none).unwrap_err().reason, "expected a JSON object");
    }
}
