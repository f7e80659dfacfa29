//! Opening prompt-filter chunks (Azure's shape, which Agentsflare sends
//! before its first token) are no part of the answer: held with the head
//! until the answer's first event, so what fails after them is still the
//! attempt's error, and the first-byte deadline is the answer's; then
//! dropped, or sent before it for a provider set to pass them.

use super::*;

/// Agentsflare's opening chunk: filter results, no choice.
const FILTER: &[u8] =
    b"data: {\"id\":\"\",\"object\":\"\",\"created\":0,\"model\":\"\",\"choices\":[],\
\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n";

const OVERLOADED: &[u8] =
    b"data: {\"error\":{\"message\":\"busy\",\"type\":\"engine_overloaded_error\"}}\n\n";

/// Settings whose provider passes opening prompt-filter chunks on.
fn passing() -> RelaySettings {
    RelaySettings {
        provider: crate::config::test_provider_with(
            "[providers.moonshot]\npass_prompt_filter_chunks = true\n",
        ),
        ..settings()
    }
}

async fn start(upstream: Upstream, settings: RelaySettings) -> Result<SseRelay, GatewayError> {
    let stats = Arc::new(StreamStats::new(Instant::now()));
    SseRelay::start(upstream, settings, stats).await
}

/// An error after the opening chunk, in its read or the next, fails the
/// attempt as a first event's error does (and so is failed over).
#[tokio::test]
async fn an_error_after_the_opening_chunk_is_the_attempts_error() {
    let together = vec![Bytes::from([FILTER, OVERLOADED].concat())];
    let apart = vec![Bytes::from_static(FILTER), Bytes::from_static(OVERLOADED)];
    let two_openings = vec![
        Bytes::from_static(FILTER),
        Bytes::from_static(FILTER),
        Bytes::from_static(OVERLOADED),
    ];
    for reads in [together, apart, two_openings] {
        let err = start(one_per_read(reads), settings())
            .await
            .err()
            .expect("the attempt's error");
        assert_eq!(err.error_type, ErrorType::EngineOverloadedError);
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
    }
}

/// A provider that closes or cuts its body after the opening chunk has
/// sent no answer: the attempt fails, as one with no event at all does.
#[tokio::test]
async fn a_body_that_ends_after_the_opening_chunk_fails_the_attempt() {
    let ended = one_per_read(vec![Bytes::from_static(FILTER)]);
    let err = start(ended, settings()).await.err().expect("no answer");
    assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_BAD_RESPONSE));

    let cut: Upstream = Box::pin(
        futures_util::stream::iter([Ok(Bytes::from_static(FILTER))]).chain(
            futures_util::stream::once(async {
                Err(crate::client::UpstreamError::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                )))
            }),
        ),
    );
    let err = start(cut, settings()).await.err().expect("cut");
    assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_UNREACHABLE));

    let done = one_per_read(vec![
        Bytes::from_static(FILTER),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ]);
    let err = start(done, settings()).await.err().expect("no answer");
    assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_BAD_RESPONSE));
    let done_together = one_per_read(vec![Bytes::from([FILTER, b"data: [DONE]\n\n"].concat())]);
    let err = start(done_together, settings())
        .await
        .err()
        .expect("no answer");
    assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_BAD_RESPONSE));
}

/// The stream begins with the answer's first event (the opening chunk
/// dropped, or sent first by a provider set to pass it); the first
/// event's time is the answer's, and the wait for it is bounded by the
/// first-byte deadline, not the (shorter) idle limit.
#[tokio::test(start_paused = true)]
async fn the_answer_after_the_opening_chunk_begins_the_stream() {
    let slow_answer = || -> Upstream {
        Box::pin(
            futures_util::stream::iter([Ok(Bytes::from_static(FILTER))]).chain(
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(event(0))
                }),
            ),
        )
    };
    for (settings, sent) in [
        (settings(), vec![event(0)]),
        (passing(), vec![Bytes::from_static(FILTER), event(0)]),
    ] {
        let arrived = Instant::now();
        let stats = Arc::new(StreamStats::new(arrived));
        let waits = RelaySettings {
            idle: Duration::from_secs(1),
            ..settings
        };
        let relay = SseRelay::start(slow_answer(), waits, stats.clone())
            .await
            .expect("the answer");
        assert_eq!(stats.first_event_after(), Some(Duration::from_secs(5)));
        let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
        assert_eq!(frames[..sent.len()], sent[..]);
    }

    let deadline = RelaySettings {
        first_byte_deadline: Instant::now() + Duration::from_secs(3),
        ..settings()
    };
    let err = start(slow_answer(), deadline)
        .await
        .err()
        .expect("timed out");
    assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_TIMEOUT));
    assert!(err.message.contains("first event"), "{err}");
}

