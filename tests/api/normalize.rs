//! Provider differences SDKs notice are made uniform, and nothing else
//! changes: compared byte for byte with the provider's own answer.

use crate::helpers::*;
use kimi_gateway::mock::Flavour;
use serde_json::{Value, json};

/// The same request sent straight to the mock, bypassing the gateway.
/// What the provider sends for `body`, less the opening prompt-filter
/// chunks the gateway drops by default (Agentsflare's first event).
async fn direct(app: &TestApp, flavour: Flavour, body: &Value) -> String {
    let sent = provider_bytes(app, flavour, body).await;
    let mut rest = sent.as_str();
    while let Some((first, after)) = rest.split_once("\n\n")
        && first.contains("\"prompt_filter_results\"")
        && first.contains("\"choices\":[]")
    {
        rest = after;
    }
    rest.to_string()
}

async fn provider_bytes(app: &TestApp, flavour: Flavour, body: &Value) -> String {
    app.client
        .post(format!("{}/chat/completions", app.mock.base_url(flavour)))
        .bearer_auth(PROVIDER_KEY)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn through(app: &TestApp, body: &Value) -> String {
    app.chat(body.clone()).await.text().await.unwrap()
}

fn stream_body(model: &str, include_usage: Option<bool>) -> Value {
    let mut body = chat_body(model, "hi", true);
    if let Some(include) = include_usage {
        body["stream_options"] = json!({"include_usage": include});
    }
    body
}

fn events(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect()
}

/// `event` with its top-level `"usage":{...}` written `"usage":null`.
fn usage_nulled(event: &str) -> String {
    let key = "\"usage\":{";
    let start = event.rfind(key).expect("a usage object") + key.len() - 1;
    let mut depth = 0;
    let len = event[start..]
        .char_indices()
        .find_map(|(i, c)| {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(i + 1)
        })
        .expect("the usage object's end");
    format!("{}null{}", &event[..start], &event[start + len..])
}

#[tokio::test]
async fn moonshot_streams_get_the_standard_usage_chunk_when_asked() {
    let app = spawn_app().await;
    // All events at once, and one per read (`[DONE]` then comes alone).
    for prompt in ["hi", "hi [mock chunk_delay_ms=5]"] {
        let mut body = stream_body("kimi-k2-turbo-preview", Some(true));
        body["messages"][0]["content"] = json!(prompt);
        moonshot_usage_chunk_is_added(&app, &body).await;
    }
}

async fn moonshot_usage_chunk_is_added(app: &TestApp, body: &Value) {
    let provider = direct(app, Flavour::Moonshot, body).await;
    let client = through(app, body).await;
    let got = events(&client);
    assert_eq!(got.last(), Some(&"[DONE]"));
    let usage_chunk: Value = serde_json::from_str(got[got.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["object"], "chat.completion.chunk");
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
        2
    );
    assert!(usage_chunk["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // Everything else is the provider's bytes, in order.
    let mut expected = events(&provider);
    expected.insert(expected.len() - 1, got[got.len() - 2]);
    assert_eq!(got, expected);
}

/// A provider that puts the stream's usage top-level on its last chunk
/// with choices: a client that asked for usage still gets the standard
/// `choices: []` chunk (code that reads usage only there would find none),
/// and that chunk's own `usage` is `null`, as in OpenAI's chunks (a client
/// that adds up every chunk's usage counts it once); every other event as
/// the provider sent it.
#[tokio::test]
async fn usage_on_a_chunk_with_choices_is_restated_as_the_standard_chunk() {
    let app = spawn_app().await;
    for (flavour, model) in [
        (Flavour::Moonshot, "kimi-k2-turbo-preview"),
        (Flavour::Aimlapi, "moonshot/kimi-k2-preview"),
        (Flavour::Agentsflare, "kimi-chat"),
    ] {
        let mut body = stream_body(model, Some(true));
        body["messages"][0]["content"] = json!("hi [mock usage_on_last_choice]");
        let provider = direct(&app, flavour, &body).await;
        let client = through(&app, &body).await;
        let mut expected = events(&provider);
        assert!(
            expected
                .iter()
                .all(|e| !e.contains("\"choices\":[]") || !e.contains("\"usage\"")),
            "the provider sent no usage chunk: {provider}"
        );
        let got = events(&client);
        assert_eq!(got.last(), Some(&"[DONE]"), "{model}");
        let usage_chunk: Value = serde_json::from_str(got[got.len() - 2]).unwrap();
        assert_eq!(usage_chunk["choices"], json!([]), "{model}");
        let sent_with_choices: Value = serde_json::from_str(expected[expected.len() - 2]).unwrap();
        let usage = &sent_with_choices["usage"];
        assert!(usage["total_tokens"].as_u64().unwrap() > 0, "{model}");
        assert_eq!(usage_chunk["usage"], {
            let mut usage = usage.clone();
            if usage.get("cached_tokens").is_some() {
                usage["prompt_tokens_details"] = json!({"cached_tokens": usage["cached_tokens"]});
            }
            usage
        });
        assert_eq!(usage_chunk["model"], sent_with_choices["model"]);
        // The chunk it came from: the provider's bytes, its usage `null`.
        let nulled = usage_nulled(expected[expected.len() - 2]);
        let got_with_choices: Value = serde_json::from_str(got[got.len() - 3]).unwrap();
        assert_eq!(got_with_choices["usage"], Value::Null, "{model}");
        let reported = got
            .iter()
            .filter(|e| **e != "[DONE]")
            .filter(|e| !serde_json::from_str::<Value>(e).unwrap()["usage"].is_null())
            .count();
        assert_eq!(reported, 1, "{model}: usage reported once");
        let n = expected.len();
        expected[n - 2] = &nulled;
        expected.insert(n - 1, got[got.len() - 2]);
        assert_eq!(got, expected, "{model}");
    }
}

/// The synthesised usage chunk takes `created` and `model` from the
/// stream's first chunk when the chunk its usage came on lacks them.
#[tokio::test]
async fn a_usage_chunk_built_from_a_bare_chunk_has_the_streams_created_and_model() {
    let app = spawn_app().await;
    let mut body = stream_body("kimi-k2-turbo-preview", Some(true));
    body["messages"][0]["content"] = json!("hi [mock bare_usage_chunk]");
    let client = through(&app, &body).await;
    let got = events(&client);
    let first: Value = serde_json::from_str(got[0]).unwrap();
    let bare: Value = serde_json::from_str(got[got.len() - 3]).unwrap();
    assert!(
        bare.get("created").is_none() && bare.get("model").is_none(),
        "{bare}"
    );
    let usage_chunk: Value = serde_json::from_str(got[got.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(
        first["created"].is_u64() && first["model"].is_string(),
        "{first}"
    );
    assert_eq!(usage_chunk["created"], first["created"]);
    assert_eq!(usage_chunk["model"], first["model"]);
    assert_eq!(usage_chunk["id"], bare["id"]);

    // Agentsflare's first chunk is its prompt filter's, of placeholders
    // (`created: 0`, `model: ""`): passed on, the next chunk's values are
    // taken.
    let app = spawn_app_with(
        "[providers.agentsflare]\npass_prompt_filter_chunks = true\n",
        &[],
    )
    .await;
    let mut body = stream_body("kimi-chat", Some(true));
    body["messages"][0]["content"] = json!("hi [mock usage_on_last_choice bare_usage_chunk]");
    let client = through(&app, &body).await;
    let got = events(&client);
    let filter: Value = serde_json::from_str(got[0]).unwrap();
    assert_eq!(
        (&filter["created"], &filter["model"]),
        (&json!(0), &json!("")),
        "{filter}"
    );
    let usage_chunk: Value = serde_json::from_str(got[got.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]), "{usage_chunk}");
    assert!(
        usage_chunk["created"].as_u64().is_some_and(|c| c > 0),
        "{usage_chunk}"
    );
    assert!(
        usage_chunk["model"].as_str().is_some_and(|m| !m.is_empty()),
        "{usage_chunk}"
    );
}

#[tokio::test]
async fn streams_are_untouched_when_usage_was_not_asked_for() {
    let app = spawn_app().await;
    for (flavour, model) in [
        (Flavour::Moonshot, "kimi-k2-turbo-preview"),
        (Flavour::Aimlapi, "moonshot/kimi-k2-preview"),
        (Flavour::Agentsflare, "kimi-chat"),
    ] {
        for include in [None, Some(false)] {
            let body = stream_body(model, include);
            assert_eq!(
                through(&app, &body).await,
                direct(&app, flavour, &body).await,
                "{model}"
            );
        }
    }
}

#[tokio::test]
async fn a_provider_that_sends_the_usage_chunk_is_not_given_a_second_one() {
    let app = spawn_app().await;
    for (flavour, model) in [
        (Flavour::Aimlapi, "moonshot/kimi-k2-preview"),
        (Flavour::Agentsflare, "kimi-chat"),
    ] {
        let body = stream_body(model, Some(true));
        let client = through(&app, &body).await;
        assert_eq!(client, direct(&app, flavour, &body).await, "{model}");
        let usage_chunks = events(&client)
            .iter()
            .filter(|e| e.contains("\"usage\""))
            .count();
        assert_eq!(usage_chunks, 1, "{model}");
    }
}

#[tokio::test]
async fn moonshot_cached_tokens_are_mirrored_in_non_stream_bodies() {
    let app = spawn_app().await;
    let body = chat_body("kimi-k2-turbo-preview", "hi", false);
    let client: Value = serde_json::from_str(&through(&app, &body).await).unwrap();
    let mut provider: Value =
        serde_json::from_str(&direct(&app, Flavour::Moonshot, &body).await).unwrap();
    assert_eq!(client["usage"]["cached_tokens"], 2);
    assert_eq!(client["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    provider["usage"]["prompt_tokens_details"] = json!({"cached_tokens": 2});
    assert_eq!(client, provider, "only the mirror was added");
}

/// A stream to AI/ML API (which reports a stream's usage only when asked)
/// whose client did not ask: the gateway asks, reads the usage, counts it,
/// and the client gets exactly what the provider sends when not asked.
#[tokio::test]
async fn a_providers_stream_usage_is_asked_for_read_and_not_passed_on() {
    let app = spawn_app().await;
    let model = "moonshot/kimi-k2-preview";
    let body = stream_body(model, None);
    let unasked = direct(&app, Flavour::Aimlapi, &body).await;
    let client = through(&app, &body).await;
    assert_eq!(events(&client), events(&unasked));

    let sent: Value =
        serde_json::from_slice(&app.mock.requests_for(Flavour::Aimlapi)[1].body).unwrap();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["model"], model);

    // The usage was read: the tokens metric has the stream's.
    let asked = direct(&app, Flavour::Aimlapi, &stream_body(model, Some(true))).await;
    let usage_chunk: Value =
        serde_json::from_str(events(&asked)[events(&asked).len() - 2]).unwrap();
    let prompt = usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap();
    let metrics = scrape(&app).await;
    let line = format!(
        "kimi_gateway_tokens_total{{key=\"anonymous\",kind=\"prompt\",provider=\"aimlapi\",route=\"{model}\"}} {prompt}"
    );
    assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");

    // A client that asks gets the chunk; one that sent stream_options
    // without include_usage is left as it is.
    let client = through(&app, &stream_body(model, Some(true))).await;
    assert_eq!(events(&client), events(&asked));
    through(&app, &stream_body(model, Some(false))).await;
    let sent: Value = serde_json::from_slice(&app.mock.requests().last().unwrap().body).unwrap();
    assert_eq!(sent["stream_options"], json!({"include_usage": false}));
}

/// Agentsflare is not asked unless configured to be; then it is as above.
#[tokio::test]
async fn asking_for_stream_usage_follows_the_providers_setting() {
    let app = spawn_app().await;
    through(&app, &stream_body("kimi-chat", None)).await;
    let sent: Value = serde_json::from_slice(&app.mock.requests()[0].body).unwrap();
    assert_eq!(sent.get("stream_options"), None);

    let app = spawn_app_with("[providers.agentsflare]\nask_stream_usage = true\n", &[]).await;
    let body = stream_body("kimi-chat", None);
    let unasked = direct(&app, Flavour::Agentsflare, &body).await;
    let client = through(&app, &body).await;
    assert_eq!(events(&client), events(&unasked));
    let sent: Value = serde_json::from_slice(&app.mock.requests()[1].body).unwrap();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

/// Lines ending in a bare CR or CRLF (both SSE): the stream passes byte for
/// byte, a hidden usage chunk is still found and hidden whole, and a
/// synthesised one still goes in before `[DONE]`.
#[tokio::test]
async fn streams_whose_lines_end_in_cr_or_crlf_are_read_like_any_other() {
    let app = spawn_app().await;
    for line_end in ["cr", "crlf"] {
        let eol = if line_end == "cr" { "\r" } else { "\r\n" };
        let prompt = format!("hi [mock line_end={line_end}]");
        let model = "moonshot/kimi-k2-preview";
        let body = chat_body(model, &prompt, true);
        let unasked = direct(&app, Flavour::Aimlapi, &body).await;
        assert!(
            unasked.ends_with(&format!("data: [DONE]{eol}{eol}")),
            "{unasked:?}"
        );
        let response = app.chat(body.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), unasked, "{line_end}");

        let mut asked = stream_body("kimi-k2-turbo-preview", Some(true));
        asked["messages"][0]["content"] = json!(prompt);
        let client = through(&app, &asked).await;
        assert!(
            client.ends_with(&format!("data: [DONE]{eol}{eol}")),
            "{client:?}"
        );
        let usage_at = client.find("\"choices\":[]").expect("the usage chunk");
        assert!(
            client[usage_at..].contains("\"total_tokens\""),
            "{client:?}"
        );
    }
    let metrics = scrape(&app).await;
    assert!(
        !metrics.contains("error_type=\"server_error\""),
        "no stream failed:\n{metrics}"
    );
}

/// An event whose JSON spans several `data:` lines (valid SSE: they are
/// joined with LF) is read like any other: a hidden usage chunk is found
/// and hidden whole, the usage is counted, Moonshot's in-choice usage
/// becomes the standard chunk, and everything else passes byte for byte.
#[tokio::test]
async fn events_of_several_data_lines_are_read_like_any_other() {
    let app = spawn_app().await;
    let model = "moonshot/kimi-k2-preview";
    let body = chat_body(model, "hi [mock split_data]", true);
    let unasked = direct(&app, Flavour::Aimlapi, &body).await;
    assert!(unasked.contains(",\ndata: "), "{unasked:?}");
    assert_eq!(through(&app, &body).await, unasked);
    let metrics = scrape(&app).await;
    let prompt = format!(
        "kimi_gateway_tokens_total{{key=\"anonymous\",kind=\"prompt\",provider=\"aimlapi\",route=\"{model}\"}} "
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&prompt) && !l.ends_with(" 0")),
        "{prompt} in:\n{metrics}"
    );

    let mut asked = stream_body("kimi-k2-turbo-preview", Some(true));
    asked["messages"][0]["content"] = json!("hi [mock split_data]");
    let client = through(&app, &asked).await;
    let got = events(&client);
    assert_eq!(got.last(), Some(&"[DONE]"));
    let usage_chunk: Value = serde_json::from_str(got[got.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
        2
    );
}

/// A provider that writes its token counts as floats (`11.0`): the counts
/// are read as their values, for plain answers and for each provider's
/// stream usage, and the answer is passed on as the provider wrote it.
#[tokio::test]
async fn token_counts_written_as_floats_are_counted_as_their_values() {
    let app = spawn_app().await;
    let tokens = |metrics: &str, provider: &str, model: &str, kind: &str| {
        sample(
            metrics,
            &format!(
                r#"kimi_gateway_tokens_total{{key="anonymous",kind="{kind}",provider="{provider}",route="{model}"}}"#
            ),
        )
        .unwrap_or(0.0)
    };
    for (flavour, provider, model) in [
        (Flavour::Moonshot, "moonshot", "kimi-k2-turbo-preview"),
        (Flavour::Aimlapi, "aimlapi", "moonshot/kimi-k2-preview"),
        (Flavour::Agentsflare, "agentsflare", "kimi-chat"),
    ] {
        for stream in [false, true] {
            let mut body = chat_body(model, "hi [mock counts_as_floats]", stream);
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            let sent = direct(&app, flavour, &body).await;
            assert!(prompt_count_is_a_float(&sent), "{sent}");
            let before = scrape(&app).await;
            let client = through(&app, &body).await;
            assert!(prompt_count_is_a_float(&client), "as written: {client}");
            let after = scrape(&app).await;
            let completion = tokens(&after, provider, model, "completion")
                - tokens(&before, provider, model, "completion");
            let prompt = tokens(&after, provider, model, "prompt")
                - tokens(&before, provider, model, "prompt");
            assert!(
                completion >= 1.0,
                "{provider} stream={stream}: {completion}"
            );
            assert!(prompt >= 1.0, "{provider} stream={stream}: {prompt}");
        }
    }
}

/// Whether `text` has a `"prompt_tokens":` count written as a float.
fn prompt_count_is_a_float(text: &str) -> bool {
    text.split("\"prompt_tokens\":").skip(1).any(|rest| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(".0")
    })
}
