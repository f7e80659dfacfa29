//! What a model name may be, configured or found by a catalogue refresh:
//! visible ASCII, at most 256 bytes. A name is a route, a metric label and
//! a log field: a line break, a control character or a name of kilobytes
//! would reach all three, and a space at either end makes a name no
//! client sends.

/// The longest model name taken.
pub const MAX_ID_BYTES: usize = 256;

/// Why `id` cannot be a model name; `None` when it can.
pub fn problem(id: &str) -> Option<&'static str> {
    if id.trim().is_empty() {
        Some("is empty")
    } else if id.len() > MAX_ID_BYTES {
        Some("is longer than 256 bytes")
    } else if !id.bytes().all(|b| b.is_ascii_graphic()) {
        Some(
            "may hold only visible ASCII characters (no spaces, line breaks or other control characters)",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn names_are_visible_ascii_of_at_most_256_bytes() {
        for ok in ["kimi-k2.6", "moonshot/kimi-k2-preview", &"k".repeat(256)] {
            assert_eq!(problem(ok), None, "{ok}");
        }
        assert_eq!(problem(" "), Some("is empty"));
        assert_eq!(problem(&"k".repeat(257)), Some("is longer than 256 bytes"));
        for bad in ["kimi ", " kimi", "ki\nmi", "ki\u{0}mi", "kimi\u{1F600}"] {
            assert!(
                problem(bad).unwrap().starts_with("may hold only"),
                "{bad:?}"
            );
        }
    }
}
