//! A provider's error event: the stream ends with it, its key masked, and
//! before the first event it is the attempt's error.

use super::*;

#[tokio::test]
async fn a_providers_error_event_ends_the_stream_without_a_second_one() {
    let failure = Bytes::from_static(
        b"data: {\"error\":{\"message\":\"upstream broke (key secret-key-123)\",\"type\":\"engine_overloaded_error\"}}\n\n",
    );
    let (frames, end) = relay_all(started_then(futures_util::stream::iter([Ok(
        failure.clone()
    )])))
    .await;
    // The client gets the provider's event (the gateway's key redacted),
    // and nothing of the gateway's.
    let redacted = std::str::from_utf8(&failure)
        .unwrap()
        .replace("secret-key-123", "***");
    assert_eq!(frames.concat(), [event(0), Bytes::from(redacted)].concat());
    let Some(StreamEnd::Failed(err)) = end else {
        panic!("{end:?}")
    };
    // Logged and counted as the provider's error, its key redacted.
    assert_eq!(
        err.error_type,
        crate::error::ErrorType::EngineOverloadedError
    );
    assert_eq!(err.message, "upstream broke (key ***)");
}

#[tokio::test]
async fn a_chunk_that_mentions_error_is_not_an_error_event() {
    let chunk = Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"error\"}]}\n\n",
    );
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let (_, end) = frames_and_end(vec![chunk, done]).await;
    assert!(matches!(end, Some(StreamEnd::Complete)), "{end:?}");
}

#[tokio::test]
async fn a_providers_error_event_with_bare_cr_lines_is_its_error() {
    let failure = Bytes::from_static(
        b"data: {\"error\":{\"message\":\"broke\",\"type\":\"engine_overloaded_error\"}}\r\r",
    );
    let (frames, end) = relay_all(started_then(futures_util::stream::iter([Ok(
        failure.clone()
    )])))
    .await;
    assert_eq!(frames.concat(), [event(0), failure].concat());
    let Some(StreamEnd::Failed(error)) = end else {
        panic!("{end:?}");
    };
    assert!(error.to_string().contains("broke"), "{error}");
}

/// The provider's error event ends the stream at once, recorded as its
/// error, even if its body stays open or breaks after it.
#[tokio::test]
async fn a_providers_error_event_ends_the_stream_even_if_its_body_goes_on() {
    let failure = Bytes::from_static(
        b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"engine_overloaded_error\"}}\n\n",
    );
    let (frames, end) = relay_all(started_then(
        futures_util::stream::iter([Ok(failure.clone())]).chain(futures_util::stream::pending()),
    ))
    .await;
    assert_eq!(frames.concat(), [event(0), failure].concat());
    let Some(StreamEnd::Failed(error)) = end else {
        panic!("{end:?}");
    };
    assert_eq!(error.error_type, ErrorType::EngineOverloadedError);
}

/// A provider whose first event is an error has sent the client nothing:
/// that is the attempt's error, with its type's status, so it is retried
/// or failed over like the same error sent as an HTTP status.
#[tokio::test]
async fn a_first_event_that_is_an_error_is_the_attempts_error() {
    for (failure, status, error_type) in [
        (
            &b"data: {\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit_reached_error\"}}\n\n"[..],
            StatusCode::TOO_MANY_REQUESTS,
            ErrorType::RateLimitReachedError,
        ),
        (
            b"data: {\"error\":{\"message\":\"broke\"}}\n\n",
            StatusCode::BAD_GATEWAY,
            ErrorType::ServerError,
        ),
    ] {
        let upstream = futures_util::stream::iter([Ok(Bytes::from_static(failure))]);
        let stats = Arc::new(StreamStats::new(Instant::now()));
        let err = SseRelay::start(Box::pin(upstream), settings(), stats.clone())
            .await
            .err()
            .expect("an error");
        assert_eq!((err.status, err.error_type), (status, error_type));
        assert!(stats.end().is_none());
    }
}

