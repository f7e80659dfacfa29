//! Finding a provider's key in text in any letter case: a provider that
//! quotes the key it was sent may change its case (an upper-cased key
//! still gives most of it away), so masking compares without it.

/// Where `key` first appears in `text`, ASCII letters compared without
/// case. Only the places where the key's first byte is (in either case)
/// are compared, so text without it costs one `memchr` pass.
pub fn find(text: &[u8], key: &[u8]) -> Option<usize> {
    let (&first, last_start) = (key.first()?, text.len().checked_sub(key.len())?);
    let candidates = &text[..=last_start];
    let matches_at = |at: usize| text[at..at + key.len()].eq_ignore_ascii_case(key);
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    if lower == upper {
        memchr::memchr_iter(first, candidates).find(|&at| matches_at(at))
    } else {
        memchr::memchr2_iter(lower, upper, candidates).find(|&at| matches_at(at))
    }
}

/// `text` with every appearance of `key` (in any case) replaced by
/// `mask`; `None` when there is none.
pub fn replaced(text: &[u8], key: &[u8], mask: &[u8]) -> Option<Vec<u8>> {
    let mut at = find(text, key)?;
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    loop {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(mask);
        rest = &rest[at + key.len()..];
        match find(rest, key) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// [`replaced`] for a string. A match is the key's own bytes but for the
/// case of ASCII letters, so it starts and ends on character boundaries.
pub fn replaced_in_str(text: &str, key: &str, mask: &str) -> Option<String> {
    let out = replaced(text.as_bytes(), key.as_bytes(), mask.as_bytes())?;
    Some(String::from_utf8(out).expect("a key's match ends on character boundaries"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_in_any_letter_case() {
        assert_eq!(find(b"key SK-ABC123xyz here", b"sk-abc123XYZ"), Some(4));
        assert_eq!(find(b"sk-abc", b"sk-abc123"), None);
        assert_eq!(find(b"", b"k"), None);
        assert_eq!(find(b"abc", b""), None);
        assert_eq!(find(b"1-key 1-KEY", b"1-key"), Some(0));
    }

    #[test]
    fn every_appearance_is_replaced() {
        assert_eq!(
            replaced(b"a Sk-X1 b sk-x1 c", b"sk-x1", b"***").as_deref(),
            Some(&b"a *** b *** c"[..])
        );
        assert_eq!(replaced(b"nothing here", b"sk-x1", b"***"), None);
        assert_eq!(
            replaced_in_str("é SK-É1 é", "sk-É1", "***").as_deref(),
            Some("é *** é")
        );
    }
}
