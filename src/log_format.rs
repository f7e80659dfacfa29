//! JSON lines for the logs, written straight into the line buffer: one object
//! per event with `timestamp`, `level`, `target` and the event's fields
//! (`message` included) at the top level, the shape of `tracing-subscriber`'s
//! flattened JSON. Writing fields directly, instead of through a serde map,
//! keeps the access log cheap enough to stay on for every request.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter for JSON output.
pub struct JsonLines;

thread_local! {
    /// The line being built: small writes into a `String` inline, where the
    /// subscriber's writer is a `dyn` call per write.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // An event logged while formatting one (a Debug impl that logs) is
        // formatted in a buffer of its own.
        with_line_buffer(|line| {
            line.clear();
            write_line(line, &mut writer, event)
        })
    }
}

fn write_line(line: &mut String, writer: &mut Writer<'_>, event: &Event<'_>) -> fmt::Result {
    let meta = event.metadata();
    push_head(line, meta.level(), meta.target());
    event.record(&mut JsonFields { line: &mut *line });
    line.push_str("}\n");
    writer.write_str(line)
}

/// `{"timestamp":…,"level":…,"target":…`, the start of every line.
fn push_head(line: &mut String, level: &tracing::Level, target: &str) {
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line, std::time::SystemTime::now());
    line.push_str("\",\"level\":\"");
    line.push_str(level.as_str());
    line.push_str("\",\"target\":");
    push_json_str(line, target);
}

/// A field's `,"name":` as [`JsonLine`] writes it, joined at compile time
/// by [`json_key!`]: one copy per field name instead of three (a line has
/// about twenty fields, and each copy is a call).
#[derive(Clone, Copy)]
pub struct JsonKey(&'static str);

/// A string field's `,"name":"` (its value's opening quote included), made
/// by [`json_str_key!`].
#[derive(Clone, Copy)]
pub struct JsonStrKey(&'static str);

/// Checks that `key` is `,"name":` and then `rest`, with a name that needs
/// no escaping (when compiling, for the keys the macros build).
const fn check_key(key: &'static str, rest: &[u8]) -> &'static str {
    let bytes = key.as_bytes();
    let n = bytes.len() - rest.len();
    assert!(n > 4 && bytes[0] == b',' && bytes[1] == b'"');
    assert!(bytes[n - 2] == b'"' && bytes[n - 1] == b':');
    let mut i = 2;
    while i < n - 2 {
        assert!(!NEEDS_ESCAPE[bytes[i] as usize], "a field name to escape");
        i += 1;
    }
    let mut j = 0;
    while j < rest.len() {
        assert!(bytes[n + j] == rest[j]);
        j += 1;
    }
    key
}

impl JsonKey {
    /// `key` must be `,"name":` with a name that needs no escaping;
    /// [`json_key!`] builds it so, and checks it when compiling.
    pub const fn new(key: &'static str) -> Self {
        JsonKey(check_key(key, b""))
    }
}

impl JsonStrKey {
    /// `key` must be `,"name":"`; [`json_str_key!`] builds it so.
    pub const fn new(key: &'static str) -> Self {
        JsonStrKey(check_key(key, b"\""))
    }
}

/// `json_key!("name")`: the [`JsonKey`] for a field called `name` (a plain
/// identifier: nothing in it is escaped).
macro_rules! json_key {
    ($name:literal) => {{
        const KEY: $crate::log_format::JsonKey =
            $crate::log_format::JsonKey::new(concat!(",\"", $name, "\":"));
        KEY
    }};
}
pub(crate) use json_key;

/// `json_str_key!("name")`: the [`JsonStrKey`] for a string field.
macro_rules! json_str_key {
    ($name:literal) => {{
        const KEY: $crate::log_format::JsonStrKey =
            $crate::log_format::JsonStrKey::new(concat!(",\"", $name, "\":\""));
        KEY
    }};
}
pub(crate) use json_str_key;

/// A line written field by field, without going through an event: the same
/// shape as [`JsonLines`] gives an event with the same fields. The access
/// log, written for every request, is written this way. The writers are
/// inlined so that each constant key is copied by a few moves, not a call.
pub struct JsonLine<'a> {
    line: &'a mut String,
}

impl<'a> JsonLine<'a> {
    /// Starts a line in `line` (cleared first) with the head and `message`.
    pub fn start(
        line: &'a mut String,
        level: &tracing::Level,
        target: &str,
        message: &str,
    ) -> Self {
        line.clear();
        push_head(line, level, target);
        let mut json = JsonLine { line };
        json.str(json_str_key!("message"), message);
        json
    }

    #[inline(always)]
    pub fn str(&mut self, key: JsonStrKey, value: &str) -> &mut Self {
        self.line.push_str(key.0);
        push_escaped(self.line, value);
        self.line.push('"');
        self
    }

    /// A string that never needs escaping (a method, a fixed word): the
    /// check is left out.
    #[inline(always)]
    pub fn plain_str(&mut self, key: JsonStrKey, value: &str) -> &mut Self {
        debug_assert!(!needs_escape(value.as_bytes()), "{value}");
        self.line.push_str(key.0);
        self.line.push_str(value);
        self.line.push('"');
        self
    }

    /// An address as `Display` writes it; an IPv4 one (nearly all) by
    /// hand, as the formatting machinery costs several times as much. Out
    /// of line: inlined into the access line's writer, it tipped the
    /// compiler's inlining elsewhere on the request path (~300 more
    /// instructions per request, measured).
    #[inline(never)]
    pub fn ip(&mut self, key: JsonStrKey, value: std::net::IpAddr) -> &mut Self {
        self.line.push_str(key.0);
        match value {
            std::net::IpAddr::V4(v4) => {
                // Digit by digit: a copy per octet and dot was a `memcpy`
                // call each, and a stack buffer copied whole needed its
                // text checked as UTF-8 (~80 instructions).
                self.line.reserve(15);
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.line.push('.');
                    }
                    if octet >= 100 {
                        self.line.push(char::from(b'0' + octet / 100));
                    }
                    if octet >= 10 {
                        self.line.push(char::from(b'0' + octet / 10 % 10));
                    }
                    self.line.push(char::from(b'0' + octet % 10));
                }
            }
            std::net::IpAddr::V6(v6) => {
                use std::fmt::Write as _;
                let _ = write!(self.line, "{v6}");
            }
        }
        self.line.push('"');
        self
    }

    #[inline(always)]
    pub fn u64(&mut self, key: JsonKey, value: u64) -> &mut Self {
        self.line.push_str(key.0);
        self.line.push_str(itoa::Buffer::new().format(value));
        self
    }

    /// `micros` as milliseconds, as an event's `f64` field of `micros / 1000`
    /// is written.
    #[inline(always)]
    pub fn millis(&mut self, key: JsonKey, micros: u64) -> &mut Self {
        self.line.push_str(key.0);
        push_millis(self.line, micros);
        self
    }

    /// Ends the line (`}` and a newline) and returns it.
    pub fn finish(self) -> &'a str {
        self.line.push_str("}\n");
        self.line
    }
}