/// Opening chunks without end are not held without bound: past 64 KiB
/// with no answer the attempt fails (and is failed over), whatever the
/// reads' sizes.
#[tokio::test]
async fn opening_chunks_without_an_answer_fail_past_a_bound() {
    let endless: Upstream = Box::pin(
        futures_util::stream::repeat_with(|| Ok(Bytes::from_static(FILTER))).then(
            |chunk| async move {
                tokio::task::yield_now().await;
                chunk
            },
        ),
    );
    let err = start(endless, settings()).await.err().expect("no answer");
    assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_BAD_RESPONSE));
    assert!(err.message.contains("64 KiB"), "{err}");
    // Just under the bound, then the answer: held, and sent whole (or
    // dropped whole).
    let count = MAX_OPENING / FILTER.len();
    let mut reads: Vec<Bytes> = vec![Bytes::from_static(FILTER); count];
    reads.push(event(0));
    let relay = start(one_per_read(reads.clone()), passing())
        .await
        .expect("the answer");
    let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
    assert_eq!(frames[0].len(), count * FILTER.len());
    assert_eq!(frames[1], event(0));
    let relay = start(one_per_read(reads), settings())
        .await
        .expect("the answer");
    let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
    assert_eq!(frames[0], event(0));
}

/// Dropped, the opening chunks take with them what came between them and
/// the answer in its read (comments, blocks without data), however the
/// reads fall; the answer's own bytes go out as they came.
#[tokio::test]
async fn dropped_opening_chunks_leave_the_answer_as_it_came() {
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let answer = [&event(0)[..], &event(1)[..], &done[..]].concat();
    let ping = b": ping\n\n";
    for reads in [
        vec![Bytes::from([FILTER, ping, &answer[..]].concat())],
        vec![
            Bytes::from_static(FILTER),
            Bytes::from([&ping[..], &answer[..]].concat()),
        ],
        vec![
            Bytes::from([FILTER, FILTER].concat()),
            Bytes::from(answer.clone()),
        ],
    ] {
        let relay = start(one_per_read(reads), settings())
            .await
            .expect("the answer");
        let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
        assert_eq!(frames.concat(), answer);
    }
}

/// AI/ML API's and Agentsflare's error document as the answer's first
/// event (no `error` member) is the attempt's error, as a 2xx body in
/// that shape is; later in a stream it ends the stream as the gateway's
/// own error event (the SDKs would take the document for a chunk).
#[tokio::test]
async fn a_status_code_document_as_the_first_event_is_the_attempts_error() {
    let balance = b"data: {\"statusCode\":429,\"message\":\"Insufficient balance\"}\n\n";
    let err = start(one_per_read(vec![Bytes::from_static(balance)]), settings())
        .await
        .err()
        .expect("the attempt's error");
    assert_eq!(err.error_type, ErrorType::ExceededCurrentQuotaError);
    let after_opening = one_per_read(vec![Bytes::from([FILTER, balance].concat())]);
    let err = start(after_opening, settings()).await.err().expect("error");
    assert_eq!(err.error_type, ErrorType::ExceededCurrentQuotaError);
    let message_first = b"data: {\"message\":\"upstream busy\",\"statusCode\":503}\n\n";
    let err = start(
        one_per_read(vec![Bytes::from_static(message_first)]),
        settings(),
    )
    .await
    .err()
    .expect("the attempt's error");
    assert_eq!(err.error_type, ErrorType::ServerError);
    assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err.message, "upstream busy");
    // Its data over several lines, after an `id:` line, with CR LF line
    // ends and no space after `data:`.
    for first in [
        &b"data: {\"statusCode\":429,\ndata: \"message\":\"Insufficient balance\"}\n\n"[..],
        b"id: 7\ndata: {\"statusCode\":429,\"message\":\"Insufficient balance\"}\n\n",
        b"data:{\"statusCode\":429,\"message\":\"Insufficient balance\"}\r\n\r\n",
    ] {
        let read = one_per_read(vec![Bytes::copy_from_slice(first)]);
        let err = start(read, settings())
            .await
            .err()
            .expect("the attempt's error");
        assert_eq!(
            err.error_type,
            ErrorType::ExceededCurrentQuotaError,
            "{}",
            String::from_utf8_lossy(first)
        );
    }

    // Later, before another error event or `[DONE]`: the stream ends with
    // it, as the gateway's own error event of its type, however the reads
    // fall.
    let boom = b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n";
    let done = b"data: [DONE]\n\n";
    for after in [&boom[..], done] {
        for together in [false, true] {
            let reads = if together {
                vec![event(0), Bytes::from([&balance[..], after].concat())]
            } else {
                vec![
                    event(0),
                    Bytes::from_static(balance),
                    Bytes::copy_from_slice(after),
                ]
            };
            let (frames, end) = frames_and_end(reads).await;
            let Some(StreamEnd::Failed(err)) = end else {
                panic!("{end:?}")
            };
            assert_eq!(err.error_type, ErrorType::ExceededCurrentQuotaError);
            assert_eq!(err.message, "Insufficient balance");
            assert_eq!(frames.concat(), [event(0), err.sse_event()].concat());
        }
    }
}

