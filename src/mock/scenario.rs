//! Scripted behaviour for one mock request, read from a `[mock key=value …]`
//! directive anywhere in the request body (usually the user's message), so any
//! client, SDKs included, can drive it through the gateway.

use std::time::Duration;

/// An error the mock can answer with, in the provider's own shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockError {
    InvalidRequest,
    ContentFilter,
    Auth,
    Permission,
    NotFound,
    RateLimit,
    Overloaded,
    Quota,
    Server,
    BadGateway,
    Unavailable,
    /// 501: the provider does not implement what was asked.
    NotImplemented,
    Overloaded529,
    GenerationTimeout,
    /// 200 with an HTML page instead of JSON.
    NonJson,
}

impl MockError {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "invalid_request" => MockError::InvalidRequest,
            "content_filter" => MockError::ContentFilter,
            "auth" => MockError::Auth,
            "permission" => MockError::Permission,
            "not_found" => MockError::NotFound,
            "rate_limit" => MockError::RateLimit,
            "overloaded" => MockError::Overloaded,
            "quota" => MockError::Quota,
            "server" => MockError::Server,
            "bad_gateway" => MockError::BadGateway,
            "unavailable" => MockError::Unavailable,
            "not_implemented" => MockError::NotImplemented,
            "overloaded_529" => MockError::Overloaded529,
            "generation_timeout" => MockError::GenerationTimeout,
            "non_json" => MockError::NonJson,
            _ => return None,
        })
    }
}

/// What to do for one request. Defaults give a quick, successful answer.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    pub error: Option<MockError>,
    /// `Retry-After` seconds sent with an error.
    pub retry_after: Option<u64>,
    /// Send that wait as an HTTP date instead of seconds.
    pub retry_after_as_date: bool,
    /// `retry_after=` given a word, not a number: sent as it is (a
    /// `Retry-After` nobody can read as a wait).
    pub retry_after_text: Option<String>,
    /// `retry-after-ms` sent with an error, as it is.
    pub retry_after_ms: Option<String>,
    /// Content chunks in a stream.
    pub chunks: Option<usize>,
    pub head_delay: Duration,
    /// Delay between the stream's head and its first event.
    pub first_event_delay: Duration,
    pub chunk_delay: Duration,
    /// Abort the connection after this many content chunks.
    pub cut_after: Option<usize>,
    /// End the stream without `[DONE]` (cleanly closed, but incomplete).
    pub no_done: bool,
    /// Send a stream of `[DONE]` alone: no chunk of an answer before it.
    pub done_only: bool,
    /// Keep the body open this long after `[DONE]` before ending it.
    pub end_delay: Duration,
    /// After this many content chunks, send an error event and end the
    /// stream (0: the error is the first event).
    pub error_event_after: Option<usize>,
    /// Send an error event in the same write as `[DONE]`, after it.
    pub error_after_done: bool,
    /// Those error events are `{"error":{}}`, an error with nothing in it.
    pub empty_error: bool,
    /// Send those error events named `error` (`event: error`), their data
    /// without an `error` member: `{"message": …, "code": 500}`.
    pub named_error: bool,
    /// Send those error events as AI/ML API's and Agentsflare's error
    /// document (`{"statusCode":504,"message":"Generation timeout"}`, no
    /// `error` member), and `[DONE]` after it: a reseller that reports a
    /// failure as a chunk and ends the stream as usual.
    pub document_error: bool,
    /// End a stream's lines with this instead of LF (`cr` or `crlf`).
    pub line_end: Option<&'static str>,
    /// Give every stream event an `id:` line (`id: 1`, `id: 2`, ...).
    pub event_ids: bool,
    /// Send every stream event's last LF at the start of the next write
    /// (`[DONE]` whole): with `line_end=crlf`, a provider whose writes stop
    /// between the CR and the LF of an event's blank line.
    pub split_crlf: bool,
    /// Spread every stream event's JSON over several `data:` lines, a line
    /// after each comma between members or elements (valid SSE: the lines
    /// are joined with LF).
    pub split_data: bool,
    /// Send a stream's usage top-level on its last chunk with choices (no
    /// `choices: []` chunk, no usage inside a choice), as some
    /// OpenAI-compatible servers do.
    pub usage_on_last_choice: bool,
    /// Leave `created` and `model` out of the chunk that carries a stream's
    /// usage.
    pub bare_usage_chunk: bool,
    /// Wait on this gate before every content chunk after the first.
    pub gate: Option<String>,
    /// Write the usage's token counts as floats (`11.0`), as a provider may.
    pub counts_as_floats: bool,
    /// Send every usage object empty (`"usage":{}`): a report of nothing.
    pub empty_usage: bool,
    /// Bytes of filler per content chunk (benchmarks of large chunks).
    pub chunk_bytes: Option<usize>,
    /// Fail (with `error` or `reset`) only the first N requests carrying
    /// the same directive, then answer normally: a provider that recovers.
    pub fail_times: Option<u64>,
    /// Close the connection without answering.
    pub reset: bool,
    /// Quote the key the request came with in the answer, as some
    /// providers do: in an error's message, in the request id, in an
    /// error event's message and after `retry_after`'s number. Filled in
    /// from `echo_key` by the server.
    pub echoed_key: Option<String>,
    /// `echo_key`: asks for [`Scenario::echoed_key`].
    pub echo_key: bool,
    /// `error_status_ok`: the error's body comes with 200, as a provider
    /// that reports failures only in the body would send it.
    pub error_status_ok: bool,
    /// The directive's text, which identifies a `fail_times` counter.
    pub directive: String,
}

