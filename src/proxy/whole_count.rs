//! A JSON number read as a whole count of tokens, in whatever form it is
//! written: `7`, `7.0`, `7e0` and `0.7e1` are all seven. Token caps in a
//! request and token counts in a provider's usage are read this way.

/// The count `number` (a JSON number whose grammar was already checked)
/// stands for: a fraction rounded up, a value beyond `u64` held at
/// `u64::MAX`, `None` when it is below zero.
pub fn whole_count(number: &[u8]) -> Option<u64> {
    if let Some(count) = plain_digits(number) {
        return Some(count);
    }
    // Any other form parses as a float; Rust reads one too large for an
    // `f64` as infinity, which the cast holds at `u64::MAX`.
    let value: f64 = std::str::from_utf8(number).ok()?.parse().ok()?;
    (value >= 0.0).then(|| value.ceil() as u64)
}

/// Digits only, fitting a `u64`: the usual form, read without a float.
fn plain_digits(number: &[u8]) -> Option<u64> {
    if number.is_empty() || number.len() > 20 {
        return None;
    }
    number.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then_some(())
            .and_then(|()| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
    })
}

#[cfg(test)]
mod tests {
    use super::whole_count;

    #[test]
    fn every_number_form_is_read_as_its_value() {
        for (number, count) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("11.0", Some(11)),
            ("1.1e1", Some(11)),
            ("11E0", Some(11)),
            ("0.11e+2", Some(11)),
            ("110e-1", Some(11)),
            ("2.5", Some(3)),
            ("0.0", Some(0)),
            ("-0", Some(0)),
            ("-0.0", Some(0)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", Some(u64::MAX)),
            ("1e400", Some(u64::MAX)),
            ("-5", None),
            ("-1e-400", Some(0)),
        ] {
            assert_eq!(whole_count(number.as_bytes()), count, "{number}");
        }
    }
}