/// An error event that comes after events of the answer, in the same first
/// read, is not the first event: the client gets those events and the
/// error, as when they come in reads apart, and the attempt is not retried
/// (retrying would send the answer's start twice in other words). Comments
/// and `id:` blocks before the error do not count as the answer.
#[tokio::test]
async fn an_error_after_content_in_the_first_read_ends_a_begun_stream() {
    let error = Bytes::from_static(
        b"data: {\"error\":{\"message\":\"broke\",\"type\":\"engine_overloaded_error\"}}\n\n",
    );
    let first_read = Bytes::from([&event(0)[..], &event(1), &error].concat());
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let upstream = futures_util::stream::iter([Ok(first_read)]);
    let relay = SseRelay::start(Box::pin(upstream), settings(), stats.clone())
        .await
        .expect("the stream began");
    let frames = rest_of(relay).await;
    assert_eq!(
        frames.concat(),
        [event(0), event(1), error.clone()].concat()
    );
    let Some(StreamEnd::Failed(err)) = stats.end() else {
        panic!("{:?}", stats.end());
    };
    assert_eq!(err.error_type, ErrorType::EngineOverloadedError);

    let first_read = Bytes::from([&b": keep-alive\n\nid: 7\n\n"[..], &error].concat());
    let upstream = futures_util::stream::iter([Ok(first_read)]);
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let err = SseRelay::start(Box::pin(upstream), settings(), stats.clone())
        .await
        .err()
        .expect("the attempt's error");
    assert_eq!(err.error_type, ErrorType::EngineOverloadedError);
    assert!(stats.end().is_none());
}

/// A provider's error event ends the stream in the read it comes in too:
/// content, usage and `[DONE]` after it are neither relayed nor counted,
/// the same as when they come in later reads.
#[tokio::test]
async fn what_follows_an_error_event_in_its_read_is_not_relayed_or_read() {
    let error = Bytes::from_static(
        b"data: {\"error\":{\"message\":\"broke\",\"type\":\"engine_overloaded_error\"}}\n\n",
    );
    let usage = Bytes::from_static(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n",
    );
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let same_read = Bytes::from([&error[..], &event(1), &usage, &done].concat());
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let upstream = started_then(futures_util::stream::iter([Ok(same_read)]));
    let relay = SseRelay::start(upstream, settings(), stats.clone())
        .await
        .unwrap();
    let frames = rest_of(relay).await;
    assert_eq!(frames.concat(), [event(0), error].concat());
    assert!(
        matches!(stats.end(), Some(StreamEnd::Failed(_))),
        "{:?}",
        stats.end()
    );
    assert!(stats.usage().is_none(), "{:?}", stats.usage());
    assert!(!stats.saw_done());
}

/// A key the provider's error event quotes JSON-escaped (`\/`, `\u0061`)
/// is masked as well as a raw one; only the error event is rewritten, so
/// content in the same read that happens to hold the same characters
/// passes as it came.
#[tokio::test]
async fn an_error_event_quoting_the_key_escaped_is_masked_and_nothing_else_is_touched() {
    // The test provider's key is `secret-key-123`.
    let content = Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"secret-key-123\"}}]}\n\n",
    );
    for quoted in [
        &br#"secret-key-123"#[..],
        br#"secret\u002dkey-123"#,
        br#"\u0073ecret-key-123"#,
        br#"secret-key\u002d123"#,
    ] {
        let error = [
            &b"id: 7\ndata: {\"error\":{\"message\":\"bad key "[..],
            quoted,
            b"\",\"type\":\"engine_overloaded_error\",\"code\":null}}\n\n",
        ]
        .concat();
        let read = Bytes::from([&content[..], &error].concat());
        let stats = Arc::new(StreamStats::new(Instant::now()));
        let upstream = started_then(futures_util::stream::iter([Ok(read)]));
        let relay = SseRelay::start(upstream, settings(), stats.clone())
            .await
            .unwrap();
        let sent = rest_of(relay).await.concat();
        let expected = [
            &event(0)[..],
            &content,
            b"id: 7\ndata: {\"error\":{\"message\":\"bad key ***\",\"type\":\"engine_overloaded_error\",\"code\":null}}\n\n",
        ]
        .concat();
        assert_eq!(
            String::from_utf8_lossy(&sent),
            String::from_utf8_lossy(&expected),
            "{}",
            String::from_utf8_lossy(quoted)
        );
        let Some(StreamEnd::Failed(err)) = stats.end() else {
            panic!("{:?}", stats.end())
        };
        assert_eq!(err.message, "bad key ***");
    }
}

