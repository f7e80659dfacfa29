//! Successful answers in each provider's style: plain completions, tool calls,
//! `n` choices, and streams (Moonshot's usage inside `choices[0]` of the last
//! chunk; the others' `choices: []` usage chunk when asked; Agentsflare's
//! Azure-style filter results).

use super::Flavour;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The request members the mock looks at, borrowed from the body. The
/// conversation is kept as one raw slice and only its last message becomes
/// a tree, so a long prompt (thousands of messages) costs the mock one
/// validating pass instead of a tree and a copy of every message: in the
/// load benchmark the mock must stay faster than what it is measured behind.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MockRequest<'a> {
    model: Option<Value>,
    n: Option<Value>,
    stream: Option<Value>,
    stream_options: Option<Value>,
    tools: Option<Value>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
}

impl MockRequest<'_> {
    /// `"stream": true` (anything else is a plain completion).
    pub fn stream(&self) -> bool {
        self.stream
            .as_ref()
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The last entry of `messages`, if it is an array with one.
    fn last_message(&self) -> Value {
        let Some(messages) = self.messages else {
            return Value::Null;
        };
        let Ok(entries) = serde_json::from_str::<Vec<&RawValue>>(messages.get()) else {
            return Value::Null;
        };
        entries
            .last()
            .and_then(|last| serde_json::from_str(last.get()).ok())
            .unwrap_or(Value::Null)
    }
}

/// What the mock needs from a request to shape its answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ask {
    pub model: String,
    pub n: usize,
    pub include_usage: bool,
    /// Set when the client offers tools and is not answering a tool call.
    pub tool_call: Option<ToolCall>,
    /// Content of a `role: tool` last message being answered.
    pub tool_result: Option<String>,
    pub prompt_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

impl Ask {
    pub fn from_request(body: &MockRequest, body_len: usize) -> Ask {
        let last = body.last_message();
        let tool_result = (last["role"] == "tool").then(|| match &last["content"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let tools = body.tools.as_ref().and_then(Value::as_array);
        let tool_call = match (&tool_result, tools) {
            (None, Some(tools)) if !tools.is_empty() => {
                let name = tools[0]["function"]["name"]
                    .as_str()
                    .unwrap_or("tool")
                    .to_string();
                let arguments = if name == "$web_search" {
                    json!({"search_result": {"search_id": "mock-search-1"}, "usage": {"total_tokens": 42}})
                } else {
                    json!({"query": "mock"})
                };
                Some(ToolCall {
                    name,
                    arguments: arguments.to_string(),
                })
            }
            _ => None,
        };
        Ask {
            model: body
                .model
                .as_ref()
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            n: body
                .n
                .as_ref()
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 8) as usize,
            include_usage: body
                .stream_options
                .as_ref()
                .and_then(|options| options["include_usage"].as_bool())
                .unwrap_or(false),
            tool_call,
            tool_result,
            prompt_tokens: (body_len as u64 / 4).max(1),
        }
    }

    fn text(&self, flavour: Flavour) -> String {
        match &self.tool_result {
            Some(result) => format!("The tool said: {result}"),
            None => format!("Hello from {} ({}).", flavour.name(), self.model),
        }
    }
}

fn usage(flavour: Flavour, prompt: u64, completion: u64) -> Value {
    match flavour {
        // Moonshot reports cached prompt tokens at the top of `usage`.
        Flavour::Moonshot => json!({
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "cached_tokens": 2
        }),
        _ => json!({
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0}
        }),
    }
}

/// A whole `chat.completion` object.
/// A plain completion; `filler` pads every choice's content (answers of a
/// chosen size).
pub fn completion(flavour: Flavour, ask: &Ask, filler: usize) -> Value {
    let mut text = ask.text(flavour);
    text.push_str(&"x".repeat(filler));
    let choices: Vec<Value> = (0..ask.n)
        .map(|i| {
            let (message, finish) = match &ask.tool_call {
                Some(call) => (
                    json!({"role": "assistant", "content": "", "tool_calls": [{
                        "id": format!("call_{i}"), "type": "function", "index": 0,
                        "function": {"name": call.name, "arguments": call.arguments}
                    }]}),
                    "tool_calls",
                ),
                None => (json!({"role": "assistant", "content": text}), "stop"),
            };
            let mut choice = json!({"index": i, "message": message, "finish_reason": finish});
            if flavour == Flavour::Agentsflare {
                choice["content_filter_results"] =
                    json!({"hate": {"filtered": false, "severity": "safe"}});
            }
            choice
        })
        .collect();
    let mut body = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_767_765_293,
        "model": ask.model,
        "choices": choices,
        "usage": usage(flavour, ask.prompt_tokens, 7 * ask.n as u64),
    });
    if flavour == Flavour::Agentsflare {
        body["system_fingerprint"] = json!("fp_mock");
        body["prompt_filter_results"] = json!([{"prompt_index": 0, "content_filter_results": {}}]);
    }
    body
}

/// The events of a stream, each a complete `data: …\n\n` frame, without
/// `[DONE]`. `filler` pads every content delta (large-chunk benchmarks).
pub fn stream_events(flavour: Flavour, ask: &Ask, chunks: usize, filler: usize) -> Vec<String> {
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk",
            "created": 1_767_765_293, "model": ask.model, "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        format!("data: {c}\n\n")
    };
    let mut events = Vec::with_capacity(chunks + 4);
    if flavour == Flavour::Agentsflare {
        // Azure-style first chunk: filter results and no choices.
        events.push(format!(
            "data: {}\n\n",
            json!({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                   "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]})
        ));
    }
    let pad = "x".repeat(filler);
    for i in 0..ask.n {
        events.push(chunk(
            json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            None,
        ));
    }
    let finish = if let Some(call) = &ask.tool_call {
        for i in 0..ask.n {
            events.push(chunk(
                json!([{"index": i, "delta": {"tool_calls": [{"index": 0, "id": format!("call_{i}"), "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments}}]}, "finish_reason": null}]),
                None,
            ));
        }
        "tool_calls"
    } else {
        let words: Vec<String> = ask
            .text(flavour)
            .split(' ')
            .map(|w| format!("{w} "))
            .collect();
        for c in 0..chunks {
            let word = &words[c % words.len()];
            for i in 0..ask.n {
                events.push(chunk(
                    json!([{"index": i, "delta": {"content": format!("{word}{pad}")}, "finish_reason": null}]),
                    None,
                ));
            }
        }
        "stop"
    };
    let total_usage = usage(flavour, ask.prompt_tokens, chunks as u64 * ask.n as u64);
    for i in 0..ask.n {
        let mut last = json!({"index": i, "delta": {}, "finish_reason": finish});
        if flavour == Flavour::Moonshot && i + 1 == ask.n {
            last["usage"] = total_usage.clone();
        }
        events.push(chunk(json!([last]), None));
    }
    if ask.include_usage && flavour != Flavour::Moonshot {
        events.push(chunk(json!([]), Some(total_usage)));
    }
    events
}
