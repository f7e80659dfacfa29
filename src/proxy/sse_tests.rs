//! The relay over a scripted upstream: what reaches the client, frame by frame.

use super::*;
use crate::config::test_provider;
use crate::error::ErrorType;
use futures_util::StreamExt;
use prometheus::HistogramOpts;

fn settings() -> RelaySettings {
    RelaySettings {
        provider: test_provider(),
        include_usage: false,
        hide_usage_chunk: false,
        first_byte_deadline: Instant::now() + Duration::from_secs(10),
        idle: Duration::from_secs(10),
        keepalive: None,
        max_event_bytes: 1 << 20,
        shutdown: CancellationToken::new(),
        chunk_gap: Histogram::with_opts(HistogramOpts::new("gap", "gap")).unwrap(),
        open_streams: IntGauge::new("open", "open").unwrap(),
    }
}

/// Every frame the client is sent when the upstream's chunks are all ready.
async fn frames(chunks: Vec<Bytes>) -> Vec<Bytes> {
    frames_and_end(chunks).await.0
}

/// The frames, and how the stream's statistics say it ended.
async fn frames_and_end(chunks: Vec<Bytes>) -> (Vec<Bytes>, Option<StreamEnd>) {
    let upstream = futures_util::stream::iter(chunks.into_iter().map(Ok));
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let relay = SseRelay::start(Box::pin(upstream), settings(), stats.clone())
        .await
        .expect("a first event");
    let frames = relay.map(|frame| frame.unwrap()).collect().await;
    (frames, stats.end())
}

/// `event(0)` read alone (the stream has started, its head gone out, when
/// anything else arrives), then `rest`.
fn started_then(
    rest: impl Stream<Item = Result<Bytes, crate::client::UpstreamError>> + Send + 'static,
) -> Upstream {
    let pause = futures_util::stream::once(tokio::task::yield_now())
        .filter_map(|()| std::future::ready(None));
    Box::pin(
        futures_util::stream::iter([Ok(event(0))])
            .chain(pause)
            .chain(rest),
    )
}

/// `chunks`, each in a read of its own: the relay finds nothing else ready
/// when it reads one.
fn one_per_read(chunks: Vec<Bytes>) -> Upstream {
    Box::pin(futures_util::stream::iter(chunks).then(|chunk| async move {
        tokio::task::yield_now().await;
        Ok(chunk)
    }))
}

/// Every frame of a relay over `upstream`, and how its statistics say it
/// ended.
async fn relay_all(upstream: Upstream) -> (Vec<Bytes>, Option<StreamEnd>) {
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let relay = SseRelay::start(upstream, settings(), stats.clone())
        .await
        .expect("a first event");
    let frames = rest_of(relay).await;
    (frames, stats.end())
}

/// Every frame `relay` has still to send; the stream must end within 5 s.
async fn rest_of(relay: SseRelay) -> Vec<Bytes> {
    tokio::time::timeout(
        Duration::from_secs(5),
        relay.map(|frame| frame.unwrap()).collect(),
    )
    .await
    .expect("the stream ends")
}

fn event(i: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{i}\"}}}}]}}\n\n"
    ))
}

#[tokio::test]
async fn events_already_read_go_out_as_one_frame() {
    let mut chunks: Vec<Bytes> = (0..10).map(event).collect();
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let expected: Vec<u8> = chunks.concat();
    let frames = frames(chunks).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0], expected);
}

#[tokio::test]
async fn an_event_split_across_chunks_is_gathered_whole() {
    let whole = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
    let chunks = whole
        .chunks(5)
        .map(Bytes::copy_from_slice)
        .collect::<Vec<_>>();
    let frames = frames(chunks).await;
    assert_eq!(frames.concat(), whole);
    for frame in &frames {
        assert!(frame.ends_with(b"\n\n"), "half an event: {frame:?}");
    }
    assert!(frames.len() <= 2, "{} frames", frames.len());
}