/// The relay over `event(0)` alone, then `read`: what the client gets
/// after `event(0)`, and how the stream ended.
async fn after_first_event(read: &[u8]) -> (String, Option<StreamEnd>) {
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let read = Bytes::copy_from_slice(read);
    let upstream = started_then(futures_util::stream::iter([Ok(read)]));
    let relay = SseRelay::start(upstream, settings(), stats.clone())
        .await
        .unwrap();
    let sent = rest_of(relay).await.concat();
    let sent = String::from_utf8(sent[event(0).len()..].to_vec()).unwrap();
    (sent, stats.end())
}

/// An error event spread over several `data:` lines, or quoting the key
/// in a line other than its data, is rewritten as valid SSE: each line of
/// the data its own `data:` line (joined again with LF, the JSON is
/// whole), the key masked wherever it was.
#[tokio::test]
async fn a_rewritten_error_event_stays_valid_sse() {
    for line_end in ["\n", "\r\n", "\r"] {
        let event = "id: secret-key-123\n: about secret-key-123\n\
                     data: {\"error\":{\"message\":\"key secret-key-123 bad\",\n\
                     data: \"type\":\"invalid_request_error\"}}\n\n"
            .replace('\n', line_end);
        let (sent, end) = after_first_event(event.as_bytes()).await;
        assert_eq!(
            sent,
            "id: ***\n: about ***\n\
             data: {\"error\":{\"message\":\"key *** bad\",\n\
             data: \"type\":\"invalid_request_error\"}}\n\n",
            "{line_end:?}"
        );
        assert!(matches!(end, Some(StreamEnd::Failed(_))), "{end:?}");
    }
    // The key only in the `id:` line: the data passes as it came.
    let (sent, _) =
        after_first_event(b"id: secret-key-123\ndata: {\"error\":{\"message\":\"x\"}}\n\n").await;
    assert_eq!(sent, "id: ***\ndata: {\"error\":{\"message\":\"x\"}}\n\n");
}

/// `{"error": "text"}` is an error event too (the SDKs raise on it): the
/// stream ends there, the key is masked, the text is the logged message.
#[tokio::test]
async fn an_error_given_as_text_ends_the_stream() {
    let read = [
        &b"data: {\"error\":\"bad key secret-key-123\"}\n\n"[..],
        &event(1),
        b"data: [DONE]\n\n",
    ]
    .concat();
    let (sent, end) = after_first_event(&read).await;
    assert_eq!(sent, "data: {\"error\":\"bad key ***\"}\n\n");
    let Some(StreamEnd::Failed(err)) = end else {
        panic!("{end:?}")
    };
    assert_eq!(err.message, "bad key ***");
    // Empty text is no error (the SDKs find it falsy).
    let read = [&b"data: {\"error\":\"\"}\n\n"[..], b"data: [DONE]\n\n"].concat();
    let (_, end) = after_first_event(&read).await;
    assert!(matches!(end, Some(StreamEnd::Complete)), "{end:?}");
}

/// `{"error":{}}` is an error to the Node SDK but not to the Python one (an
/// empty dict is false), whose user would take the stream for a complete
/// answer: the client gets the gateway's own error event instead, which
/// both raise on; what came before it in the read is relayed as it was.
#[tokio::test]
async fn an_empty_error_event_is_replaced_by_one_every_sdk_raises_on() {
    let content = event(1);
    let read = [&content[..], b"data: {\"error\":{}}\n\n"].concat();
    let (sent, end) = after_first_event(&read).await;
    let (relayed, replaced) = sent.split_at(content.len());
    assert_eq!(relayed.as_bytes(), &content[..]);
    let data = replaced
        .strip_prefix("data: ")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("{replaced:?}"));
    let json: serde_json::Value = serde_json::from_str(data).unwrap();
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("gave no message"), "{json}");
    assert_eq!(json["error"]["type"], "server_error", "{json}");
    let Some(StreamEnd::Failed(err)) = end else {
        panic!("{end:?}");
    };
    assert_eq!(err.message, message);
}

