//! The access log's line: its fields in the order they are written, as a
//! JSON line written directly or as a `tracing` event (same keys, same
//! order; a test holds the two together).

use crate::log_format::{JsonLine, json_key, json_str_key};
use std::net::IpAddr;

/// The access log's fields, in the order they are written.
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    /// The connection's peer address.
    pub client_addr: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub key: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub upstream_model: &'a str,
    pub attempts: u32,
    /// Durations in microseconds, logged as milliseconds (`12.345`).
    pub time_to_head_us: u64,
    pub time_to_first_token_us: u64,
    pub error_type: &'a str,
    /// The answer's `code` (`upstream_timeout`, `gateway_shutdown`, ...).
    pub error_code: &'a str,
    pub error: &'a str,
    pub stream_end: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub duration_us: u64,
}

impl AccessLine<'_> {
    /// Straight into a JSON line: for every request, this skips the event
    /// machinery (field visitors, a dynamic call per field).
    pub fn write_json(&self, json: &mut JsonLine<'_>) {
        json.str(json_str_key!("request_id"), self.request_id)
            .ip(json_str_key!("client_addr"), self.client_addr)
            .plain_str(json_str_key!("method"), self.method)
            .str(json_str_key!("path"), self.path)
            .u64(json_key!("status"), self.status.into())
            .str(json_str_key!("key"), self.key)
            .str(json_str_key!("model"), self.model)
            .str(json_str_key!("provider"), self.provider)
            .str(json_str_key!("upstream_model"), self.upstream_model)
            .u64(json_key!("attempts"), self.attempts.into())
            .millis(json_key!("time_to_head_ms"), self.time_to_head_us)
            .millis(
                json_key!("time_to_first_token_ms"),
                self.time_to_first_token_us,
            )
            .plain_str(json_str_key!("error_type"), self.error_type)
            .str(json_str_key!("error_code"), self.error_code)
            .str(json_str_key!("error"), self.error)
            .plain_str(json_str_key!("stream_end"), self.stream_end)
            .u64(json_key!("prompt_tokens"), self.prompt_tokens)
            .u64(json_key!("completion_tokens"), self.completion_tokens)
            .millis(json_key!("duration_ms"), self.duration_us);
    }

    /// As an event, for other formats (the terminal's) and subscribers.
    pub fn event(&self, is_api: bool) {
        macro_rules! access_event {
            ($level:expr) => {
                tracing::event!(
                    target: "access",
                    $level,
                    request_id = self.request_id,
                    client_addr = %self.client_addr,
                    method = self.method,
                    path = self.path,
                    status = self.status,
                    key = self.key,
                    model = self.model,
                    provider = self.provider,
                    upstream_model = self.upstream_model,
                    attempts = self.attempts,
                    time_to_head_ms = millis(self.time_to_head_us),
                    time_to_first_token_ms = millis(self.time_to_first_token_us),
                    error_type = self.error_type,
                    error_code = self.error_code,
                    error = self.error,
                    stream_end = self.stream_end,
                    prompt_tokens = self.prompt_tokens,
                    completion_tokens = self.completion_tokens,
                    duration_ms = millis(self.duration_us),
                    "request"
                )
            };
        }
        if is_api {
            access_event!(tracing::Level::INFO);
        } else {
            access_event!(tracing::Level::DEBUG);
        }
    }
}

/// Microseconds as milliseconds, for the event's fields.
fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_format::tests::Capture;

    fn parsed_without_timestamp(line: &str) -> serde_json::Value {
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
        let stamp = value.as_object_mut().unwrap().remove("timestamp");
        assert!(stamp.is_some_and(|s| s.is_string()));
        value
    }

    #[test]
    fn the_direct_line_is_the_events_line() {
        let line = AccessLine {
            request_id: "req_1",
            client_addr: "2001:db8::7".parse().unwrap(),
            method: "POST",
            path: "/v1/chat/completions",
            status: 429,
            key: "team-a",
            model: "kimi \"quoted\"",
            provider: "moonshot",
            upstream_model: "kimi-k2",
            attempts: 2,
            time_to_head_us: 12_345,
            time_to_first_token_us: 0,
            error_type: "rate_limit_reached_error",
            error_code: "rate_limit_\"exceeded\"",
            error: "line one\nline two \\ tab\t",
            stream_end: "client_closed",
            prompt_tokens: 7,
            completion_tokens: 0,
            duration_us: 1_500,
        };
        let mut buffer = String::new();
        let mut json = JsonLine::start(&mut buffer, &tracing::Level::INFO, "access", "request");
        line.write_json(&mut json);
        let direct = parsed_without_timestamp(json.finish());

        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .event_format(crate::log_format::JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || line.event(true));
        let captured = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let via_event = parsed_without_timestamp(&captured);

        assert_eq!(direct, via_event);
        assert_eq!(direct["level"], "INFO");
        assert_eq!(direct["target"], "access");
        assert_eq!(direct["message"], "request");
        assert_eq!(direct["error"], "line one\nline two \\ tab\t");
        assert_eq!(direct["time_to_head_ms"], 12.345);
        assert_eq!(direct["client_addr"], "2001:db8::7");
        assert_eq!(direct["error_code"], "rate_limit_\"exceeded\"");
        // level, target, message and the 19 fields, in the same order.
        assert_eq!(direct.as_object().unwrap().len(), 3 + 19);
        let order = |text: &str| {
            let mut names: Vec<(usize, &str)> = [
                "request_id",
                "client_addr",
                "status",
                "attempts",
                "duration_ms",
            ]
            .iter()
            .map(|k| (text.find(&format!("\"{k}\":")).unwrap(), *k))
            .collect();
            names.sort();
            names.into_iter().map(|(_, k)| k).collect::<Vec<_>>()
        };
        assert_eq!(order(&buffer), order(&captured));
    }
}
