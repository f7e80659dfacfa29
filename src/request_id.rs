//! Request ids: the client's `x-request-id` when it is usable and is no
//! key, else a generated one. The id is logged, returned to the client and
//! sent to the provider.

use crate::proxy::headers::X_REQUEST_ID;
use crate::state::AppState;
use http::HeaderValue;

/// A request's id: the client's `x-request-id` when usable (printable
/// ASCII, at most 128 bytes), else a new one.
pub fn request_id(headers: &http::HeaderMap, state: &AppState) -> HeaderValue {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| is_usable_id(v.as_bytes()) && !is_a_key(v.as_bytes(), headers, state))
        .cloned()
        .unwrap_or_else(generate_id)
}

/// Whether a client's request id is a key (its own, sent in the wrong
/// field, or any configured one) or holds a provider key: the id is
/// logged, returned and sent to the provider, a key never is.
fn is_a_key(id: &[u8], headers: &http::HeaderMap, state: &AppState) -> bool {
    let config = state.peek_config();
    crate::auth::is_presented_key(headers, id)
        || crate::misplaced_keys::is_key(&config, id)
        || crate::misplaced_keys::holds_provider_key(&config, id)
}

/// Whether a request id (a client's, or a provider's passed on as
/// `x-upstream-request-id`) is fit to log and return: visible ASCII, 1 to
/// 128 bytes.
pub fn is_usable_id(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// `req_` and 32 hex digits, built on the stack: one allocation, the value's.
pub fn generate_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"req_00000000000000000000000000000000";
    // A byte at a time (two digits), not a 128-bit shift per digit.
    let random = fastrand::u128(..).to_be_bytes();
    for (digits, byte) in id[4..].chunks_exact_mut(2).zip(random) {
        digits[0] = HEX[usize::from(byte >> 4)];
        digits[1] = HEX[usize::from(byte & 0xf)];
    }
    // Owned, not copied: the id is cloned (response header, upstream request,
    // log), and a copied buffer would allocate again on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
        .expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_prefixed_hex_and_distinct() {
        let a = generate_id();
        let b = generate_id();
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36);
        assert!(text.starts_with("req_"));
        assert!(
            text[4..]
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert!(is_usable_id(a.as_bytes()));
        // Every position takes every digit: all 128 random bits are used.
        let mut seen = [[false; 16]; 32];
        for _ in 0..2_000 {
            let id = generate_id();
            for (position, digit) in id.as_bytes()[4..].iter().enumerate() {
                let value = char::from(*digit).to_digit(16).unwrap() as usize;
                seen[position][value] = true;
            }
        }
        assert!(seen.iter().flatten().all(|&s| s), "{seen:?}");
    }
}
