//! The `x-ratelimit-*` response headers, as OpenAI sends them: limit,
//! remaining and reset for requests and for tokens, from the tightest scope
//! that applied. Resets use OpenAI's duration style (`20ms`, `1s`, `6m0s`,
//! `1h2m3.5s`): the time until that limit is back to full.

use super::spec::{Snapshot, Window};
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

/// Writes the headers for every window the snapshot has.
pub fn write(headers: &mut HeaderMap, snapshot: &Snapshot) {
    if let Some(window) = snapshot.requests {
        write_window(headers, &REQUESTS, window);
    }
    if let Some(window) = snapshot.tokens {
        write_window(headers, &TOKENS, window);
    }
}

fn write_window(headers: &mut HeaderMap, names: &[HeaderName; 3], window: Window) {
    let [limit, remaining, reset] = names.clone();
    headers.insert(limit, HeaderValue::from(window.limit));
    headers.insert(remaining, HeaderValue::from(window.remaining));
    let text = format_duration(window.reset);
    headers.insert(
        reset,
        HeaderValue::try_from(text).expect("digits and unit letters"),
    );
}

/// `0s`, `250ms`, `1s`, `1.5s`, `6m0s`, `2h0m0s`: hours and minutes whole,
/// seconds with up to three decimals, milliseconds below one second.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0);
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let seconds = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        let text = format!("{}.{:03}", rest / 1000, rest % 1000);
        format!("{}s", text.trim_end_matches('0'))
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_look_like_openais() {
        let f = |ms| format_duration(Duration::from_millis(ms));
        assert_eq!(f(0), "0s");
        assert_eq!(f(17), "17ms");
        assert_eq!(f(1000), "1s");
        assert_eq!(f(1500), "1.5s");
        assert_eq!(f(360_000), "6m0s");
        assert_eq!(f(7_203_250), "2h0m3.25s");
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
    }
}