#[tokio::test]
async fn a_large_read_is_not_copied_into_a_batch() {
    let large = {
        let mut event = b"data: {\"content\":\"".to_vec();
        event.resize(GATHER_LIMIT, b'x');
        event.extend_from_slice(b"\"}\n\n");
        Bytes::from(event)
    };
    let chunks = vec![event(0), event(1), large.clone(), event(2), event(3)];
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let mut all = chunks.clone();
    all.push(done.clone());
    let frames = frames(all).await;
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[0], [event(0), event(1)].concat());
    assert_eq!(
        frames[1].as_ptr(),
        large.as_ptr(),
        "the large read is forwarded as it came"
    );
    assert_eq!(frames[2], [event(2), event(3), done].concat());
}

#[tokio::test]
async fn an_early_end_after_gathered_events_still_ends_with_an_error_event() {
    let frames = frames(vec![event(0), event(1), event(2)]).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0], [event(0), event(1), event(2)].concat());
    let error = std::str::from_utf8(&frames[1]).unwrap();
    assert!(
        error.starts_with("data: {\"error\"") && error.contains("closed the stream"),
        "{error}"
    );
}

/// `[DONE]` as the SDKs read it: an event whose data begins with it.
#[test]
fn done_is_an_event_whose_data_begins_with_it() {
    assert_eq!(find_done(b"data: [DONE]\n\n"), Some(0));
    assert_eq!(find_done(b"data:[DONE]\n\n"), Some(0));
    assert_eq!(find_done(b"data: {}\n\ndata:[DONE]\r\n\r\n"), Some(10));
    assert_eq!(find_done(b"data: {}\n\ndata: [DONE]"), Some(10));
    // Whatever follows on its line (`startswith` in the SDKs).
    assert_eq!(find_done(b"data: [DONE] \n\n"), Some(0));
    assert_eq!(find_done(b"data: [DONE]x\n\n"), Some(0));
    // Its data lines after the first, and field lines before it.
    assert_eq!(find_done(b"data: [DONE]\ndata: x\n\n"), Some(0));
    assert_eq!(find_done(b"id: 9\nevent: x\ndata: [DONE]\n\n"), Some(15));
    // Mentions of [DONE] that are not the event.
    assert_eq!(find_done(br#"data: {"c":"[DONE]"}\n\n"#), None);
    assert_eq!(find_done(b"xdata: [DONE]\n\n"), None);
    assert_eq!(find_done(b"data:  [DONE]\n\n"), None);
    assert_eq!(find_done(b": [DONE]\n\ndata: [DONE]\n\n"), Some(10));
    // An event's second data line: its data begins with the first.
    assert_eq!(find_done(b"data: {\"x\":1}\ndata: [DONE]\n\n"), None);
    assert_eq!(
        find_done(b"data: {\"x\":1}\r\ndata: [DONE]\r\n\r\ndata: [DONE]\n\n"),
        Some(31)
    );
}

#[tokio::test]
async fn a_done_without_the_space_completes_the_stream() {
    let done = Bytes::from_static(b"data:[DONE]\n\n");
    let (frames, end) = frames_and_end(vec![event(0), done.clone()]).await;
    assert_eq!(frames.concat(), [event(0), done].concat());
    assert!(matches!(end, Some(StreamEnd::Complete)), "{end:?}");
}

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
async fn blocks_without_data_before_the_first_event_are_not_the_first_event() {
    // Only comments, then the end: no first event, so an ordinary error
    // (which fail-over can retry elsewhere), not a committed 200.
    let upstream = futures_util::stream::iter(
        [
            b": ping\n\n".as_slice(),
            b": ping\r\n\r\n",
            b"retry: 3000\n\n",
        ]
        .map(|c| Ok(Bytes::from_static(c))),
    );
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let refused = SseRelay::start(Box::pin(upstream), settings(), stats).await;
    assert_eq!(
        refused.err().expect("no first event").status,
        StatusCode::BAD_GATEWAY
    );

    // Comments then events: the stream starts, events and comments pass.
    let mut chunks = vec![Bytes::from_static(b": ping\n\n"), event(0)];
    chunks.push(Bytes::from_static(
        b": later comments pass\n\ndata: [DONE]\n\n",
    ));
    let frames = frames(chunks).await.concat();
    let text = String::from_utf8(frames).unwrap();
    assert!(
        text.contains(&String::from_utf8(event(0).to_vec()).unwrap()),
        "{text}"
    );
    assert!(text.contains(": later comments pass"), "{text}");

    for (events, is_event) in [
        (": a\n\n", false),
        (":\r\n\r\n", false),
        ("\n\n", false),
        ("data: x\n\n", true),
        ("data\n\n", true),
        (": a\nevent: e\ndata:x\n\n", true),
        (": a\nevent: e\n\n", false),
        ("id: 1\n\n", false),
        ("retry: 3000\r\r", false),
        ("database: 1\n\n", false),
    ] {
        assert_eq!(has_data_line(events.as_bytes()), is_event, "{events:?}");
    }
}

/// Held by the tests whose provider bodies are read after `[DONE]`: they
/// share the process's count of such reads, which one of them fills.
static REST_READS_USED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A provider body that goes on after `[DONE]`: `first` read at once,
/// then whatever is sent on the returned sender, ending when it is dropped.
/// The receiver hears when the body was read to its end, or dropped before.
fn body_after_done(
    first: Bytes,
) -> (
    Upstream,
    tokio::sync::mpsc::UnboundedSender<Bytes>,
    tokio::sync::oneshot::Receiver<&'static str>,
) {
    /// Says "dropped" unless the end was read first.
    struct Outcome(Option<tokio::sync::oneshot::Sender<&'static str>>);
    impl Drop for Outcome {
        fn drop(&mut self) {
            if let Some(tell) = self.0.take() {
                let _ = tell.send("dropped");
            }
        }
    }
    let (more, more_seen) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let (tell, told) = tokio::sync::oneshot::channel();
    let rest = futures_util::stream::unfold(
        (more_seen, Outcome(Some(tell))),
        |(mut more_seen, mut outcome)| async move {
            match more_seen.recv().await {
                Some(bytes) => Some((Ok(bytes), (more_seen, outcome))),
                None => {
                    let _ = outcome.0.take().expect("once").send("read to its end");
                    None
                }
            }
        },
    );
    let upstream = futures_util::stream::iter([Ok(first)]).chain(rest);
    (Box::pin(upstream), more, told)
}

/// A provider that keeps its body open after `[DONE]` holds neither the
/// client nor the relay: the stream ends at once (complete, nothing added),
/// and the provider's body is read to its end in the background, so its
/// connection can be reused; the same when the client hangs up on `[DONE]`.
#[tokio::test]
async fn after_done_the_stream_ends_without_waiting_for_the_providers_body() {
    let _serial = REST_READS_USED.lock().await;
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let first = Bytes::from([event(0), done.clone()].concat());
    for client_hangs_up in [false, true] {
        let (upstream, more, told) = body_after_done(first.clone());
        let stats = Arc::new(StreamStats::new(Instant::now()));
        let mut relay = SseRelay::start(upstream, settings(), stats.clone())
            .await
            .unwrap();
        if client_hangs_up {
            assert_eq!(relay.next().await.unwrap().unwrap(), first);
            drop(relay);
        } else {
            let frames = rest_of(relay).await;
            assert_eq!(frames.concat(), first);
        }
        assert!(matches!(stats.end(), Some(StreamEnd::Complete)));
        more.send(Bytes::from_static(b"\n")).unwrap();
        drop(more);
        let outcome = tokio::time::timeout(Duration::from_secs(5), told).await;
        assert_eq!(
            outcome.expect("told").unwrap(),
            "read to its end",
            "client_hangs_up={client_hangs_up}"
        );
    }
}

/// A provider body that never ends after `[DONE]` is given up (its
/// connection closed) after a bounded wait, not read for ever.
#[tokio::test(start_paused = true)]
async fn after_done_a_body_that_never_ends_is_given_up() {
    let _serial = REST_READS_USED.lock().await;
    let first = Bytes::from([event(0), Bytes::from_static(b"data: [DONE]\n\n")].concat());
    let (upstream, more, told) = body_after_done(first);
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let relay = SseRelay::start(upstream, settings(), stats.clone())
        .await
        .unwrap();
    let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
    assert_eq!(frames.len(), 1);
    let started = Instant::now();
    assert_eq!(told.await.unwrap(), "dropped");
    assert!(started.elapsed() >= REST_WAIT, "{:?}", started.elapsed());
    drop(more);
}

/// The relay's frames and the usage it read, with the usage chunk hidden
/// from a client that did not ask for it.
async fn frames_hiding_usage(chunks: Vec<Bytes>) -> (Vec<Bytes>, Option<u64>) {
    let upstream = futures_util::stream::iter(chunks.into_iter().map(Ok));
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let settings = RelaySettings {
        hide_usage_chunk: true,
        ..settings()
    };
    let relay = SseRelay::start(Box::pin(upstream), settings, stats.clone())
        .await
        .expect("a first event");
    let frames = relay.map(|frame| frame.unwrap()).collect().await;
    (frames, stats.usage().map(|(usage, _)| usage.total_tokens))
}

#[tokio::test]
async fn a_usage_chunk_the_gateway_asked_for_is_read_but_not_passed_on() {
    let usage = Bytes::from_static(
        b"data: {\"id\":\"c1\",\"choices\": [ ],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n",
    );
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let content = [event(0), event(1)].concat();
    // All in one read, the chunk in a read of its own, and CRLF lines.
    let crlf = Bytes::from(
        String::from_utf8(usage.to_vec())
            .unwrap()
            .replace('\n', "\r\n"),
    );
    for (chunks, expected) in [
        (
            vec![Bytes::from([&content[..], &usage, &done].concat())],
            [&content[..], &done].concat(),
        ),
        (
            vec![Bytes::from(content.clone()), usage.clone(), done.clone()],
            [&content[..], &done].concat(),
        ),
        (
            vec![Bytes::from(content.clone()), crlf, done.clone()],
            [&content[..], &done].concat(),
        ),
    ] {
        let (frames, total) = frames_hiding_usage(chunks).await;
        assert_eq!(frames.concat(), expected);
        assert!(frames.iter().all(|f| !f.is_empty()), "{frames:?}");
        assert_eq!(total, Some(7));
    }
}

#[tokio::test]
async fn a_hidden_usage_chunk_goes_whole_with_its_other_fields_and_every_one_is_hidden() {
    let content = Bytes::from_static(
        b"id: 1\nevent: message\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    );
    let usage = |id: u8| {
        format!(
            "id: {id}\nevent: message\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}}}\n\n"
        )
    };
    let done = Bytes::from_static(b"id: 9\ndata: [DONE]\n\n");
    for chunks in [
        vec![content.clone(), Bytes::from(usage(2)), done.clone()],
        vec![Bytes::from(
            [
                &content[..],
                usage(2).as_bytes(),
                usage(3).as_bytes(),
                &done,
            ]
            .concat(),
        )],
    ] {
        let (frames, total) = frames_hiding_usage(chunks).await;
        assert_eq!(frames.concat(), [&content[..], &done].concat());
        for frame in &frames {
            assert!(frame.ends_with(b"\n\n"), "half an event: {frame:?}");
        }
        assert_eq!(total, Some(3));
    }
}

#[tokio::test]
async fn usage_on_a_content_chunk_is_passed_on_even_when_hidden_chunks_are_asked() {
    // Some providers put usage on the last content chunk: it carries
    // content, so it goes out as it came.
    let last = Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\ndata: [DONE]\n\n",
    );
    let chunks = vec![event(0), last.clone()];
    let expected = [&event(0)[..], &last].concat();
    let (frames, total) = frames_hiding_usage(chunks).await;
    assert_eq!(frames.concat(), expected);
    assert_eq!(total, Some(2));
}

#[tokio::test]
async fn every_line_end_the_sse_format_allows_is_relayed_and_read() {
    let stream = "id: 1\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                  : ping\n\n\
                  id: 2\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n\
                  data: [DONE]\n\n";
    for line_end in ["\n", "\r\n", "\r"] {
        let text = stream.replace('\n', line_end);
        let hidden_from = text.find("id: 2").unwrap();
        let hidden_to = text.find("data: [DONE]").unwrap();
        let expected = [&text[..hidden_from], &text[hidden_to..]].concat();
        // Whole, and split at every byte (so line ends straddle reads).
        for read in [text.len(), 1] {
            let chunks: Vec<Bytes> = text
                .as_bytes()
                .chunks(read)
                .map(Bytes::copy_from_slice)
                .collect();
            let (frames, total) = frames_hiding_usage(chunks.clone()).await;
            assert_eq!(
                frames.concat(),
                expected.as_bytes(),
                "{line_end:?} by {read}"
            );
            assert_eq!(total, Some(3), "{line_end:?} by {read}");
            let (frames, end) = frames_and_end(chunks).await;
            assert_eq!(frames.concat(), text.as_bytes(), "{line_end:?} by {read}");
            assert!(
                matches!(end, Some(StreamEnd::Complete)),
                "{line_end:?}: {end:?}"
            );
        }
    }
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

/// A Moonshot-style stream (usage in the last choice) to a client that
/// asked for `include_usage`: `[DONE]` in a read of its own, or after an
/// `id:` line, still gets the usage chunk before it, and its event whole.
#[tokio::test]
async fn the_synthesised_usage_chunk_goes_before_done_however_done_arrives() {
    let last = Bytes::from_static(
        b"data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}]}\n\n",
    );
    for done in [&b"data: [DONE]\n\n"[..], b"id: 9\ndata: [DONE]\n\n"] {
        let done = Bytes::from_static(done);
        for (chunks, apart) in [
            (vec![event(0), last.clone(), done.clone()], true),
            (vec![event(0), last.clone(), done.clone()], false),
            (
                vec![event(0), Bytes::from([&last[..], &done].concat())],
                false,
            ),
        ] {
            let upstream = if apart {
                one_per_read(chunks)
            } else {
                Box::pin(futures_util::stream::iter(chunks.into_iter().map(Ok)))
            };
            let stats = Arc::new(StreamStats::new(Instant::now()));
            let settings = RelaySettings {
                include_usage: true,
                ..settings()
            };
            let relay = SseRelay::start(upstream, settings, stats.clone())
                .await
                .unwrap();
            let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
            let text = String::from_utf8(frames.concat().to_vec()).unwrap();
            let usage_at = text.find("\"choices\":[]").expect("usage chunk");
            let done_text = std::str::from_utf8(&done).unwrap();
            assert!(text.ends_with(done_text), "{text}");
            assert!(usage_at < text.len() - done_text.len(), "{text}");
            for frame in &frames {
                assert!(frame.ends_with(b"\n\n"), "half an event: {frame:?}");
            }
            assert!(matches!(stats.end(), Some(StreamEnd::Complete)));
        }
    }
}

/// However the provider's body ends after `[DONE]` (reset, cut), the client
/// gets nothing more and the stream is complete; and it is complete as soon
/// as `[DONE]` is handed on, before the provider's body ends.
#[tokio::test]
async fn after_done_a_broken_provider_connection_changes_nothing() {
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let broken = || crate::client::UpstreamError::Io(std::io::ErrorKind::ConnectionReset.into());
    let upstream = futures_util::stream::iter([Ok(event(0)), Ok(done.clone()), Err(broken())]);
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let relay = SseRelay::start(Box::pin(upstream), settings(), stats.clone())
        .await
        .unwrap();
    let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
    assert_eq!(frames.concat(), [event(0), done.clone()].concat());
    assert!(matches!(stats.end(), Some(StreamEnd::Complete)));

    let upstream = futures_util::stream::iter([Ok(event(0)), Ok(done.clone())])
        .chain(futures_util::stream::pending());
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let mut relay = SseRelay::start(Box::pin(upstream), settings(), stats.clone())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(&done[..]) {
        seen.extend_from_slice(&relay.next().await.unwrap().unwrap());
    }
    assert!(matches!(stats.end(), Some(StreamEnd::Complete)));
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

/// After the first event, comments alone do not keep a silent provider
/// within its idle limit.
#[tokio::test]
async fn provider_comments_do_not_count_as_events_for_the_idle_limit() {
    let comments = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some((Ok(Bytes::from_static(b": keep-alive\n\n")), ()))
    });
    let upstream = futures_util::stream::iter([Ok(event(0))]).chain(comments);
    let settings = RelaySettings {
        idle: Duration::from_millis(100),
        ..settings()
    };
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let relay = SseRelay::start(Box::pin(upstream), settings, stats.clone())
        .await
        .unwrap();
    let frames = rest_of(relay).await;
    let text = String::from_utf8(frames.concat().to_vec()).unwrap();
    assert!(text.contains(": keep-alive"), "comments pass: {text}");
    let Some(StreamEnd::Failed(error)) = stats.end() else {
        panic!("{:?}", stats.end());
    };
    assert_eq!(error.code.as_deref(), Some("upstream_timeout"));
}

/// An event that never ends is held only up to the limit: before the first
/// event the attempt fails, after it the stream ends with an error event.
#[tokio::test]
async fn an_event_over_the_limit_fails_the_stream_instead_of_growing_it() {
    let settings = || RelaySettings {
        max_event_bytes: 64 * 1024,
        ..settings()
    };
    let endless_line = || {
        futures_util::stream::iter(std::iter::repeat_n(Bytes::from(vec![b'G'; 4096]), 1000).map(Ok))
    };
    let upstream = futures_util::stream::iter([Ok(Bytes::from_static(b"data: {\"a\":"))])
        .chain(endless_line());
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let err = SseRelay::start(Box::pin(upstream), settings(), stats)
        .await
        .err()
        .expect("an error");
    assert_eq!(err.status, StatusCode::BAD_GATEWAY);
    assert_eq!(err.code.as_deref(), Some("upstream_response_too_large"));

    let upstream = futures_util::stream::iter([Ok(event(0)), Ok(Bytes::from_static(b"data: "))])
        .chain(endless_line());
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let relay = SseRelay::start(Box::pin(upstream), settings(), stats.clone())
        .await
        .unwrap();
    let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
    let text = String::from_utf8(frames.concat().to_vec()).unwrap();
    assert!(text.starts_with("data: {\"choices\""), "{text}");
    assert!(text.contains("upstream_response_too_large"), "{text}");
    assert!(!text.contains("GGG"), "the partial event never went out");
    let Some(StreamEnd::Failed(error)) = stats.end() else {
        panic!("{:?}", stats.end());
    };
    assert_eq!(error.code.as_deref(), Some("upstream_response_too_large"));
}

/// A byte order mark before the first event (allowed by the SSE format) is
/// dropped, and that event is the stream's first; one anywhere else is
/// content and passes.
#[tokio::test]
async fn a_byte_order_mark_before_the_first_event_is_dropped() {
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let with_bom = Bytes::from([&b"\xEF\xBB\xBF"[..], &event(0)].concat());
    let (frames, end) = relay_all(one_per_read(vec![with_bom, event(1), done.clone()])).await;
    assert_eq!(frames.concat(), [event(0), event(1), done.clone()].concat());
    assert!(matches!(end, Some(StreamEnd::Complete)));
    let later_bom = Bytes::from([&b"\xEF\xBB\xBF"[..], &event(1)].concat());
    let (frames, _) = relay_all(one_per_read(vec![
        event(0),
        later_bom.clone(),
        done.clone(),
    ]))
    .await;
    assert_eq!(frames.concat(), [event(0), later_bom, done].concat());
}

/// What follows `[DONE]`'s event is never relayed, whether it came in the
/// same read or later, whole or cut: the stream the client gets does not
/// depend on how the provider's writes fell into reads.
#[tokio::test]
async fn nothing_after_dones_event_is_relayed() {
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let after = Bytes::from_static(b"data: {\"late\":1}\n\ndata: {\"partial\":");
    let expected = [event(0), done.clone()].concat();
    let same_read = Bytes::from([&done[..], &after[..]].concat());
    let (frames, end) = relay_all(one_per_read(vec![event(0), same_read])).await;
    assert_eq!(frames.concat(), expected);
    assert!(matches!(end, Some(StreamEnd::Complete)));
    let (frames, _) = relay_all(one_per_read(vec![event(0), done.clone(), after])).await;
    assert_eq!(frames.concat(), expected);
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

/// Nor is it read: an error event or a usage report after `[DONE]`, in the
/// same read or in reads gathered with it, changes neither how a finished
/// answer ended nor what it used, and a first read that ends in `[DONE]`
/// is a stream, not a failed attempt to retry.
#[tokio::test]
async fn what_follows_dones_event_is_not_read() {
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let error = Bytes::from_static(
        b"data: {\"error\":{\"message\":\"late\",\"type\":\"server_error\"}}\n\n",
    );
    let usage = Bytes::from_static(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n",
    );
    let expected = [event(0), done.clone()].concat();
    // The first read, the head not yet sent: not a failed attempt.
    let first = Bytes::from([&event(0)[..], &done, &error].concat());
    let (frames, end) = frames_and_end(vec![first]).await;
    assert_eq!(frames.concat(), expected);
    assert!(matches!(end, Some(StreamEnd::Complete)), "{end:?}");
    // After the head, in the same read as `[DONE]` and in reads gathered
    // with it (all ready at once).
    let same_read = Bytes::from([&done[..], &error, &usage].concat());
    for later in [
        vec![same_read],
        vec![done.clone(), error.clone(), usage.clone()],
    ] {
        let stats = Arc::new(StreamStats::new(Instant::now()));
        let upstream = started_then(futures_util::stream::iter(later.into_iter().map(Ok)));
        let relay = SseRelay::start(upstream, settings(), stats.clone())
            .await
            .unwrap();
        let frames = rest_of(relay).await;
        assert_eq!(frames.concat(), expected);
        assert!(
            matches!(stats.end(), Some(StreamEnd::Complete)),
            "{:?}",
            stats.end()
        );
        assert!(stats.usage().is_none(), "{:?}", stats.usage());
        assert_eq!(stats.bytes(), expected.len() as u64);
    }
}

/// CRLF line ends: `[DONE]`'s event read up to its last CR, the LF in a
/// read of its own (later, or never). The LF goes out when it comes; the
/// stream still ends when it does not (the answer is whole).
#[tokio::test]
async fn the_lf_after_dones_last_cr_goes_out_when_it_comes() {
    let _serial = REST_READS_USED.lock().await;
    let first = Bytes::from_static(b"data: {\"a\":1}\r\n\r\ndata: [DONE]\r\n\r");
    let (upstream, more, told) = body_after_done(first.clone());
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let mut relay = SseRelay::start(upstream, settings(), stats.clone())
        .await
        .unwrap();
    assert_eq!(relay.next().await.unwrap().unwrap(), first);
    more.send(Bytes::from_static(b"\n")).unwrap();
    let rest = rest_of(relay).await;
    assert_eq!(rest.concat(), b"\n"[..]);
    assert!(matches!(stats.end(), Some(StreamEnd::Complete)));
    drop(more);
    assert_eq!(told.await.unwrap(), "read to its end");

    // The LF never comes: the idle limit ends the stream, without error.
    let (upstream, _more, _told) = body_after_done(first.clone());
    let mut settings = settings();
    settings.idle = Duration::from_millis(20);
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let relay = SseRelay::start(upstream, settings, stats.clone())
        .await
        .unwrap();
    let frames = rest_of(relay).await;
    assert_eq!(frames.concat(), first);
    assert!(matches!(stats.end(), Some(StreamEnd::Complete)));
}

/// Provider bodies still open after `[DONE]` are read in the background
/// only up to a number at once: past it, they are closed at once, so a
/// provider that never ends its bodies cannot make the gateway hold one
/// connection per stream it served in the last seconds.
#[tokio::test(start_paused = true)]
async fn bodies_read_after_done_are_bounded_in_number() {
    let _serial = REST_READS_USED.lock().await;
    let first = Bytes::from([event(0), Bytes::from_static(b"data: [DONE]\n\n")].concat());
    let mut outcomes = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..REST_READS + 44 {
        let (upstream, more, told) = body_after_done(first.clone());
        let stats = Arc::new(StreamStats::new(Instant::now()));
        let relay = SseRelay::start(upstream, settings(), stats).await.unwrap();
        let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
        assert_eq!(frames.concat(), first);
        outcomes.push(told);
        senders.push(more);
    }
    // Let every background read start; no time passes.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let mut still_read = Vec::new();
    let mut closed_at_once = 0;
    for mut told in outcomes {
        match told.try_recv() {
            Ok(outcome) => {
                assert_eq!(outcome, "dropped");
                closed_at_once += 1;
            }
            Err(_) => still_read.push(told),
        }
    }
    // At least the 44 past the cap (more while other tests' bodies, read
    // for a moment, hold some of it).
    assert!(closed_at_once >= 44, "{closed_at_once}");
    assert!(!still_read.is_empty());
    // The bodies read end with their senders, and give their places back.
    drop(senders);
    for told in still_read {
        assert_eq!(told.await.unwrap(), "read to its end");
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let given_back = (0..2000).any(|_| {
        let reading = REST_READING.load(std::sync::atomic::Ordering::Acquire);
        reading == 0 || {
            std::thread::sleep(Duration::from_millis(1));
            false
        }
    });
    assert!(given_back, "{REST_READING:?}");
}
