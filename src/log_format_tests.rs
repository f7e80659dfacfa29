//! The JSON lines against serde_json's reading of them, and the hand-made
//! timestamps and numbers against the usual formatting.

use super::*;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;

/// A log output kept in memory (also used by the access line's tests).
#[derive(Clone, Default)]
pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// A subscriber writing [`JsonLines`] into `capture`.
pub(crate) fn json_lines_into(capture: &Capture) -> impl tracing::Subscriber + use<> {
    tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .event_format(JsonLines)
        .finish()
}

#[test]
fn a_field_named_like_a_key_of_the_line_does_not_repeat_that_key() {
    let capture = Capture::default();
    let subscriber = json_lines_into(&capture);
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(target: "gateway", target = "moonshot/kimi", level = 3u64, "event");
    });
    let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert_eq!(out.matches("\"target\":").count(), 1, "{out}");
    assert_eq!(out.matches("\"level\":").count(), 1, "{out}");
    let line: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(line["target"], "gateway");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["field_target"], "moonshot/kimi");
    assert_eq!(line["field_level"], 3);
}

#[test]
fn events_are_one_json_object_per_line() {
    let capture = Capture::default();
    let subscriber = json_lines_into(&capture);
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(
            target: "access",
            text = "quote \" backslash \\ newline \n bell \u{7} é",
            count = 42u64,
            delta = -3i64,
            ms = 1.5f64,
            nan = f64::NAN,
            flag = true,
            shown = %"display \"x\"",
            "request"
        );
    });
    let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        out.ends_with('\n') && out.matches('\n').count() == 1,
        "{out}"
    );
    let line: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "access");
    assert_eq!(line["message"], "request");
    assert_eq!(
        line["text"],
        "quote \" backslash \\ newline \n bell \u{7} é"
    );
    assert_eq!(line["count"], 42);
    assert_eq!(line["delta"], -3);
    assert_eq!(line["ms"], 1.5);
    assert!(line["nan"].is_null());
    assert_eq!(line["flag"], true);
    assert_eq!(line["shown"], "display \"x\"");
    let stamp = line["timestamp"].as_str().unwrap();
    assert!(stamp.len() == 27 && stamp.ends_with('Z'), "{stamp}");
}

#[test]
fn escaping_matches_serde_json_at_every_offset() {
    for special in ["\"", "\\", "\n", "\u{1}", "\u{1f}", " ", "é", "\u{7f}"] {
        for at in 0..20 {
            let text = format!("{}{special}{}", "a".repeat(at), "b".repeat(20 - at));
            let mut line = String::new();
            push_json_str(&mut line, &text);
            let parsed: String = serde_json::from_str(&line).unwrap();
            assert_eq!(parsed, text);
            assert_eq!(line, serde_json::to_string(&text).unwrap());
        }
    }
}

#[test]
fn the_eight_byte_check_agrees_with_the_table() {
    let by_table = |word: [u8; 8]| word.iter().any(|&b| NEEDS_ESCAPE[b as usize]);
    let mut words = Vec::new();
    for byte in 0..=255u8 {
        for filler in [b'a', b' ', b'!', 0x1f, 0x7f, 0x80, 0xa2, 0xdc, 0xff] {
            for at in 0..8 {
                let mut word = [filler; 8];
                word[at] = byte;
                words.push(word);
            }
        }
    }
    let mut rng = fastrand::Rng::with_seed(7);
    words.extend((0..200_000).map(|_| rng.u64(..).to_le_bytes()));
    for word in words {
        assert_eq!(
            word_needs_escape(u64::from_le_bytes(word)),
            by_table(word),
            "{word:02x?}"
        );
    }
}

#[test]
fn the_whole_string_check_agrees_with_the_table() {
    // Every length around the word size, clean and with one byte to escape
    // (or a harmless one) at every position.
    for len in 0..=40 {
        let clean = vec![b'a'; len];
        assert!(!needs_escape(&clean), "{len}");
        for at in 0..len {
            for byte in [b'"', b'\\', b'\n', 0x00, 0x1f, 0x7f, b' ', 0xe2] {
                let mut bytes = clean.clone();
                bytes[at] = byte;
                assert_eq!(
                    needs_escape(&bytes),
                    NEEDS_ESCAPE[byte as usize],
                    "{len} {at} {byte:#x}"
                );
            }
        }
    }
}

