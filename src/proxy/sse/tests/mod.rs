//! The relay over a scripted upstream: what reaches the client, frame by frame.

use super::after_done::{REST_READING, REST_READS, REST_WAIT};
use super::gather::GATHER_LIMIT;
use super::*;
use crate::config::test_provider;
use crate::error::ErrorType;
use crate::error::code;
use crate::proxy::breaker::BreakerSettings;
use futures_util::StreamExt;
use prometheus::HistogramOpts;

mod after_done;
mod error_events;
mod opening_chunks;
mod usage;

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
        breaker: Arc::new(Breaker::new(BreakerSettings::default())),
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

#[tokio::test]
async fn a_done_without_the_space_completes_the_stream() {
    let done = Bytes::from_static(b"data:[DONE]\n\n");
    let (frames, end) = frames_and_end(vec![event(0), done.clone()]).await;
    assert_eq!(frames.concat(), [event(0), done].concat());
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

    for (events, first_event) in [
        (": a\n\n", None),
        (":\r\n\r\n", None),
        ("\n\n", None),
        ("data: x\n\n", Some(0)),
        ("data\n\n", Some(0)),
        (": a\nevent: e\ndata:x\n\n", Some(0)),
        (": a\nevent: e\n\n", None),
        ("id: 1\n\n", None),
        ("retry: 3000\r\r", None),
        ("database: 1\n\n", None),
        ("id: 0\n\nid: 1\ndata: x\n\n", Some(7)),
        (": p\r\n\r\nretry: 9\r\rdata: x\r\r", Some(17)),
    ] {
        assert_eq!(
            first_event_start(events.as_bytes()),
            first_event,
            "{events:?}"
        );
    }
}

/// Blocks without data before the first event are dropped also when they
/// arrive in the same read as it: an `id:` block alone would reach the
/// Python SDK as an empty event, which it fails to parse.
#[tokio::test]
async fn blocks_without_data_in_the_first_events_read_are_dropped() {
    let first = Bytes::from_static(b": ping\n\nid: 0\n\nretry: 1000\n\nid: 1\ndata: {\"a\":1}\n\n");
    let done = Bytes::from_static(b": later\n\ndata: [DONE]\n\n");
    let upstream = futures_util::stream::iter([Ok(first)]).chain(one_per_read(vec![done]));
    let (frames, end) = relay_all(Box::pin(upstream)).await;
    assert_eq!(
        frames.concat(),
        b"id: 1\ndata: {\"a\":1}\n\n: later\n\ndata: [DONE]\n\n"
    );
    assert!(matches!(end, Some(StreamEnd::Complete)), "{end:?}");
}

/// A keep-alive after a frame that ends in CR (a provider's write that
/// stopped inside a CRLF) ends in CR too: the provider's LF then finishes
/// the comment's line, instead of making a blank line (an empty event) of
/// its own.
#[tokio::test(start_paused = true)]
async fn a_keepalive_after_a_cr_leaves_the_providers_lf_no_blank_line() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let rx = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    tx.send(Ok(Bytes::from_static(b"id: 1\r\ndata: {}\r\n\r")))
        .unwrap();
    let settings = RelaySettings {
        keepalive: Some(Duration::from_secs(1)),
        idle: Duration::from_secs(60),
        ..settings()
    };
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let mut relay = SseRelay::start(Box::pin(rx), settings, stats)
        .await
        .unwrap();
    let mut sent = relay.next().await.unwrap().unwrap().to_vec();
    // Silence: two comments.
    sent.extend_from_slice(&relay.next().await.unwrap().unwrap());
    sent.extend_from_slice(&relay.next().await.unwrap().unwrap());
    tx.send(Ok(Bytes::from_static(b"\nid: 2\r\ndata: {}\r\n\r\n")))
        .unwrap();
    sent.extend_from_slice(&relay.next().await.unwrap().unwrap());
    assert_eq!(
        sent,
        b"id: 1\r\ndata: {}\r\n\r: keep-alive\r: keep-alive\r\nid: 2\r\ndata: {}\r\n\r\n"
    );
    // SSE's own reading: two events, and no blank line other than theirs.
    let text = String::from_utf8(sent).unwrap();
    let blank_lines = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .matches("\n\n")
        .count();
    assert_eq!(blank_lines, 2, "{text:?}");

    // After a frame that ends in LF, the comment ends in LF.
    tx.send(Ok(Bytes::from_static(b"data: {}\n\n"))).unwrap();
    assert_eq!(relay.next().await.unwrap().unwrap(), "data: {}\n\n");
    assert_eq!(relay.next().await.unwrap().unwrap(), ": keep-alive\n");
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
    assert_eq!(error.code.as_deref(), Some(code::UPSTREAM_TIMEOUT));
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
    assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_RESPONSE_TOO_LARGE));

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
    assert_eq!(
        error.code.as_deref(),
        Some(code::UPSTREAM_RESPONSE_TOO_LARGE)
    );
}

