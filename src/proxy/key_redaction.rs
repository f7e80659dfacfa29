//! A provider's keys masked wherever the provider quotes them: some
//! providers echo (part of) the key they were sent in an error message, an
//! error event or a header value, and it must never reach a client, the
//! log or the metrics. Keys are found in any letter case (an upper-cased
//! key still gives most of it away) and as JSON escapes them.

use crate::config::Provider;
use http::HeaderValue;

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

/// `bytes` with the provider's keys (in any letter case) replaced by
/// `***`, when one is in them (an error event or a header value that
/// quotes the key it was sent).
pub fn redact_secrets(bytes: &[u8], provider: &Provider) -> Option<Vec<u8>> {
    let mut redacted: Option<Vec<u8>> = None;
    for key in &provider.keys {
        let text = redacted.as_deref().unwrap_or(bytes);
        if let Some(out) = replaced(text, key.secret.as_bytes(), b"***") {
            redacted = Some(out);
        }
    }
    redacted
}

/// Whether `text` quoted one of the provider's keys in any letter case
/// (now `***`), as it is or as JSON escapes it: a message that was a JSON
/// object is shown as its JSON text, where a key holding `"` or `\` is
/// escaped.
pub fn redact(text: &mut String, provider: &Provider) -> bool {
    let mut quoted = false;
    for key in &provider.keys {
        if let Some(out) = replaced_in_str(text, &key.secret, "***") {
            *text = out;
            quoted = true;
        }
        let escaped = serde_json::to_string(&key.secret).expect("a string encodes");
        let escaped = &escaped[1..escaped.len() - 1];
        if escaped != key.secret
            && let Some(out) = replaced_in_str(text, escaped, "***")
        {
            *text = out;
            quoted = true;
        }
    }
    quoted
}

/// `json` (a valid document) with every string that quotes one of the
/// provider's keys, as JSON decodes it, masked with `***` and encoded
/// again; the rest byte for byte. `None` when no string quotes one. A raw
/// search would miss a key the provider escaped (`sk-ab\/cd`, `\u0061bc`),
/// which every JSON parser turns back into the key.
pub fn redact_json_strings(json: &[u8], provider: &Provider) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut at = 0;
    while let Some(open) = memchr::memchr(b'"', &json[at..]).map(|i| at + i) {
        // Outside strings a valid document has no quote: this opens one.
        let mut close = open + 1;
        loop {
            match json.get(close)? {
                b'\\' => close += 2,
                b'"' => break,
                _ => close += 1,
            }
        }
        at = close + 1;
        let token = &json[open..at];
        let Ok(mut text) = serde_json::from_slice::<String>(token) else {
            continue;
        };
        if redact(&mut text, provider) {
            let out = out.get_or_insert_with(|| Vec::with_capacity(json.len()));
            out.extend_from_slice(&json[copied..open]);
            serde_json::to_writer(&mut *out, &text).expect("a string encodes");
            copied = at;
        }
    }
    let mut out = out?;
    out.extend_from_slice(&json[copied..]);
    Some(out)
}

/// A provider's header value for the client, with the provider's key
/// replaced when the value quotes it.
pub fn redacted_value(value: HeaderValue, provider: &Provider) -> HeaderValue {
    match redact_secrets(value.as_bytes(), provider) {
        Some(redacted) => HeaderValue::from_bytes(&redacted).unwrap_or(value),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_provider;

    /// Strings are read as JSON decodes them; only those quoting the key
    /// change, everything else keeps its bytes (spacing, order, escapes).
    #[test]
    fn json_strings_quoting_the_key_are_masked_however_escaped() {
        let provider = test_provider();
        let redact = |json: &str| {
            redact_json_strings(json.as_bytes(), &provider).map(|b| String::from_utf8(b).unwrap())
        };
        assert_eq!(redact(r#"{"a": "x\/y", "b": [1, "\u00e9"]}"#), None);
        assert_eq!(
            redact(r#"{"m" : "key secret\u002dkey-123!", "n": "\/ok", "k":{"secret-key-123":1}}"#)
                .as_deref(),
            Some(r#"{"m" : "key ***!", "n": "\/ok", "k":{"***":1}}"#)
        );
        assert_eq!(
            redact(r#"["secret-key-123", "say \"secret-key-123\""]"#).as_deref(),
            Some(r#"["***", "say \"***\""]"#)
        );
    }

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
