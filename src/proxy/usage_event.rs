//! The members of one stream event that usage reading needs (top-level
//! `id`, `created`, `model`, `usage`, and the first choice's `usage`
//! object), found by a strict reader of the whole event instead of
//! `serde_json`'s deserializer.
//!
//! An event is small and complete, so this is plain recursive descent over
//! a slice (no resumable state, unlike the request body's scan), with string
//! contents skipped 16 bytes at a time. It answers only when it is sure that
//! deserializing would give the same members: anything it does not cover
//! exactly (an escaped key, a repeated member, a choice that is not an
//! object, deep nesting, invalid UTF-8, invalid JSON) is left to the
//! deserializer, which then decides. It never accepts what the deserializer
//! refuses: it is stricter in every rule (tested against it on every
//! one-byte change of real events).

use std::ops::Range;

/// Containers nested deeper than this are left to the deserializer (whose
/// own limit is 128).
const MAX_DEPTH: u32 = 100;

/// Byte spans of the members the usage reading uses. A member that is
/// absent or `null` is `None`, as an `Option` field deserializes it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct EventMembers {
    pub id: Option<Range<usize>>,
    pub created: Option<Range<usize>>,
    pub model: Option<Range<usize>>,
    /// The top-level `usage`, whatever kind of value it is.
    pub usage: Option<Range<usize>>,
    /// The `usage` of the first choice whose `usage` is an object.
    pub choice_usage: Option<Range<usize>>,
}

/// `Some` when `event` (one event's data) is a JSON object read with
/// certainty; `None` to leave it to the deserializer.
pub(super) fn read(event: &[u8]) -> Option<EventMembers> {
    // Every member the deserializer borrows is checked as UTF-8, and keys
    // are; checking the whole event once is stricter and cheaper.
    std::str::from_utf8(event).ok()?;
    let mut reader = Reader {
        bytes: event,
        at: 0,
    };
    let mut members = EventMembers::default();
    // One bit per recognised member: a repeated one is refused by the
    // deserializer even when the first was `null`.
    let mut seen = 0u8;
    reader.skip_ws();
    reader.object(0, |reader, key| {
        let (bit, slot) = match key {
            b"id" => (1, &mut members.id),
            b"created" => (2, &mut members.created),
            b"model" => (4, &mut members.model),
            b"usage" => (8, &mut members.usage),
            b"choices" => (16, &mut members.choice_usage),
            _ => return reader.value(1),
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        if bit == 16 {
            reader.choices(slot)
        } else {
            reader.member(slot, 1)
        }
    })?;
    reader.skip_ws();
    (reader.at == event.len()).then_some(members)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Opens a list at `at` (its `open`): `Some(false)` when it is empty
    /// (its `close` taken too), `Some(true)` when an item follows.
    fn open_list(&mut self, open: u8, close: u8) -> Option<bool> {
        self.expect(open)?;
        self.skip_ws();
        if self.peek()? == close {
            self.at += 1;
            return Some(false);
        }
        Some(true)
    }

    /// After an item: `Some(true)` past a comma (another item follows),
    /// `Some(false)` past the list's `close`.
    fn list_goes_on(&mut self, close: u8) -> Option<bool> {
        self.skip_ws();
        match self.peek()? {
            b',' => {
                self.at += 1;
                self.skip_ws();
                Some(true)
            }
            byte if byte == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// An object at `at` (its `{`), calling `on_member` with each key once
    /// positioned at the member's value (whitespace skipped); `on_member`
    /// must consume the value.
    fn object(
        &mut self,
        depth: u32,
        mut on_member: impl FnMut(&mut Self, &[u8]) -> Option<()>,
    ) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        let mut more = self.open_list(b'{', b'}')?;
        while more {
            // An escaped key may spell a member's name another way.
            let (span, false) = self.string()? else {
                return None;
            };
            let bytes = self.bytes;
            let key = &bytes[span];
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            on_member(self, key)?;
            more = self.list_goes_on(b'}')?;
        }
        Some(())
    }

    /// A recognised member's value into `slot` (`null` is `None`).
    fn member(&mut self, slot: &mut Option<Range<usize>>, depth: u32) -> Option<()> {
        let start = self.at;
        self.value(depth)?;
        if &self.bytes[start..self.at] != b"null" {
            *slot = Some(start..self.at);
        }
        Some(())
    }

    /// `choices`: an array of objects; notes the first object `usage`.
    fn choices(&mut self, choice_usage: &mut Option<Range<usize>>) -> Option<()> {
        let mut more = self.open_list(b'[', b']')?;
        while more {
            // A choice that is not an object (an array deserializes as the
            // fields in order) is left to the deserializer.
            if self.peek()? != b'{' {
                return None;
            }
            let mut usage = None;
            let mut seen = false;
            self.object(2, |reader, key| match key {
                // A repeated `usage` is refused by the deserializer.
                b"usage" if !std::mem::replace(&mut seen, true) => reader.member(&mut usage, 3),
                b"usage" => None,
                _ => reader.value(3),
            })?;
            if choice_usage.is_none() {
                *choice_usage = usage.filter(|span| self.bytes[span.start] == b'{');
            }
            more = self.list_goes_on(b']')?;
        }
        Some(())
    }

    /// Any value at `at`, at nesting `depth`.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth, |reader, _| reader.value(depth + 1)),
            b'[' => self.array(depth),
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            _ => self.number(),
        }
    }

    fn array(&mut self, depth: u32) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        let mut more = self.open_list(b'[', b']')?;
        while more {
            self.value(depth + 1)?;
            more = self.list_goes_on(b']')?;
        }
        Some(())
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        self.bytes[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// `-`? (`0` | `1`-`9` digits*) (`.` digits+)? ((`e`|`E`) (`+`|`-`)? digits+)?
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// A string at `at` (its opening quote): the span between its quotes,
    /// and whether it has escapes. Escapes must be JSON's; raw control
    /// bytes are refused.
    fn string(&mut self) -> Option<(Range<usize>, bool)> {
        self.expect(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            self.at += plain_run(&self.bytes[self.at..]);
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some((start..self.at - 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.bytes.get(self.at + 1..self.at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                // A control byte.
                _ => return None,
            }
        }
    }
}

/// How many bytes at the start of `bytes` need no attention inside a
/// string: not `"`, `\` or a control byte. Sixteen at a time where SSE2
/// is (every x86-64 CPU), then one by one.
#[inline(always)]
fn plain_run(bytes: &[u8]) -> usize {
    let mut at = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of the x86-64 baseline; each unaligned load
        // reads `bytes[at..at + 16]`, inside the slice by the loop condition.
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let below_space = _mm_set1_epi8(0x1f);
            while at + 16 <= bytes.len() {
                let block = _mm_loadu_si128(bytes.as_ptr().add(at).cast::<__m128i>());
                // A byte is a control byte when max(byte, 0x1f) is 0x1f.
                let control = _mm_cmpeq_epi8(_mm_max_epu8(block, below_space), below_space);
                let stops = _mm_or_si128(
                    _mm_or_si128(
                        _mm_cmpeq_epi8(block, quote),
                        _mm_cmpeq_epi8(block, backslash),
                    ),
                    control,
                );
                let mask = _mm_movemask_epi8(stops);
                if mask != 0 {
                    return at + mask.trailing_zeros() as usize;
                }
                at += 16;
            }
        }
    }
    at + bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(bytes.len() - at)
}

#[cfg(test)]
#[path = "usage_event_tests.rs"]
mod tests;
