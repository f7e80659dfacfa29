//! The relay over a scripted upstream: what reaches the client, frame by frame.

use super::*;
use futures_util::StreamExt;
use prometheus::HistogramOpts;

fn settings() -> RelaySettings {
    RelaySettings {
        provider: "mock".into(),
        include_usage: false,
        first_byte_deadline: Instant::now() + Duration::from_secs(10),
        idle: Duration::from_secs(10),
        keepalive: None,
        shutdown: CancellationToken::new(),
        chunk_gap: Histogram::with_opts(HistogramOpts::new("gap", "gap")).unwrap(),
        open_streams: IntGauge::new("open", "open").unwrap(),
    }
}

/// Every frame the client is sent when the upstream's chunks are all ready.
async fn frames(chunks: Vec<Bytes>) -> Vec<Bytes> {
    let upstream = futures_util::stream::iter(chunks.into_iter().map(Ok));
    let stats = Arc::new(StreamStats::new(Instant::now()));
    let relay = SseRelay::start(Box::pin(upstream), settings(), stats)
        .await
        .expect("a first event");
    relay.map(|frame| frame.unwrap()).collect().await
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