/// An event over the limit that arrives whole (in one read, alone or
/// gathered with others) ends the stream too: the limit does not depend on
/// how the provider's writes fall into reads.
#[tokio::test]
async fn an_event_over_the_limit_read_whole_ends_the_stream() {
    let large = || Bytes::from(format!("data: {{\"content\":\"{}\"}}\n\n", "G".repeat(200)));
    for rest in [
        vec![large()],
        vec![event(1), large()],
        vec![large(), event(1)],
        vec![Bytes::from([event(1), large()].concat())],
    ] {
        let upstream = started_then(futures_util::stream::iter(rest.into_iter().map(Ok)));
        let settings = RelaySettings {
            max_event_bytes: 150,
            ..settings()
        };
        let stats = Arc::new(StreamStats::new(Instant::now()));
        let relay = SseRelay::start(upstream, settings, stats.clone())
            .await
            .unwrap();
        let text = String::from_utf8(rest_of(relay).await.concat().to_vec()).unwrap();
        assert!(text.starts_with("data: {\"choices\""), "{text}");
        assert!(text.contains("upstream_response_too_large"), "{text}");
        assert!(
            !text.contains("GGG"),
            "the large event never went out: {text}"
        );
        let Some(StreamEnd::Failed(error)) = stats.end() else {
            panic!("{:?}", stats.end());
        };
        assert_eq!(
            error.code.as_deref(),
            Some(code::UPSTREAM_RESPONSE_TOO_LARGE)
        );
    }
    // The first event and a large one in one read: the stream begins with
    // the first, as it would had they come apart (not an attempt failed
    // and sent again to the provider).
    let upstream = futures_util::stream::iter([Ok(Bytes::from([event(0), large()].concat()))]);
    let limited = RelaySettings {
        max_event_bytes: 150,
        ..settings()
    };
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let relay = SseRelay::start(Box::pin(upstream), limited, stats.clone())
        .await
        .unwrap();
    let text = String::from_utf8(rest_of(relay).await.concat().to_vec()).unwrap();
    assert!(
        text.starts_with(std::str::from_utf8(&event(0)).unwrap()),
        "{text}"
    );
    assert!(text.contains("upstream_response_too_large"), "{text}");
    assert!(!text.contains("GGG"), "{text}");
    // Before the first event: the attempt fails.
    let upstream = futures_util::stream::iter([Ok(large())]);
    let settings = RelaySettings {
        max_event_bytes: 150,
        ..settings()
    };
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let err = SseRelay::start(Box::pin(upstream), settings, stats)
        .await
        .err()
        .expect("an error");
    assert_eq!(err.code.as_deref(), Some(code::UPSTREAM_RESPONSE_TOO_LARGE));
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

/// A byte order mark split across the provider's reads is dropped all the
/// same, and the first event kept.
#[tokio::test]
async fn a_byte_order_mark_split_across_reads_is_dropped_and_the_first_event_kept() {
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    for split in [
        vec![&b"\xEF"[..], b"\xBB\xBF"],
        vec![b"\xEF\xBB", b"\xBF"],
        vec![b"\xEF", b"\xBB", b"\xBF"],
    ] {
        let mut reads: Vec<Bytes> = split.iter().map(|b| Bytes::copy_from_slice(b)).collect();
        reads.push(event(0));
        reads.push(done.clone());
        let (frames, end) = relay_all(one_per_read(reads)).await;
        assert_eq!(
            frames.concat(),
            [event(0), done.clone()].concat(),
            "{split:?}"
        );
        assert!(matches!(end, Some(StreamEnd::Complete)), "{split:?}");
    }
}

/// Bytes that only began like a byte order mark are the stream's own, put
/// back in front of the read that showed they were not one.
#[test]
fn the_start_of_a_mark_followed_by_something_else_is_kept() {
    let mut seen = 0u8;
    assert_eq!(
        super::strip_bom(&mut seen, Bytes::from_static(b"\xEF")),
        None
    );
    assert_eq!(
        super::strip_bom(&mut seen, Bytes::from_static(b"\xBB")),
        None
    );
    assert_eq!(
        super::strip_bom(&mut seen, Bytes::from_static(b"x\n")),
        Some(Bytes::from_static(b"\xEF\xBBx\n"))
    );
    let mut seen = 0u8;
    assert_eq!(
        super::strip_bom(&mut seen, Bytes::from_static(b"data: 1\n\n")),
        Some(Bytes::from_static(b"data: 1\n\n")),
        "no mark"
    );
    let mut seen = 0u8;
    assert_eq!(
        super::strip_bom(&mut seen, Bytes::from_static(b"\xEF\xBB\xBFdata")),
        Some(Bytes::from_static(b"data")),
        "a whole mark in one read"
    );
}
