//! How long a provider asked the gateway to wait before trying it again:
//! its `retry-after-ms`, its `Retry-After` (seconds or an HTTP date), or,
//! on a 429 without either, the wait Moonshot writes into the message
//! ("… please try again after 3 seconds").

use crate::error::RetryAfterMs;
use http::HeaderValue;
use std::time::{Duration, SystemTime};

/// The waits a provider's answer states in its header fields, passed on to
/// the client as they are.
#[derive(Debug, Default)]
pub struct AskedWait {
    pub retry_after: Option<HeaderValue>,
    pub retry_after_ms: Option<RetryAfterMs>,
    /// A `Retry-After` came that is neither seconds nor a date, or a
    /// `retry-after-ms` that is no number (and so is not passed on): the
    /// provider asked for a wait the gateway cannot read, and unless the
    /// other field or the message says one, its target is skipped rather
    /// than tried again at once.
    pub retry_after_unreadable: bool,
}

impl AskedWait {
    /// The waits an error's head states, as they go to the client.
    pub fn in_head(headers: &crate::client::Headers) -> AskedWait {
        let sent_retry_after = headers.get("retry-after");
        let retry_after = sent_retry_after
            .and_then(|v| headers.shared_value(v))
            .and_then(forwarded_retry_after);
        let sent_retry_after_ms = headers.get("retry-after-ms");
        let retry_after_ms = sent_retry_after_ms.and_then(forwarded_retry_after_ms);
        // A wait of zero (or a date past) asks for none: passed on, the
        // Node SDK retries at once, even a 429; left out, each SDK uses
        // its own backoff, and the message's stated wait can be read.
        let no_wait = retry_after
            .as_ref()
            .is_some_and(|v| asks_no_wait(v.as_bytes()));
        let retry_after = retry_after.filter(|_| !no_wait);
        let no_wait_ms = retry_after_ms.is_some_and(|ms| ms.get() == 0);
        let retry_after_ms = retry_after_ms.filter(|_| !no_wait_ms);
        AskedWait {
            retry_after_unreadable: (sent_retry_after.is_some()
                && retry_after.is_none()
                && !no_wait)
                || (sent_retry_after_ms.is_some() && retry_after_ms.is_none() && !no_wait_ms),
            retry_after,
            retry_after_ms,
        }
    }
}

/// Longest wait taken from a provider's words; a larger number is kept at
/// this (still far beyond any `retry.max_retry_after_secs`).
const MAX_STATED_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A number as a provider writes a wait: digits, a fraction or an
/// exponent (`1e3`). Rust's float reading also takes `inf`, `infinity`
/// and `NaN`, which are no wait.
fn wait_number(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A wait in (fractional) seconds, capped before it becomes a `Duration`
/// (which cannot hold 1e20 seconds); `None` if negative.
fn capped_secs(secs: f64) -> Option<Duration> {
    (secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_STATED_WAIT.as_secs_f64())))
}

/// A `Retry-After` value as a wait from `now`: delay-seconds (fractions
/// accepted) or an HTTP date, a date already past being no wait at all.
/// `None` when it is neither.
pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Some(secs) = wait_number(text) {
        return capped_secs(secs);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_STATED_WAIT),
    )
}

/// A provider's `Retry-After` as the client gets it: delay-seconds or an
/// HTTP date as sent, a fraction of seconds (or `1e3`) as whole seconds
/// rounded up, anything else dropped; a wait over a day is a day, as
/// `retry-after-ms` is (a client's integer may not hold twenty digits).
/// Free text is the provider's alone and could quote anything, the key
/// the gateway sent included; a client can use only a number or a date.
pub fn forwarded_retry_after(value: HeaderValue) -> Option<HeaderValue> {
    let text = std::str::from_utf8(value.as_bytes()).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let within_a_day = text
            .parse::<u64>()
            .is_ok_and(|secs| secs <= MAX_STATED_WAIT.as_secs());
        return Some(if within_a_day {
            value
        } else {
            HeaderValue::from(MAX_STATED_WAIT.as_secs())
        });
    }
    if httpdate::parse_http_date(text).is_ok() {
        return Some(value);
    }
    let secs = capped_secs(wait_number(text)?)?;
    Some(HeaderValue::from(secs.as_secs_f64().ceil() as u64))
}

/// Whether a forwarded `Retry-After` asks for no wait: `0`, or a date
/// already past.
pub fn asks_no_wait(value: &[u8]) -> bool {
    retry_after(value, SystemTime::now()) == Some(Duration::ZERO)
}

/// A `retry-after-ms` value (whole or fractional milliseconds).
pub fn retry_after_ms(value: &[u8]) -> Option<Duration> {
    let ms = wait_number(std::str::from_utf8(value).ok()?.trim())?;
    capped_secs(ms / 1000.0)
}

/// A provider's `retry-after-ms` as the client gets it: whole
/// milliseconds, rounded up (zero is left out by the caller). `None` when it is no number.
pub fn forwarded_retry_after_ms(value: &[u8]) -> Option<RetryAfterMs> {
    let wait = retry_after_ms(value)?;
    let ms = u32::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX);
    Some(RetryAfterMs::new(ms))
}