/// Before the head, a document after the answer's first chunk in the same
/// read is not the answer's first event: the stream begins with the
/// chunk and ends with the document's error, whatever follows it; an
/// error event before it ends the stream first. A chunk whose text
/// merely quotes the document passes.
#[tokio::test]
async fn a_status_code_document_after_the_first_chunk_ends_the_stream() {
    let balance = b"data: {\"statusCode\":429,\"message\":\"Insufficient balance\"}\n\n";
    let boom = b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n";
    let read = Bytes::from([&event(0)[..], balance, boom].concat());
    let (frames, end) = frames_and_end(vec![read]).await;
    let Some(StreamEnd::Failed(err)) = end else {
        panic!("{end:?}")
    };
    assert_eq!(err.message, "Insufficient balance");
    assert_eq!(frames.concat(), [event(0), err.sse_event()].concat());

    let read = Bytes::from([&event(0)[..], boom, balance].concat());
    let (frames, end) = frames_and_end(vec![read]).await;
    let Some(StreamEnd::Failed(err)) = end else {
        panic!("{end:?}")
    };
    assert_eq!(err.message, "boom");
    assert_eq!(frames.concat(), [&event(0)[..], boom].concat());

    let quoting = Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"{\\\"statusCode\\\":429}\"}}]}\n\n",
    );
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let (frames, end) = frames_and_end(vec![event(0), quoting.clone(), done.clone()]).await;
    assert_eq!(frames.concat(), [event(0), quoting, done].concat());
    assert!(matches!(end, Some(StreamEnd::Complete)), "{end:?}");
}

/// The usage chunk synthesised for a client that asked for it takes the
/// answer's identity, however many opening chunks came first.
#[tokio::test]
async fn the_synthesised_usage_chunk_names_the_answer_after_opening_chunks() {
    let answer = Bytes::from_static(
        b"data: {\"id\":\"c9\",\"created\":7,\"model\":\"kimi-chat\",\"choices\":[{\"delta\":{\"content\":\"x\"},\
\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}]}\n\n",
    );
    let mut reads = vec![Bytes::from_static(FILTER); 5];
    reads.push(answer);
    reads.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let asking = RelaySettings {
        include_usage: true,
        ..settings()
    };
    let relay = start(one_per_read(reads), asking)
        .await
        .expect("the answer");
    let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
    let sent = String::from_utf8(frames.concat().to_vec()).unwrap();
    let usage_chunk = sent
        .split("\n\n")
        .find(|event| event.contains("\"choices\":[]") && event.contains("usage"))
        .expect("a usage chunk");
    assert!(usage_chunk.contains("\"id\":\"c9\""), "{usage_chunk}");
    assert!(
        usage_chunk.contains("\"model\":\"kimi-chat\""),
        "{usage_chunk}"
    );
}