/// An error object with members but no message is passed on as it came
/// (both SDKs raise on it); the log's message says what happened instead
/// of an HTTP status the stream did not have.
#[tokio::test]
async fn an_error_event_without_a_message_is_logged_as_such() {
    let failure = b"data: {\"error\":{\"type\":\"engine_overloaded_error\"}}\n\n";
    let (sent, end) = after_first_event(failure).await;
    assert_eq!(sent.as_bytes(), failure);
    let Some(StreamEnd::Failed(err)) = end else {
        panic!("{end:?}");
    };
    assert!(err.message.contains("gave no message"), "{err}");
    assert!(!err.message.contains("HTTP"), "{err}");
}

/// An error event whose data is not one whole JSON document (text after
/// it, a second data line, a string left open, a lone surrogate escape,
/// a broken escape) could hide the key where no search of its strings
/// looks: the client gets the gateway's own error event in its place,
/// with the provider's message (its key masked) where it could be read.
#[tokio::test]
async fn an_error_event_that_is_not_whole_json_is_replaced_never_relayed() {
    for data in [
        r#"{"error":{"message":"bad \ud800 key secret-key-123","type":"server_error"}}"#,
        r#"{"error":{"message":"boom","type":"server_error"}} secret-key-123"#,
        "{\"error\":{\"message\":\"boom\"}}\ndata: secret-key-123",
        r#"{"error":{"message":"boom","type":"server_error","x":"secret-key-123"#,
        r#"{"error":{"message":"boom\u00"}} secret-key-123"#,
        r#"{"error":{"message":"boom","x":1.5e secret-key-123}}"#,
    ] {
        let read = format!("data: {data}\n\n");
        let (sent, end) = after_first_event(read.as_bytes()).await;
        assert!(!sent.contains("secret-key-123"), "{data}: {sent}");
        let json = sent
            .strip_prefix("data: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("{data}: {sent:?}"));
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        let Some(StreamEnd::Failed(err)) = end else {
            panic!("{data}: {end:?}");
        };
        assert_eq!(json["error"]["message"], *err.message, "{data}");
        assert!(!err.message.contains("secret-key-123"), "{data}: {err}");
    }
}

/// `error` as a list is an error event (the SDKs raise on a non-empty one;
/// its texts are its message, the key masked); an empty list, `true` or a
/// number say nothing and are replaced like `{}`; `false`, `0`, `null`
/// and `""` are no error.
#[tokio::test]
async fn an_error_given_as_a_list_or_a_bare_value_ends_the_stream() {
    let (sent, end) =
        after_first_event(b"data: {\"error\":[\"bad key secret-key-123\"]}\n\n").await;
    assert_eq!(sent, "data: {\"error\":[\"bad key ***\"]}\n\n");
    let Some(StreamEnd::Failed(err)) = end else {
        panic!("{end:?}")
    };
    assert_eq!(err.message, "bad key ***");
    for value in ["[]", "true", "1", "-2.5"] {
        let read = format!("data: {{\"error\":{value}}}\n\n");
        let (sent, end) = after_first_event(read.as_bytes()).await;
        assert!(sent.contains("gave no message"), "{value}: {sent}");
        assert!(
            matches!(end, Some(StreamEnd::Failed(_))),
            "{value}: {end:?}"
        );
    }
    for value in ["false", "0", "null", "\"\""] {
        let read = format!("data: {{\"error\":{value}}}\n\ndata: [DONE]\n\n");
        let (_, end) = after_first_event(read.as_bytes()).await;
        assert!(matches!(end, Some(StreamEnd::Complete)), "{value}: {end:?}");
    }
}
