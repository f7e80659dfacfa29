//! Usage read from the events relayed: hidden chunks, in-choice usage and
//! the usage chunk synthesised before `[DONE]`.

use super::*;

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
async fn a_usage_chunk_without_choices_or_with_null_ones_is_hidden_too() {
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let content = [event(0), event(1)].concat();
    for usage in [
        &b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n"[..],
        &b"data: {\"id\":\"c1\",\"choices\":null,\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n"[..],
    ] {
        let chunks = vec![Bytes::from(content.clone()), Bytes::copy_from_slice(usage), done.clone()];
        let (frames, total) = frames_hiding_usage(chunks).await;
        assert_eq!(frames.concat(), [&content[..], &done].concat());
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

/// A usage that counts, then an empty one (`{}`) or one of zeros on a
/// later chunk: the stream is settled to the one that counts, the
/// standard chunk restates it, and both are `null` where they came, so the
/// client reads the usage once, with its counts.
#[tokio::test]
async fn an_empty_usage_after_one_that_counts_does_not_replace_it() {
    let counted = Bytes::from_static(
        b"data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n",
    );
    for later in [
        "{}",
        r#"{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}"#,
    ] {
        let empty = Bytes::from(format!(
            "data: {{\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":{later}}}\n\n"
        ));
        let done = Bytes::from_static(b"data: [DONE]\n\n");
        let stats = Arc::new(StreamStats::new(Instant::now()));
        let settings = RelaySettings {
            include_usage: true,
            ..settings()
        };
        let upstream = one_per_read(vec![event(0), counted.clone(), empty, done]);
        let relay = SseRelay::start(upstream, settings, stats.clone())
            .await
            .unwrap();
        let frames: Vec<Bytes> = relay.map(|frame| frame.unwrap()).collect().await;
        assert_eq!(
            stats.usage().map(|(usage, _)| usage.total_tokens),
            Some(3),
            "{later}"
        );
        let text = String::from_utf8(frames.concat().to_vec()).unwrap();
        let usages: Vec<serde_json::Value> = text
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str::<serde_json::Value>(data).unwrap()["usage"].clone())
            .filter(|usage| !usage.is_null() && usage["total_tokens"] != 0)
            .collect();
        assert_eq!(usages.len(), 1, "{text}");
        assert_eq!(usages[0]["total_tokens"], 3, "{text}");
    }
}