/// The wait a rate-limit message states, in lowercase `message`: "try
/// again after 3 seconds", "retry after 1.5s", "try again in 500 ms",
/// "try again in 7m12s", "in 2 hours". A number without a unit is seconds;
/// a unit it does not know, or a number that starts a date or a time
/// ("after 2026-12-02", "after 10:30"), is no stated wait: a wrong short
/// wait is worse than none.
pub fn stated_in(message: &str) -> Option<Duration> {
    const LEADS: [&str; 4] = ["again after ", "again in ", "retry after ", "retry in "];
    LEADS.iter().find_map(|lead| {
        let at = message.find(lead)? + lead.len();
        wait_words(&message[at..])
    })
}

/// `7m12s`, `2 hours`, `1.5s`, `500 ms`, `3` at the start of `text`.
fn wait_words(mut text: &str) -> Option<Duration> {
    let mut secs = 0.0;
    loop {
        let number_len = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let number: f64 = text[..number_len].parse().ok()?;
        let after = &text[number_len..];
        if after.starts_with(['-', ':', '/']) {
            return None;
        }
        let rest = after.trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "" => 1.0,
            "ms" | "millisecond" | "milliseconds" => 0.001,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            _ => return None,
        };
        secs += number * scale;
        text = &rest[unit_len..];
        // `7m12s` goes on with the next number; anything else ends it.
        if unit_len == 0 || !text.starts_with(|c: char| c.is_ascii_digit()) {
            return capped_secs(secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        let wait = |s: &str| retry_after(s.as_bytes(), now);
        assert_eq!(wait("2"), Some(Duration::from_secs(2)));
        assert_eq!(wait(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(
            wait("Wed, 21 Oct 2026 07:28:03 GMT"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(wait("Wed, 21 Oct 2026 07:27:00 GMT"), Some(Duration::ZERO));
        assert_eq!(wait("99999999999"), Some(MAX_STATED_WAIT));
        assert_eq!(wait("1e20"), Some(MAX_STATED_WAIT));
        assert_eq!(wait("99999999999999999999"), Some(MAX_STATED_WAIT));
        assert_eq!(wait("-1"), None);
        assert_eq!(wait("soon"), None);
        assert_eq!(wait("inf"), None);
        assert_eq!(retry_after(b"\xff", now), None);
    }

    #[test]
    fn only_a_number_or_a_date_is_forwarded_as_retry_after() {
        let forwarded = |s: &str| {
            forwarded_retry_after(HeaderValue::from_str(s).unwrap())
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(forwarded("7").as_deref(), Some("7"));
        assert_eq!(forwarded("120").as_deref(), Some("120"));
        let date = "Wed, 21 Oct 2026 07:28:03 GMT";
        assert_eq!(forwarded(date).as_deref(), Some(date));
        assert_eq!(forwarded("1.2").as_deref(), Some("2"));
        assert_eq!(forwarded("1e20").as_deref(), Some("86400"));
        assert_eq!(forwarded("86400").as_deref(), Some("86400"));
        assert_eq!(forwarded("86401").as_deref(), Some("86400"));
        assert_eq!(forwarded("99999999999999999999").as_deref(), Some("86400"));
        assert_eq!(forwarded("sk-provider-secret"), None);
        assert_eq!(forwarded("1 sk-provider-secret"), None);
        assert_eq!(forwarded("-1"), None);
        assert_eq!(forwarded("NaN"), None);
        assert_eq!(forwarded("inf"), None);
        assert_eq!(forwarded("Infinity"), None);
        assert_eq!(forwarded(""), None);
    }

    #[test]
    fn retry_after_ms_reads_milliseconds() {
        assert_eq!(retry_after_ms(b"1500"), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after_ms(b"2.5"), Some(Duration::from_micros(2500)));
        assert_eq!(retry_after_ms(b"NaN"), None);
        assert_eq!(retry_after_ms(b"inf"), None);
        assert_eq!(retry_after_ms(b"1e30"), Some(MAX_STATED_WAIT));
        assert_eq!(retry_after_ms(b"-3"), None);
        assert_eq!(
            forwarded_retry_after_ms(b"0").map(RetryAfterMs::get),
            Some(0)
        );
        assert_eq!(
            forwarded_retry_after_ms(b"0.2").map(RetryAfterMs::get),
            Some(1)
        );
        assert_eq!(
            forwarded_retry_after_ms(b"1500").map(RetryAfterMs::get),
            Some(1500)
        );
        assert_eq!(
            forwarded_retry_after_ms(b"1e30").map(RetryAfterMs::get),
            Some(86_400_000)
        );
        assert_eq!(forwarded_retry_after_ms(b"soon"), None);
    }

    #[test]
    fn a_stated_wait_is_read_from_the_message() {
        let stated = |s: &str| stated_in(s);
        assert_eq!(
            stated(
                "your account org-1 request reached max rpm: 3, please try again after 1 seconds"
            ),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            stated("retry after 1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            stated("try again in 500 ms"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            stated("try again in 2 minutes"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(stated("please try again after a while"), None);
        assert_eq!(stated("rate limit reached"), None);
        assert_eq!(stated("try again after 1.2.3 seconds"), None);
        assert_eq!(
            stated("try again after 99999999999 seconds"),
            Some(MAX_STATED_WAIT)
        );
    }
}
