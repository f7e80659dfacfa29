//! Client-chosen text (a model name, a path) as errors and logs show it:
//! whole when short, else its start and its length, so that a client
//! cannot make the gateway copy megabytes into an answer or the log.

use std::borrow::Cow;

/// `text` whole when it is at most `max` bytes, else its first `max`
/// bytes (cut at a character boundary) and its length.
pub fn cut_with_length(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes)", &text[..end], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_whole_and_long_text_is_cut_at_a_character() {
        assert_eq!(cut_with_length("/v1/models", 16), "/v1/models");
        assert_eq!(cut_with_length("abcdef", 6), "abcdef");
        assert_eq!(cut_with_length("abcdefg", 6), "abcdef... (7 bytes)");
        // `é` is two bytes: a cut inside it leaves it out.
        assert_eq!(cut_with_length("abcde\u{e9}x", 6), "abcde... (8 bytes)");
    }
}