/// Runs `f` with this thread's line buffer (a fresh one if it is in use).
pub fn with_line_buffer<R>(f: impl FnOnce(&mut String) -> R) -> R {
    LINE.with(|line| match line.try_borrow_mut() {
        Ok(mut line) => f(&mut line),
        Err(_) => f(&mut String::new()),
    })
}

/// Appends `,"name":value` for each field.
struct JsonFields<'a> {
    line: &'a mut String,
}

impl JsonFields<'_> {
    fn name(&mut self, field: &Field) {
        self.line.push(',');
        let name = field.name();
        // A field named like one of the line's own keys would repeat that
        // key, and JSON readers keep the last: the event's target or level
        // would be lost.
        if matches!(name, "timestamp" | "level" | "target") {
            push_json_str(self.line, &format!("field_{name}"));
        } else {
            push_json_str(self.line, name);
        }
        self.line.push(':');
    }

    fn quoted_display(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        self.name(field);
        self.line.push('"');
        let _ = Escaping(self.line).write_fmt(value);
        self.line.push('"');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        push_json_str(self.line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        push_f64(self.line, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.quoted_display(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.quoted_display(field, format_args!("{value:?}"));
    }
}

/// RFC 3339 in UTC with microseconds (`2026-11-22T01:35:56.123456Z`), the
/// format of `tracing-subscriber`'s `SystemTime`, without its formatting
/// machinery. The text up to the second is kept per thread and reused
/// while the second lasts (every line of a busy second shares it).
fn push_timestamp(line: &mut String, now: std::time::SystemTime) {
    let since_epoch = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Past year 9999 the four-digit year would wrap to 0000.
    let secs = since_epoch
        .as_secs()
        .min(crate::coarse_clock::LATEST_UNIX_SECOND);
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != Some(secs) {
            *second = Some(secs);
            text.clear();
            push_second(text, secs);
        }
        line.push_str(text);
    });
    let mut micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    for digit in digits {
        line.push(char::from(digit));
    }
    line.push('Z');
}