/// An opening chunk whose data is split over `data:` lines, its empty
/// `choices` list opened on one and closed on the next, is an opening
/// chunk all the same; the reads of dropped opening chunks are not
/// counted as relayed.
#[tokio::test]
async fn a_split_opening_chunk_is_dropped_and_its_reads_not_counted() {
    let split = Bytes::from_static(
        b"data: {\"id\":\"\",\"choices\":[\ndata: ],\"prompt_filter_results\":[]}\n\n",
    );
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let reads = vec![split, Bytes::from_static(FILTER), event(0), done.clone()];
    let mut counted = Vec::new();
    for settings in [settings(), passing()] {
        let stats = Arc::new(StreamStats::new(Instant::now()));
        let relay = SseRelay::start(one_per_read(reads.clone()), settings, stats.clone())
            .await
            .expect("the answer");
        let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
        counted.push((frames.len() as u64, stats.reads()));
    }
    let [
        (dropped_frames, dropped_reads),
        (passed_frames, passed_reads),
    ] = counted[..]
    else {
        unreachable!()
    };
    assert_eq!(dropped_frames, 2);
    assert_eq!(dropped_reads, 2);
    assert_eq!(passed_reads, 4, "{passed_frames} frames");
}

/// AI/ML API's and Agentsflare's error document with its data over
/// several `data:` lines, `{` alone on the first: read as the joined data
/// is, as the answer's first event and later.
#[tokio::test]
async fn an_error_document_over_several_data_lines_is_found() {
    let document = Bytes::from_static(
        b"data: {\ndata: \"statusCode\":500,\ndata: \"message\":\"Generation timeout\"}\n\n",
    );
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let err = start(one_per_read(vec![document.clone()]), settings())
        .await
        .err()
        .expect("the attempt's error");
    assert_eq!(err.message, "Generation timeout");
    let (frames, end) = frames_and_end(vec![event(0), document, done]).await;
    let Some(StreamEnd::Failed(err)) = end else {
        panic!("{end:?}")
    };
    assert_eq!(err.message, "Generation timeout");
    assert_eq!(frames.concat(), [event(0), err.sse_event()].concat());
}

/// AI/ML API's error document may begin with any of its members
/// (`message`, `path`, `requestId`, `statusCode`, `timestamp`).
#[tokio::test]
async fn an_error_document_is_found_whichever_of_its_members_comes_first() {
    for document in [
        &b"data: {\"requestId\":\"r-1\",\"statusCode\":500,\"message\":\"Generation timeout\"}\n\n"[..],
        b"data: {\"path\":\"/v1/chat/completions\",\"message\":\"Generation timeout\",\"statusCode\":500}\n\n",
        b"data: {\"timestamp\":\"2026-12-07T00:00:00Z\",\"statusCode\":500,\"message\":\"Generation timeout\"}\n\n",
    ] {
        let document = Bytes::copy_from_slice(document);
        let done = Bytes::from_static(b"data: [DONE]\n\n");
        let (_, end) = frames_and_end(vec![event(0), document.clone(), done]).await;
        let Some(StreamEnd::Failed(err)) = end else {
            panic!("{end:?}")
        };
        assert_eq!(err.message, "Generation timeout");
        let err = start(one_per_read(vec![document]), settings())
            .await
            .err()
            .expect("the attempt's error");
        assert_eq!(err.message, "Generation timeout");
    }
}

/// Passed on, an opening chunk whose CR LF blank line the provider's
/// writes split keeps its LF: the client gets the provider's bytes.
#[tokio::test]
async fn a_passed_opening_chunk_keeps_an_lf_its_write_split_off() {
    let crlf = String::from_utf8(FILTER.to_vec())
        .unwrap()
        .replace('\n', "\r\n");
    let (held, lf) = crlf.split_at(crlf.len() - 1);
    let answer =
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n";
    // Before the answer, or before another opening chunk split the same.
    for (reads, sent) in [
        (
            vec![
                Bytes::copy_from_slice(held.as_bytes()),
                Bytes::from(format!("{lf}{answer}")),
            ],
            format!("{crlf}{answer}"),
        ),
        (
            vec![
                Bytes::copy_from_slice(held.as_bytes()),
                Bytes::from(format!("{lf}{held}")),
                Bytes::from(format!("{lf}{answer}")),
            ],
            format!("{crlf}{crlf}{answer}"),
        ),
    ] {
        let relay = start(one_per_read(reads), passing())
            .await
            .expect("the answer");
        let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
        assert_eq!(frames.concat(), sent.as_bytes());
    }
}