impl Scenario {
    /// Reads the first `[mock …]` directive in `body`, if any. A word
    /// `name:key=value` applies only when the mock plays provider `name`.
    pub fn from_body(body: &[u8], flavour: &str) -> Scenario {
        let mut scenario = Scenario::default();
        let Some(start) = memchr::memmem::find(body, b"[mock") else {
            return scenario;
        };
        let rest = &body[start + 5..];
        let end = memchr::memchr(b']', rest).unwrap_or(rest.len());
        let text = String::from_utf8_lossy(&rest[..end]);
        scenario.directive = text.to_string();
        for word in text.split_whitespace() {
            let word = match word.split_once(':') {
                Some((only, word)) if !only.contains('=') => {
                    if only != flavour {
                        continue;
                    }
                    word
                }
                _ => word,
            };
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            let number = || value.parse::<u64>().ok();
            match key {
                "error" => scenario.error = MockError::parse(value),
                "retry_after" => {
                    scenario.retry_after = number();
                    scenario.retry_after_text =
                        scenario.retry_after.is_none().then(|| value.to_string());
                }
                "retry_after_as_date" => scenario.retry_after_as_date = true,
                "retry_after_ms" => scenario.retry_after_ms = Some(value.to_string()),
                "chunks" => scenario.chunks = number().map(|n| n as usize),
                "head_delay_ms" => {
                    scenario.head_delay = Duration::from_millis(number().unwrap_or(0))
                }
                "first_event_delay_ms" => {
                    scenario.first_event_delay = Duration::from_millis(number().unwrap_or(0))
                }
                "chunk_delay_ms" => {
                    scenario.chunk_delay = Duration::from_millis(number().unwrap_or(0))
                }
                "cut_after" => scenario.cut_after = number().map(|n| n as usize),
                "no_done" => scenario.no_done = true,
                "done_only" => scenario.done_only = true,
                "end_delay_ms" => scenario.end_delay = Duration::from_millis(number().unwrap_or(0)),
                "error_event_after" => scenario.error_event_after = number().map(|n| n as usize),
                "error_after_done" => scenario.error_after_done = true,
                "empty_error" => scenario.empty_error = true,
                "named_error" => scenario.named_error = true,
                "document_error" => scenario.document_error = true,
                "line_end" => {
                    scenario.line_end = match value {
                        "cr" => Some("\r"),
                        "crlf" => Some("\r\n"),
                        _ => None,
                    }
                }
                "event_ids" => scenario.event_ids = true,
                "split_crlf" => scenario.split_crlf = true,
                "split_data" => scenario.split_data = true,
                "usage_on_last_choice" => scenario.usage_on_last_choice = true,
                "bare_usage_chunk" => scenario.bare_usage_chunk = true,
                "counts_as_floats" => scenario.counts_as_floats = true,
                "empty_usage" => scenario.empty_usage = true,
                "gate" => scenario.gate = Some(value.to_string()),
                "chunk_bytes" => scenario.chunk_bytes = number().map(|n| n as usize),
                "fail_times" => scenario.fail_times = number(),
                "reset" => scenario.reset = true,
                "echo_key" => scenario.echo_key = true,
                "error_status_ok" => scenario.error_status_ok = true,
                _ => {}
            }
        }
        scenario
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_directives_from_anywhere_in_the_body() {
        let s = Scenario::from_body(
            br#"{"messages":[{"role":"user","content":"hi [mock error=rate_limit retry_after=3 chunks=5 gate=g1 no_done line_end=cr]"}]}"#,
            "moonshot",
        );
        assert_eq!(s.error, Some(MockError::RateLimit));
        assert_eq!(s.retry_after, Some(3));
        assert_eq!(s.chunks, Some(5));
        assert_eq!(s.gate.as_deref(), Some("g1"));
        assert!(s.no_done);
        assert_eq!(s.line_end, Some("\r"));
    }

    #[test]
    fn no_directive_means_defaults() {
        let s = Scenario::from_body(b"{}", "moonshot");
        assert!(s.error.is_none() && s.chunks.is_none() && !s.no_done);
    }

    #[test]
    fn scoped_words_apply_to_one_flavour() {
        let body = b"[mock moonshot:error=server agentsflare:reset chunks=2]";
        let moonshot = Scenario::from_body(body, "moonshot");
        assert_eq!(moonshot.error, Some(MockError::Server));
        assert!(!moonshot.reset);
        let agentsflare = Scenario::from_body(body, "agentsflare");
        assert!(agentsflare.error.is_none() && agentsflare.reset);
        assert_eq!(agentsflare.chunks, Some(2));
    }
}
