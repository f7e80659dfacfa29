//! The `x-ratelimit-*` response headers, as OpenAI sends them: limit,
//! remaining and reset for requests and for tokens, from the tightest scope
//! that applied. Resets use OpenAI's duration style (`20ms`, `1s`, `6m0s`,
//! `1h2m3.5s`): the time until that limit is back to full.

use super::spec::Snapshot;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
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

/// Writes the headers for every window the snapshot has. The values are
/// formatted into one buffer and each header holds a slice of it: one
/// allocation for all six instead of two per value.
pub fn write(headers: &mut HeaderMap, snapshot: &Snapshot) {
    let windows = [(&REQUESTS, snapshot.requests), (&TOKENS, snapshot.tokens)];
    let mut text = String::with_capacity(64);
    let mut ends = [0usize; 6];
    for (i, (_, window)) in windows.iter().enumerate() {
        let Some(window) = window else { continue };
        text.push_str(itoa::Buffer::new().format(window.limit));
        ends[i * 3] = text.len();
        text.push_str(itoa::Buffer::new().format(window.remaining));
        ends[i * 3 + 1] = text.len();
        format_duration_into(&mut text, window.reset);
        ends[i * 3 + 2] = text.len();
    }
    let buffer = Bytes::from(text);
    let mut start = 0;
    for (i, (names, window)) in windows.iter().enumerate() {
        if window.is_none() {
            continue;
        }
        for (j, name) in names.iter().enumerate() {
            let end = ends[i * 3 + j];
            let value = HeaderValue::from_maybe_shared(buffer.slice(start..end))
                .expect("digits and unit letters");
            headers.insert(name.clone(), value);
            start = end;
        }
    }
}

/// `0s`, `250ms`, `1s`, `1.5s`, `6m0s`, `2h0m0s`: hours and minutes whole,
/// seconds with up to three decimals, milliseconds below one second.
pub fn format_duration(d: Duration) -> String {
    let mut text = String::new();
    format_duration_into(&mut text, d);
    text
}

fn format_duration_into(out: &mut String, d: Duration) {
    let ms = d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0);
    let mut number = itoa::Buffer::new();
    if ms == 0 {
        out.push_str("0s");
        return;
    }
    if ms < 1000 {
        out.push_str(number.format(ms));
        out.push_str("ms");
        return;
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    if hours > 0 {
        out.push_str(number.format(hours));
        out.push('h');
    }
    if hours > 0 || minutes > 0 {
        out.push_str(number.format(minutes));
        out.push('m');
    }
    out.push_str(number.format(rest / 1000));
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
        out.push('.');
        for digit in &fraction[..digits] {
            out.push(char::from(b'0' + *digit as u8));
        }
    }
    out.push('s');
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
        let mut headers = HeaderMap::new();
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
        assert_eq!(headers["x-ratelimit-limit-requests"], "60");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "59");
        assert_eq!(headers["x-ratelimit-reset-requests"], "1s");
        assert!(!headers.contains_key("x-ratelimit-limit-tokens"));

        let tokens = Window {
            limit: 1_000_000,
            remaining: 250,
            reset: Duration::from_millis(1500),
        };
        for requests in [Some(window), None] {
            let mut headers = HeaderMap::new();
            write(
                &mut headers,
                &Snapshot {
                    requests,
                    tokens: Some(tokens),
                },
            );
            assert_eq!(headers["x-ratelimit-limit-tokens"], "1000000");
            assert_eq!(headers["x-ratelimit-remaining-tokens"], "250");
            assert_eq!(headers["x-ratelimit-reset-tokens"], "1.5s");
            assert_eq!(
                headers.contains_key("x-ratelimit-reset-requests"),
                requests.is_some()
            );
        }
    }
}