thread_local! {
    /// The second [`push_timestamp`] wrote last, and its text.
    static SECOND: std::cell::RefCell<(Option<u64>, String)> =
        const { std::cell::RefCell::new((None, String::new())) };
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch.
fn push_second(text: &mut String, secs: u64) {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let in_day = secs % 86_400;
    let fields = [
        (year.max(0) as u64, 4, '-'),
        (month, 2, '-'),
        (day, 2, 'T'),
        (in_day / 3600, 2, ':'),
        (in_day / 60 % 60, 2, ':'),
        (in_day % 60, 2, '.'),
    ];
    for (value, width, after) in fields {
        let mut digits = [b'0'; 4];
        let mut rest = value;
        for digit in digits[..width].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        for digit in &digits[..width] {
            text.push(char::from(*digit));
        }
        text.push(after);
    }
}

/// Year, month and day of the proleptic Gregorian calendar for a count of
/// days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Durations in the logs are milliseconds with microsecond precision
/// (`12.345`): those are written with integer arithmetic; any other value
/// in its shortest exact form.
fn push_f64(line: &mut String, value: f64) {
    if !value.is_finite() {
        line.push_str("null");
        return;
    }
    let thousandths = (value * 1000.0).round();
    if (0.0..1e15).contains(&thousandths) && thousandths / 1000.0 == value {
        push_millis(line, thousandths as u64);
        return;
    }
    line.push_str(ryu::Buffer::new().format_finite(value));
}

/// `thousandths / 1000` with at most three decimals and at least one
/// (`12.345`, `12.3`, `30.0`): integer arithmetic only.
fn push_millis(line: &mut String, thousandths: u64) {
    line.push_str(itoa::Buffer::new().format(thousandths / 1000));
    let fraction = thousandths % 1000;
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
    let keep = if fraction == 0 {
        1
    } else {
        3 - digits.iter().rev().take_while(|d| **d == 0).count()
    };
    line.push('.');
    for digit in &digits[..keep] {
        line.push(char::from(b'0' + *digit as u8));
    }
}

fn push_json_str(line: &mut String, value: &str) {
    line.push('"');
    push_escaped(line, value);
    line.push('"');
}

/// Bytes that need escaping inside a JSON string.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Where the first byte that needs escaping is. Eight bytes are checked
/// at a time (nearly every value in a log line needs none), the rest one
/// by one.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    let mut clean = 0;
    for word in bytes.chunks_exact(8) {
        if word_needs_escape(u64::from_le_bytes(word.try_into().expect("8 bytes"))) {
            break;
        }
        clean += 8;
    }
    bytes[clean..]
        .iter()
        .position(|&b| NEEDS_ESCAPE[b as usize])
        .map(|at| clean + at)
}

/// Whether any byte of `bytes` needs escaping: the usual answer, no, in
/// whole words only (the last word overlaps the one before it).
fn needs_escape(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return bytes.iter().any(|&b| NEEDS_ESCAPE[b as usize]);
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    (0..bytes.len() / 8).any(|i| word_needs_escape(word(8 * i)))
        || word_needs_escape(word(bytes.len() - 8))
}

/// Whether any byte of `word` is a control byte, `"` or `\` (the bit
/// tricks "has a zero byte" and "has a byte less than n", which are exact
/// as a yes or no).
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH_BITS: u64 = ONES * 0x80;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) & HIGH_BITS != 0
}

/// `value` escaped for the inside of a JSON string: the usual value, with
/// nothing to escape, checked and copied inline.
#[inline(always)]
fn push_escaped(line: &mut String, value: &str) {
    if needs_escape(value.as_bytes()) {
        let _ = Escaping(line).write_escaped(value);
    } else {
        line.push_str(value);
    }
}

/// Escapes what it is given for the inside of a JSON string.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

impl Escaping<'_> {
    /// The rare value with something to escape.
    #[inline(never)]
    fn write_escaped(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        while let Some(offset) = first_to_escape(&bytes[start..]) {
            let at = start + offset;
            self.0.push_str(&s[start..at]);
            match bytes[at] {
                b'"' => self.0.push_str("\\\""),
                b'\\' => self.0.push_str("\\\\"),
                b'\n' => self.0.push_str("\\n"),
                b'\r' => self.0.push_str("\\r"),
                b'\t' => self.0.push_str("\\t"),
                byte => write!(self.0, "\\u{byte:04x}")?,
            }
            start = at + 1;
        }
        self.0.push_str(&s[start..]);
        Ok(())
    }
}

#[cfg(test)]
#[path = "log_format_tests.rs"]
pub(crate) mod tests;