#[test]
fn timestamps_are_rfc3339_utc_with_microseconds() {
    let at = |secs: u64, micros: u64| {
        let mut line = String::new();
        let time =
            std::time::UNIX_EPOCH + std::time::Duration::from_micros(secs * 1_000_000 + micros);
        push_timestamp(&mut line, time);
        line
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
    assert_eq!(at(1_795_311_356, 123_456), "2026-11-22T01:35:56.123456Z");
    assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    // The text of the second is reused within it and redone after it.
    assert_eq!(at(1_795_311_356, 1), "2026-11-22T01:35:56.000001Z");
    assert_eq!(at(1_795_311_356, 999_999), "2026-11-22T01:35:56.999999Z");
    assert_eq!(at(1_795_311_357, 0), "2026-11-22T01:35:57.000000Z");
    assert_eq!(at(1_795_311_356, 5), "2026-11-22T01:35:56.000005Z");
    // A clock past year 9999 is shown at its last second, not as 0000.
    assert_eq!(at(253_402_300_799, 1), "9999-12-31T23:59:59.000001Z");
    assert_eq!(at(253_402_300_800, 2), "9999-12-31T23:59:59.000002Z");
}

#[test]
fn floats_are_written_in_their_shortest_form() {
    for (value, text) in [
        (0.0, "0.0"),
        (12.345, "12.345"),
        (12.3, "12.3"),
        (30.0, "30.0"),
        (0.001, "0.001"),
        (62.148053, "62.148053"),
        (1.5e300, "1.5e300"),
        (-2.5, "-2.5"),
    ] {
        let mut line = String::new();
        push_f64(&mut line, value);
        assert_eq!(line, text, "{value}");
        assert_eq!(line.parse::<f64>().unwrap(), value);
    }
}

#[test]
fn durations_in_microseconds_are_written_as_their_milliseconds_float() {
    let mut rng = fastrand::Rng::with_seed(7);
    let values = [
        0,
        1,
        10,
        100,
        999,
        1_000,
        1_001,
        1_500,
        12_345,
        30_000,
        123_456_789,
    ]
    .into_iter()
    .chain((0..100_000).map(|_| rng.u64(..10_000_000_000)));
    for micros in values {
        let (mut direct, mut float) = (String::new(), String::new());
        push_millis(&mut direct, micros);
        push_f64(&mut float, micros as f64 / 1000.0);
        assert_eq!(direct, float, "{micros}");
        assert_eq!(direct.parse::<f64>().unwrap(), micros as f64 / 1000.0);
    }
}

#[test]
fn string_keys_carry_their_opening_quote() {
    let mut buffer = String::new();
    let mut json = JsonLine::start(&mut buffer, &tracing::Level::INFO, "t", "m");
    json.str(json_str_key!("escaped"), "a \"b\"\n")
        .plain_str(json_str_key!("plain"), "POST")
        .str(json_str_key!("empty"), "")
        .u64(json_key!("n"), 42);
    let line = json.finish();
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(value["escaped"], "a \"b\"\n");
    assert_eq!(value["plain"], "POST");
    assert_eq!(value["empty"], "");
    assert_eq!(value["n"], 42);
    assert!(
        line.contains(r#","plain":"POST","empty":"","n":42}"#),
        "{line}"
    );
}

/// Addresses are written as `Display` writes them: every IPv4 octet value
/// in every position, and IPv6's forms.
#[test]
fn addresses_are_written_as_display_writes_them() {
    let written = |addr: std::net::IpAddr| {
        let mut line = String::new();
        let mut json = JsonLine::start(&mut line, &tracing::Level::INFO, "access", "request");
        json.ip(json_str_key!("client_addr"), addr);
        let value: serde_json::Value = serde_json::from_str(json.finish()).unwrap();
        value["client_addr"].as_str().unwrap().to_string()
    };
    for octet in 0..=255u8 {
        for position in 0..4 {
            let mut octets = [1, 22, 203, 4];
            octets[position] = octet;
            let addr = std::net::IpAddr::from(octets);
            assert_eq!(written(addr), addr.to_string());
        }
    }
    for text in [
        "::",
        "::1",
        "2001:db8::7",
        "::ffff:10.0.0.1",
        "fe80::1:2:3:4",
    ] {
        let addr: std::net::IpAddr = text.parse().unwrap();
        assert_eq!(written(addr), text);
    }
}
