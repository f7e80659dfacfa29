//! Finds where a JSON string's plain run ends: the first `"`, `\` or raw
//! newline. This is the inner loop of the request body scan.
//!
//! A long prompt is mostly many short strings (a conversation's messages,
//! escaped quotes and newlines every few dozen bytes), and `memchr3` spends
//! more on setting up each call than on the bytes of a short run. Runs are
//! first looked at 16 bytes at a time inline (SSE2, which every x86-64 CPU
//! has); only a run longer than [`INLINE_BYTES`] (an inline image) is handed
//! to `memchr3`, which is faster per byte over long stretches.

/// Bytes checked inline before the rest of a run goes to `memchr3`.
const INLINE_BYTES: usize = 64;

/// Index of the first `"`, `\` or `\n` in `bytes`.
#[inline(always)]
pub fn find(bytes: &[u8]) -> Option<usize> {
    let inline_len = bytes.len().min(INLINE_BYTES);
    let checked = match find_in_blocks(&bytes[..inline_len]) {
        Ok(found) => return Some(found),
        Err(checked) => checked,
    };
    if checked == bytes.len() {
        return None;
    }
    if bytes.len() - checked < 16 {
        return bytes[checked..]
            .iter()
            .position(|&b| is_stop(b))
            .map(|i| checked + i);
    }
    memchr::memchr3(b'"', b'\\', b'\n', &bytes[checked..]).map(|i| checked + i)
}

#[inline(always)]
fn is_stop(byte: u8) -> bool {
    matches!(byte, b'"' | b'\\' | b'\n')
}

/// Looks at whole 16-byte blocks of `bytes`: `Ok(index)` of the first stop
/// byte in them, or `Err(bytes checked)` (a multiple of 16) when none is.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn find_in_blocks(bytes: &[u8]) -> Result<usize, usize> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let mut at = 0;
    // SAFETY: SSE2 is part of the x86-64 baseline, so these intrinsics are
    // always available; each unaligned 16-byte load reads `bytes[at..at + 16]`,
    // which the loop condition keeps inside the slice.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let newline = _mm_set1_epi8(b'\n' as i8);
        while at + 16 <= bytes.len() {
            let block = _mm_loadu_si128(bytes.as_ptr().add(at).cast::<__m128i>());
            let stops = _mm_or_si128(
                _mm_or_si128(
                    _mm_cmpeq_epi8(block, quote),
                    _mm_cmpeq_epi8(block, backslash),
                ),
                _mm_cmpeq_epi8(block, newline),
            );
            let mask = _mm_movemask_epi8(stops);
            if mask != 0 {
                return Ok(at + mask.trailing_zeros() as usize);
            }
            at += 16;
        }
    }
    Err(at)
}

/// Elsewhere every byte goes through the same loop as a short tail.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn find_in_blocks(bytes: &[u8]) -> Result<usize, usize> {
    match bytes.iter().position(|&b| is_stop(b)) {
        Some(found) => Ok(found),
        None => Err(bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(bytes: &[u8]) -> Option<usize> {
        bytes.iter().position(|&b| is_stop(b))
    }

    #[test]
    fn finds_the_first_stop_byte_at_every_position_and_length() {
        for len in 0..200 {
            let plain = vec![b'a'; len];
            assert_eq!(find(&plain), None, "len {len}");
            for at in 0..len {
                for stop in [b'"', b'\\', b'\n'] {
                    let mut bytes = plain.clone();
                    bytes[at] = stop;
                    // A later stop must not win over the first.
                    if at + 1 < len {
                        bytes[len - 1] = b'"';
                    }
                    assert_eq!(find(&bytes), Some(at), "len {len}, at {at}, {stop}");
                }
            }
        }
    }

    #[test]
    fn bytes_near_the_stop_bytes_and_high_bytes_are_not_stops() {
        let mut bytes: Vec<u8> = (0..=255u8).filter(|&b| !is_stop(b)).collect();
        bytes.extend_from_slice("é€😀".as_bytes());
        assert_eq!(find(&bytes), expected(&bytes));
        bytes.push(b'\\');
        assert_eq!(find(&bytes), expected(&bytes));
    }
}
