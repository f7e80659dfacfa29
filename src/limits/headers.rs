//! The `x-ratelimit-*` response headers, as OpenAI sends them: limit,
//! remaining and reset for requests and for tokens, from the tightest scope
//! that applied. Resets use OpenAI's duration style (`20ms`, `1s`, `6m0s`,
//! `1h2m3.5s`): the time until that limit is back to full.

use super::spec::Snapshot;
use crate::wire_fields::WireFields;
use http::HeaderName;
use std::time::Duration;

const REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
const TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// Writes the headers for every window the snapshot has, formatted
/// straight into the response's wire fields.
pub fn write(fields: &mut WireFields, snapshot: &Snapshot) {
    for (names, window) in [(&REQUESTS, snapshot.requests), (&TOKENS, snapshot.tokens)] {
        let Some(window) = window else { continue };
        let [limit, remaining, reset] = names;
        fields.push_u64(limit, window.limit);
        fields.push_u64(remaining, window.remaining);
        fields.push_with(reset, |out| format_duration_into(out, window.reset));
    }
}

/// [`format_duration_into`] as a string, for the tests.
#[cfg(test)]
fn format_duration(d: Duration) -> String {
    let mut text = Vec::new();
    format_duration_into(&mut text, d);
    String::from_utf8(text).expect("digits and unit letters")
}

/// `0s`, `250ms`, `1s`, `1.5s`, `6m0s`, `2h0m0s`: hours and minutes whole,
/// seconds with up to three decimals, milliseconds below one second.
fn format_duration_into(out: &mut Vec<u8>, d: Duration) {
    let ms = d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0);
    let mut number = itoa::Buffer::new();
    if ms == 0 {
        out.extend_from_slice(b"0s");
        return;
    }
    if ms < 1000 {
        out.extend_from_slice(number.format(ms).as_bytes());
        out.extend_from_slice(b"ms");
        return;
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    if hours > 0 {
        out.extend_from_slice(number.format(hours).as_bytes());
        out.push(b'h');
    }
    if hours > 0 || minutes > 0 {
        out.extend_from_slice(number.format(minutes).as_bytes());
        out.push(b'm');
    }
    out.extend_from_slice(number.format(rest / 1000).as_bytes());
    let millis = rest % 1000;
    if millis != 0 {
        let fraction = [millis / 100, millis / 10 % 10, millis % 10];
        let digits = if millis % 100 == 0 {
            1
        } else if millis % 10 == 0 {
            2
        } else {
            3
        };
        out.push(b'.');
        for digit in &fraction[..digits] {
            out.push(b'0' + *digit as u8);
        }
    }
    out.push(b's');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::spec::Window;

    #[test]
    fn durations_look_like_openais() {
        let f = |ms| format_duration(Duration::from_millis(ms));
        assert_eq!(f(0), "0s");
        assert_eq!(f(17), "17ms");
        assert_eq!(f(1000), "1s");
        assert_eq!(f(1500), "1.5s");
        assert_eq!(f(360_000), "6m0s");
        assert_eq!(f(7_203_250), "2h0m3.25s");
        assert_eq!(f(61_005), "1m1.005s");
        assert_eq!(f(3_600_000), "1h0m0s");
        assert_eq!(f(999), "999ms");
        assert_eq!(format_duration(Duration::from_nanos(1)), "1ms");
    }

    #[test]
    fn writes_both_windows() {
        let mut headers = WireFields::default();
        let window = Window {
            limit: 60,
            remaining: 59,
            reset: Duration::from_secs(1),
        };
        write(
            &mut headers,
            &Snapshot {
                requests: Some(window),
                tokens: None,
            },
        );
        assert_eq!(
            headers.as_bytes(),
            b"x-ratelimit-limit-requests: 60\r\nx-ratelimit-remaining-requests: 59\r\n\
              x-ratelimit-reset-requests: 1s\r\n"
        );

        let tokens = Window {
            limit: 1_000_000,
            remaining: 250,
            reset: Duration::from_millis(1500),
        };
        for requests in [Some(window), None] {
            let mut headers = WireFields::default();
            write(
                &mut headers,
                &Snapshot {
                    requests,
                    tokens: Some(tokens),
                },
            );
            let value = |name| {
                headers
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            assert_eq!(value("x-ratelimit-limit-tokens").unwrap(), "1000000");
            assert_eq!(value("x-ratelimit-remaining-tokens").unwrap(), "250");
            assert_eq!(value("x-ratelimit-reset-tokens").unwrap(), "1.5s");
            assert_eq!(
                value("x-ratelimit-reset-requests").is_some(),
                requests.is_some()
            );
            assert_eq!(
                headers.iter().count(),
                if requests.is_some() { 6 } else { 3 }
            );
        }
    }
}
