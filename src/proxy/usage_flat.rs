//! The usual `usage` object read in one pass: members whose keys need no
//! unescaping and whose values are counts, `null`, or objects of those
//! (`prompt_tokens_details`, `completion_tokens_details`). Providers send
//! nothing else, and this costs a few instructions a byte where the general
//! validating scan costs about twenty. Anything outside that shape is left
//! to the general reading (`None`), which decides it.

use super::usage::UsageFields;

/// `raw`'s counts when it has the usual shape, read exactly as the general
/// reading reads them; `None` when it has not (which says nothing about
/// whether it is valid).
pub(super) fn read(raw: &[u8]) -> Option<UsageFields> {
    let mut fields = UsageFields::default();
    let mut seen = 0u8;
    let mut cursor = Cursor { bytes: raw, at: 0 };
    cursor.members(|cursor, key| {
        let Some((bit, slot)) = fields.slot(key) else {
            return cursor.skip_value();
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        *slot = if bit == UsageFields::DETAILS {
            cursor.details_cached()?
        } else {
            cursor.count()?
        };
        fields.has_details |= bit == UsageFields::DETAILS;
        Some(())
    })?;
    cursor.skip_whitespace();
    (cursor.at == raw.len()).then_some(fields)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip_whitespace(&mut self) {
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// An object, `on_member(cursor, key)` reading each member's value.
    fn members(
        &mut self,
        mut on_member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        if self.next()? != b'{' {
            return None;
        }
        let mut first = true;
        loop {
            match self.next()? {
                b'}' if first => return Some(()),
                b'"' => {}
                _ => return None,
            }
            first = false;
            let key = self.key()?;
            if self.next()? != b':' {
                return None;
            }
            on_member(self, key)?;
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A key's bytes up to its closing quote: printable ASCII without an
    /// escape (any other key is the general reading's). The keys read are
    /// matched whole first, the rest checked byte by byte.
    fn key(&mut self) -> Option<&'a [u8]> {
        const READ: [&[u8]; 5] = [
            b"prompt_tokens",
            b"completion_tokens",
            b"total_tokens",
            b"cached_tokens",
            b"prompt_tokens_details",
        ];
        let rest = &self.bytes[self.at..];
        let len = match READ
            .iter()
            .find(|key| rest.get(key.len()) == Some(&b'"') && rest.starts_with(key))
        {
            Some(key) => key.len(),
            None => rest
                .iter()
                .position(|&b| !(b' '..=b'~').contains(&b) || b == b'"' || b == b'\\')
                .filter(|&end| rest[end] == b'"')?,
        };
        self.at += len + 1;
        Some(&rest[..len])
    }

    /// A count: `Some(None)` for `null`, `Some(Some(n))` for plain digits
    /// that JSON allows (no leading zero) and that fit.
    fn count(&mut self) -> Option<Option<u64>> {
        self.skip_whitespace();
        let rest = &self.bytes[self.at..];
        if rest.starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let number = &rest[..digits];
        let next = rest.get(digits);
        if digits == 0
            || (digits > 1 && number[0] == b'0')
            || next.is_some_and(|b| b".eE".contains(b))
        {
            return None;
        }
        let value = number.iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        self.at += digits;
        Some(Some(value))
    }

    /// `prompt_tokens_details`: `null`, or an object of counts whose
    /// `cached_tokens` is read.
    fn details_cached(&mut self) -> Option<Option<u64>> {
        self.skip_whitespace();
        if self.bytes[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        let mut cached = None;
        self.members(|cursor, key| {
            let count = cursor.count()?;
            if key == b"cached_tokens" {
                if cached.is_some() {
                    return None;
                }
                cached = Some(count);
            }
            Some(())
        })?;
        Some(cached.flatten())
    }

    /// A member the gateway does not read: a count, `null`, or an object
    /// of those.
    fn skip_value(&mut self) -> Option<()> {
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&b'{') {
            return self.members(|cursor, _| cursor.count().map(drop));
        }
        self.count().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USUAL: [&str; 4] = [
        // Moonshot: the cached count beside the others.
        r#"{"cached_tokens":2,"completion_tokens":3,"prompt_tokens":24,"total_tokens":27}"#,
        // OpenAI, with both detail objects.
        r#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
        r#"{ "prompt_tokens" : 5 ,
             "completion_tokens": null, "total_tokens":5, "prompt_tokens_details": null }"#,
        r#"{}"#,
    ];

    #[test]
    fn the_usual_shapes_are_read_in_one_pass() {
        for raw in USUAL {
            let flat = read(raw.as_bytes()).unwrap_or_else(|| panic!("{raw}"));
            assert_eq!(
                Some(&flat),
                UsageFields::scan_members(raw.as_bytes()).as_ref()
            );
        }
        let moonshot = read(USUAL[0].as_bytes()).unwrap();
        assert_eq!(
            (
                moonshot.prompt_tokens,
                moonshot.cached_tokens,
                moonshot.has_details
            ),
            (Some(24), Some(2), false)
        );
        let openai = read(USUAL[1].as_bytes()).unwrap();
        assert_eq!((openai.details_cached, openai.has_details), (Some(0), true));
    }

    #[test]
    fn other_shapes_are_left_to_the_general_reading() {
        for raw in [
            r#"{"prompt_tokens":01}"#,
            r#"{"prompt_tokens":1.0}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens":1e2}"#,
            r#"{"prompt_tokens":18446744073709551616}"#,
            r#"{"prompt_tokens":"3"}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt\u005ftokens":1}"#,
            r#"{"note":"text"}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}"#,
            r#"{"prompt_tokens_details":3}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":nul}"#,
        ] {
            assert!(read(raw.as_bytes()).is_none(), "{raw}");
        }
    }

    /// Every one-byte change to the usual objects: whatever the one-pass
    /// reading reads, the general reading reads the same.
    #[test]
    fn what_it_reads_the_general_reading_reads_too() {
        let mut read_in_one_pass = 0;
        for raw in USUAL {
            for at in 0..raw.len() {
                for byte in [
                    b'0', b'1', b'9', b'"', b'\\', b'{', b'}', b',', b':', b' ', b'n', b'-', b'.',
                    b'e', b'x', 0, 0x80,
                ] {
                    let mut changed = raw.as_bytes().to_vec();
                    changed[at] = byte;
                    if let Some(flat) = read(&changed) {
                        read_in_one_pass += 1;
                        let general = UsageFields::scan_members(&changed);
                        assert_eq!(Some(flat), general, "{}", String::from_utf8_lossy(&changed));
                    }
                }
            }
        }
        // Digit changes and the like are still read in one pass.
        assert!(read_in_one_pass > 200, "{read_in_one_pass}");
    }
}
