//! After `[DONE]`: the stream ends there; what the provider still sends is
//! neither relayed nor read, and is read in the background within bounds.

use super::*;

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

/// A `[DONE]` with no blank line after it before the body ends: the
/// answer is whole, so the stream completes, the event ended in the
/// provider's own line-end style; in one read with the events before it,
/// in a read of its own, or split.
#[tokio::test]
async fn a_done_left_unended_at_the_bodys_end_completes_the_stream() {
    for (sent, relayed) in [
        ("data: [DONE]\n", "data: [DONE]\n\n"),
        ("data: [DONE]\r\n", "data: [DONE]\r\n\r\n"),
        ("data: [DONE]\r", "data: [DONE]\r\r"),
        ("data: [DONE]", "data: [DONE]\n\n"),
        ("id: 7\ndata:[DONE]", "id: 7\ndata:[DONE]\n\n"),
    ] {
        let whole = vec![Bytes::from([&event(0)[..], sent.as_bytes()].concat())];
        let alone = vec![event(0), Bytes::from(sent)];
        let split = vec![event(0), Bytes::from(&sent[..4]), Bytes::from(&sent[4..])];
        for chunks in [whole, alone, split] {
            let (frames, end) = relay_all(one_per_read(chunks)).await;
            let text = String::from_utf8(frames.concat().to_vec()).unwrap();
            assert_eq!(
                text,
                format!("{}{relayed}", std::str::from_utf8(&event(0)).unwrap())
            );
            assert!(
                matches!(end, Some(StreamEnd::Complete)),
                "{sent:?}: {end:?}"
            );
        }
    }
}

/// `[DONE]`'s event split across reads inside its line ends (between the
/// CR and LF of its data line, or before its blank line): passed as the
/// provider sent it, not ended by the relay in the meantime.
#[tokio::test]
async fn a_done_event_split_inside_its_line_ends_passes_as_sent() {
    for (first, second) in [
        ("data: [DONE]\r", "\n\r\n"),
        ("data: [DONE]\n", "\r"),
        ("data: [DONE]\r\n", "\r\n"),
        ("data: [DONE]\n", "\n"),
    ] {
        let chunks = vec![event(0), Bytes::from(first), Bytes::from(second)];
        let (frames, end) = relay_all(one_per_read(chunks)).await;
        assert_eq!(
            String::from_utf8(frames.concat().to_vec()).unwrap(),
            format!("{}{first}{second}", std::str::from_utf8(&event(0)).unwrap()),
        );
        assert!(
            matches!(end, Some(StreamEnd::Complete)),
            "{first:?}: {end:?}"
        );
    }
}

/// A provider that sends `data: [DONE]` and its line end, then keeps its
/// body open without the blank line: the client's stream ends a moment
/// later (`DONE_LINE_WAIT`), complete, not at the idle limit with an
/// error. With a bare CR as its line end too: once nothing more has come,
/// no LF is on its way to make it a CRLF, and the line has ended.
#[tokio::test]
async fn a_done_line_left_open_ends_the_stream_at_once() {
    let _serial = REST_READS_USED.lock().await;
    for (sent, relayed) in [
        (&b"data: [DONE]\n"[..], &b"data: [DONE]\n\n"[..]),
        (b"data: [DONE]\r", b"data: [DONE]\r\r"),
    ] {
        let (upstream, more, _told) = body_after_done(Bytes::from([&event(0)[..], sent].concat()));
        let (frames, end) = relay_all(upstream).await;
        assert_eq!(frames.concat(), [&event(0)[..], relayed].concat());
        assert!(matches!(end, Some(StreamEnd::Complete)), "{end:?}");
        drop(more);
    }
}

/// The drain's deadline or the idle limit passing while a `[DONE]` line
/// waits for the rest of its event ends the stream there, complete: the
/// answer is whole.
#[tokio::test]
async fn a_done_line_waiting_for_its_end_completes_at_the_drain_or_idle_limit() {
    let _serial = REST_READS_USED.lock().await;
    for cut in ["drain", "idle"] {
        let (upstream, more, _told) = body_after_done(event(0));
        let mut settings = settings();
        let shutdown = settings.shutdown.clone();
        if cut == "idle" {
            settings.idle = Duration::from_millis(30);
        }
        let stats = Arc::new(StreamStats::new(Instant::now()));
        let mut relay = SseRelay::start(upstream, settings, stats.clone())
            .await
            .unwrap();
        assert_eq!(relay.next().await.unwrap().unwrap(), event(0));
        more.send(Bytes::from_static(b"data: [DONE]\n")).unwrap();
        if cut == "drain" {
            // Once the relay has read the line and waits on it.
            tokio::task::yield_now().await;
            shutdown.cancel();
        }
        let rest = rest_of(relay).await;
        assert_eq!(rest.concat(), b"data: [DONE]\n\n"[..], "{cut}");
        assert!(
            matches!(stats.end(), Some(StreamEnd::Complete)),
            "{cut}: {:?}",
            stats.end()
        );
        drop(more);
    }
}

/// An unended event that only mentions `[DONE]` is no answer's end.
#[tokio::test]
async fn an_unended_event_that_is_not_done_still_ends_with_an_error() {
    let (frames, end) = relay_all(one_per_read(vec![
        event(0),
        Bytes::from_static(b"data: {\"x\":\"[DONE]\"}\n"),
    ]))
    .await;
    assert_eq!(frames[0], event(0));
    let last = std::str::from_utf8(frames.last().unwrap()).unwrap();
    assert!(
        last.contains("closed the stream before it was complete"),
        "{last}"
    );
    assert!(matches!(end, Some(StreamEnd::Failed(_))), "{end:?}");
}
