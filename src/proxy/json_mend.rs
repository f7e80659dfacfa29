//! A provider's error body that serde_json refuses, mended so its members
//! can still be read: a body cut at the read limit ends at its last whole
//! member with its open objects and arrays closed, and a lone UTF-16
//! surrogate escape (which Python's and JavaScript's JSON encoders write,
//! and serde_json will not decode) becomes U+FFFD. Without this, one long
//! or odd member would cost the error its message, type and code, and a
//! quota error would be read as a retryable rate limit.

/// `json` with lone surrogate escapes replaced and, when it was cut short,
/// trimmed back to its last whole member and closed. A document that
/// needs neither comes back byte for byte.
pub fn mended(json: &[u8]) -> Vec<u8> {
    mend(json).0
}

/// `json` with lone surrogate escapes replaced, if it is otherwise whole:
/// `None` for a document cut short (a container or string left open). An
/// error event or a whole body was not cut by a read limit, so what such
/// mending would drop is not the error's to lose.
pub fn surrogates_mended(json: &[u8]) -> Option<Vec<u8>> {
    match mend(json) {
        (out, false) => Some(out),
        (_, true) => None,
    }
}

/// The mended document, and whether it was cut short.
fn mend(json: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(json.len() + 8);
    // The closer of each object or array open at this point.
    let mut open: Vec<u8> = Vec::new();
    // `out`'s length at the last point the document could end, once its
    // open containers are closed: just inside an opening bracket, after a
    // closing one, or before a comma (the member or item before it whole).
    let mut whole = 0;
    let mut in_string = false;
    let mut at = 0;
    while let Some(&byte) = json.get(at) {
        if in_string {
            match byte {
                b'"' => in_string = false,
                b'\\' => {
                    let escape = escape_at(json, at);
                    let len = escape.len(json, at);
                    if escape == Escape::LoneSurrogate {
                        out.extend_from_slice(br"\ufffd");
                    } else {
                        out.extend_from_slice(&json[at..at + len]);
                    }
                    at += len;
                    continue;
                }
                _ => {}
            }
            out.push(byte);
            at += 1;
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' => open.push(b'}'),
            b'[' => open.push(b']'),
            b'}' | b']' => {
                open.pop();
            }
            b',' => whole = out.len(),
            _ => {}
        }
        out.push(byte);
        if matches!(byte, b'{' | b'[' | b'}' | b']') {
            whole = out.len();
        }
        at += 1;
    }
    let cut = !open.is_empty() || in_string;
    if !open.is_empty() {
        // Nothing opened or closed after `whole` (each would have moved
        // it), so what is open now was open there.
        out.truncate(whole);
        out.extend(open.iter().rev());
    }
    (out, cut)
}

/// The escape sequence starting at a backslash inside a string.
#[derive(Clone, Copy, PartialEq)]
enum Escape {
    /// `\ud83d\ude00`: a high and a low surrogate, one character.
    Pair,
    /// A surrogate without its other half: no character at all.
    LoneSurrogate,
    /// Anything else, kept as it is (serde_json judges it).
    Other,
}

impl Escape {
    /// Bytes the escape spans (fewer at the end of a cut document).
    fn len(self, json: &[u8], at: usize) -> usize {
        let len = match self {
            Escape::Pair => 12,
            Escape::LoneSurrogate => 6,
            Escape::Other => 2,
        };
        len.min(json.len() - at)
    }
}

fn escape_at(json: &[u8], at: usize) -> Escape {
    let Some(unit) = unicode_escape(json, at) else {
        return Escape::Other;
    };
    match unit {
        0xD800..=0xDBFF => match unicode_escape(json, at + 6) {
            Some(0xDC00..=0xDFFF) => Escape::Pair,
            _ => Escape::LoneSurrogate,
        },
        0xDC00..=0xDFFF => Escape::LoneSurrogate,
        _ => Escape::Other,
    }
}

/// The code unit of a `\uXXXX` escape at `at`.
fn unicode_escape(json: &[u8], at: usize) -> Option<u16> {
    let escape = json.get(at..at + 6)?;
    if &escape[..2] != br"\u" {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(&escape[2..]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::{mended, surrogates_mended};

    fn mend(json: &str) -> String {
        String::from_utf8(mended(json.as_bytes())).unwrap()
    }

    #[test]
    fn a_whole_document_comes_back_unchanged() {
        for json in [
            r#"{"a":[1,{"b":"x\"y\\"}],"c":"\ud83d\ude00 \u00e9"}"#,
            r#"{"error":{"message":"m"}}"#,
            "not json at all",
        ] {
            assert_eq!(mend(json), json);
        }
    }

    #[test]
    fn a_cut_document_ends_at_its_last_whole_member() {
        assert_eq!(
            mend(
                r#"{"error":{"message":"out of credit","type":"exceeded_current_quota_error","pad":"xxxx"#
            ),
            r#"{"error":{"message":"out of credit","type":"exceeded_current_quota_error"}}"#
        );
        assert_eq!(mend(r#"{"message":["a","b"#), r#"{"message":["a"]}"#);
        assert_eq!(mend(r#"{"a":{"b":1},"c":{"#), r#"{"a":{"b":1},"c":{}}"#);
        // Brackets and commas inside strings are text, not structure.
        assert_eq!(
            mend(r#"{"message":"a, {b] \"c,","x":"[[[,"#),
            r#"{"message":"a, {b] \"c,"}"#
        );
        // Cut inside an escape.
        assert_eq!(mend(r#"{"a":"b","c":"\u00"#), r#"{"a":"b"}"#);
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        assert_eq!(
            mend(r#"{"message":"bad \ud800 and \udfff, good \ud83d\ude00","k":"\\ud800"}"#),
            r#"{"message":"bad \ufffd and \ufffd, good \ud83d\ude00","k":"\\ud800"}"#
        );
        let value: serde_json::Value =
            serde_json::from_slice(&mended(br#"{"m":"\uDBFF\u0041"}"#)).unwrap();
        assert_eq!(value["m"], "\u{fffd}A");
    }

    #[test]
    fn only_a_whole_document_is_mended_for_its_surrogates() {
        assert_eq!(
            surrogates_mended(br#"{"m":"\ud800"}"#).as_deref(),
            Some(&br#"{"m":"\ufffd"}"#[..])
        );
        assert_eq!(
            surrogates_mended(b"not json").as_deref(),
            Some(&b"not json"[..])
        );
        for cut in [
            &br#"{"error":"invalid key sk-1"#[..],
            br#"{"error":{"message":"x""#,
            br#"{"error":["x""#,
            br#""open"#,
        ] {
            assert!(
                surrogates_mended(cut).is_none(),
                "{}",
                String::from_utf8_lossy(cut)
            );
        }
    }
}
