//! Keep-alive comments on silent streams, graceful drain, and hot reload of
//! the configuration under load.

use crate::helpers::*;
use futures_util::StreamExt;
use kimi_gateway::mock::Flavour;
use std::io::Write;
use std::time::Duration;

/// Reads the next chunk of a stream as text (within 10 s).
async fn next_text(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
) -> String {
    let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no data within 10 s")
        .expect("stream ended")
        .unwrap();
    String::from_utf8(chunk.to_vec()).unwrap()
}

#[tokio::test]
async fn silent_streams_get_keepalive_comments_between_events() {
    let app = spawn_app_with("[server]\nsse_keepalive_secs = 0.1\n", &[]).await;
    let response = app
        .chat(chat_body("kimi-k2.6", "[mock gate=k chunks=2]", true))
        .await;
    let mut stream = response.bytes_stream();
    let first = next_text(&mut stream).await;
    assert!(first.starts_with("data: "), "{first}");
    // The provider is silent (gated): comments keep the connection alive.
    assert_eq!(next_text(&mut stream).await, ": keep-alive\n");
    assert_eq!(next_text(&mut stream).await, ": keep-alive\n");
    app.mock.release("k", 100);
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
}

#[tokio::test]
async fn drain_finishes_streams_in_flight_then_ends_the_rest_with_an_error_event() {
    // Long enough for the finishing stream to be released and read whole
    // however loaded the machine.
    let mut app = spawn_app_with("[server]\ndrain_secs = 2\n", &[]).await;
    let finishing = app
        .chat(chat_body("kimi-k2.6", "[mock gate=finish chunks=2]", true))
        .await;
    let stuck = app
        .chat(chat_body("kimi-k2.6", "[mock gate=stuck chunks=2]", true))
        .await;
    let mut finishing = finishing.bytes_stream();
    let mut stuck = stuck.bytes_stream();
    next_text(&mut finishing).await;
    next_text(&mut stuck).await;

    let server = app.begin_shutdown();
    wait_until("the gateway drains", async || app.state.drain.is_draining()).await;
    // New connections are refused while draining.
    assert!(app.client.get(app.url("/healthz")).send().await.is_err());

    // A stream that can finish, finishes.
    app.mock.release("finish", 100);
    let mut text = String::new();
    while let Some(chunk) = finishing.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    // The other is ended at the deadline with one error event, no [DONE].
    let mut text = String::new();
    while let Some(chunk) = stuck.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(text.contains("gateway_shutdown"), "{text}");
    assert!(!text.contains("[DONE]"));
    let result = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(result.expect("server stopped").unwrap().is_ok());
}

/// A stream whose client stopped reading cannot be sent its error event
/// at the drain deadline; it is still counted as the gateway's cut
/// (`gateway_shutdown`, not the provider's `server_error`), not as the
/// client leaving.
#[tokio::test]
async fn a_stream_cut_at_the_deadline_while_its_client_stopped_reading_is_the_gateways_error() {
    use tokio::io::AsyncWriteExt;
    // The idle limit cuts the connection after the deadline, as the
    // process's exit would (the stream is dropped without its event).
    let config = "[server]\ndrain_secs = 0.3\nclient_idle_secs = 1\n";
    let mut app = spawn_app_with(config, &[]).await;
    // 16 MiB: more than the socket buffers between the mock and the
    // client hold, so the gateway's writes stop.
    let body = chat_body(
        "kimi-k2-turbo-preview",
        "[mock chunks=64 chunk_bytes=262144]",
        true,
    )
    .to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(app.addr).await.unwrap();
    client
        .write_all(crate::raw_client::chat_request(&body).as_bytes())
        .await
        .unwrap();
    wait_until("the stream is open", async || {
        app.state.metrics.open_streams.get() == 1
    })
    .await;
    let server = app.begin_shutdown();
    let result = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(result.expect("server stopped").unwrap().is_ok());
    wait_until("the stream is dropped", async || {
        app.state.metrics.open_streams.get() == 0
    })
    .await;
    let counted = |error_type: &str| {
        app.state
            .metrics
            .requests
            .with_label_values(&["kimi-k2-turbo-preview", "moonshot", "200", error_type])
            .get()
    };
    assert_eq!(counted("gateway_shutdown"), 1);
    assert_eq!(counted("server_error"), 0);
    assert_eq!(counted(""), 0);
    drop(client);
}

#[tokio::test]
async fn requests_not_answered_by_the_drain_deadline_get_a_503() {
    let mut app = spawn_app_with("[server]\ndrain_secs = 0.3\n", &[]).await;
    // A plain request and a stream, both waiting for a provider's head that
    // would come long after the deadline, and a stream whose head came but
    // not its first event.
    let mut waiting = Vec::new();
    for (stream, directive) in [
        (false, "[mock head_delay_ms=60000]"),
        (true, "[mock head_delay_ms=60000]"),
        (true, "[mock first_event_delay_ms=60000]"),
    ] {
        let body = chat_body("kimi-k2.6", directive, stream);
        let request = app.client.post(app.url("/v1/chat/completions")).json(&body);
        waiting.push(tokio::spawn(request.send()));
    }
    wait_until("the requests are in flight", async || {
        app.state.metrics.in_flight.get() == 3
    })
    .await;
    let server = app.begin_shutdown();
    for request in waiting {
        let response = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("an answer by the deadline")
            .unwrap()
            .expect("an HTTP answer");
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["connection"], "close");
        assert_eq!(response.headers()["x-should-retry"], "true");
        // The provider the request was waiting on, as any answer names it.
        let provider = response.headers()["x-gateway-provider"].to_str().unwrap();
        assert!(
            ["moonshot", "agentsflare"].contains(&provider),
            "{provider}"
        );
        assert_eq!(response.headers()["x-gateway-attempts"], "1");
        assert!(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
        let error = error_of(response).await;
        assert_eq!(error["type"], "server_error");
        assert_eq!(error["code"], "gateway_shutdown");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("not answered before the drain deadline"),
            "{message}"
        );
    }
    // Nothing is left for the server to wait for.
    let result = tokio::time::timeout(Duration::from_secs(1), server).await;
    assert!(result.expect("server stopped").unwrap().is_ok());
    assert_eq!(app.state.metrics.in_flight.get(), 0);
    // Counted as the drain's, not as the providers' failures (which their
    // error-ratio alerts count).
    let counted = |error_type: &str| -> u64 {
        ["moonshot", "agentsflare"]
            .iter()
            .map(|provider| {
                app.state
                    .metrics
                    .requests
                    .with_label_values(&["kimi-k2.6", provider, "503", error_type])
                    .get()
            })
            .sum()
    };
    assert_eq!(counted("gateway_shutdown"), 3);
    assert_eq!(counted("server_error"), 0);
}

#[tokio::test]
async fn a_drain_does_not_wait_for_a_head_sent_slowly() {
    let mut app = spawn_app_with("[server]\ndrain_secs = 30\n", &[]).await;
    let mut slow = crate::raw_client::Client::connect(app.addr).await;
    slow.send("POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n")
        .await;
    wait_until("the connection is open", async || {
        app.state.metrics.client_connections.get() == 1
    })
    .await;
    let server = app.begin_shutdown();
    // The head's rest has a grace to come, then the connection closes and
    // the drain is over, long before its deadline.
    slow.assert_closed().await;
    let result = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(result.expect("drained early").unwrap().is_ok());
}

#[tokio::test]
async fn a_connection_accepted_just_before_a_drain_has_time_to_send_its_request() {
    let mut app = spawn_app_with("[server]\ndrain_secs = 30\n", &[]).await;
    let mut fresh = crate::raw_client::Client::connect(app.addr).await;
    wait_until("the connection is open", async || {
        app.state.metrics.client_connections.get() == 1
    })
    .await;
    let server = app.begin_shutdown();
    // The listener closes in the same step that tells open connections to
    // close: once new connections are refused, this one has been told.
    wait_until("the listener is closed", async || {
        tokio::net::TcpStream::connect(app.addr).await.is_err()
    })
    .await;
    // The connection's task, woken by that, runs before this one goes on
    // (one thread): it has seen the close before the request comes.
    tokio::task::yield_now().await;
    // Its request, sent just after, is answered rather than met with a
    // closed connection: it had sent nothing yet, but was too new to be
    // taken for an idle keep-alive connection.
    fresh.send(crate::raw_client::HEALTHZ).await;
    let reply = fresh.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
    fresh.assert_closed().await;
    let result = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(result.expect("drained").unwrap().is_ok());
}

fn write_config(file: &std::path::Path, text: &str) {
    // Write a sibling and rename it over, as editors and ConfigMaps do.
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

const ALIAS_TO_MOONSHOT: &str =
    "[aliases.kimi]\ntargets = [{ provider = \"moonshot\", model = \"kimi-k2.6\" }]\n";
const ALIAS_TO_AGENTSFLARE: &str =
    "[aliases.kimi]\ntargets = [{ provider = \"agentsflare\", model = \"kimi-k2.6\" }]\n";

#[tokio::test]
async fn a_reload_changes_routes_under_load_without_failing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    write_config(&file, ALIAS_TO_MOONSHOT);
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    let before = app.state.config().fingerprint.clone();

    let load = (0..8).map(|_| {
        let app = &app;
        async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let response = app.chat(chat_body("kimi", "[mock chunks=3]", true)).await;
                statuses.push(response.status().as_u16());
                let events = sse_data(response).await;
                assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            }
            statuses
        }
    });
    let reload = async {
        // Swap routes while the load runs.
        assert!(app.mock.wait_requests(20).await);
        write_config(&file, ALIAS_TO_AGENTSFLARE);
        assert!(
            kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File)
                .await
        );
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all(load), reload);
    assert!(results.iter().flatten().all(|s| *s == 200), "{results:?}");
    assert!(app.mock.requests_for(Flavour::Moonshot).len() >= 20);
    assert!(
        !app.mock.requests_for(Flavour::Agentsflare).is_empty(),
        "new routes in use"
    );

    let ready = app.readyz().await;
    assert_eq!(ready["last_reload"]["result"], "success");
    assert_ne!(ready["config"], before.as_str());
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_old_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    write_config(&file, ALIAS_TO_MOONSHOT);
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    let before = app.state.config().fingerprint.clone();
    write_config(
        &file,
        "[aliases.kimi]\ntargets = [{ provider = \"nobody\", model = \"x\" }]\n",
    );
    assert!(
        !kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File)
            .await
    );
    assert_eq!(app.state.config().fingerprint, before);
    let ready = app.readyz().await;
    assert_eq!(ready["last_reload"]["result"], "failure");
    assert!(
        ready["last_reload"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("aliases.kimi.targets[0].provider")
    );
    assert_eq!(app.chat(chat_body("kimi", "hi", false)).await.status(), 200);
    let successful = async || {
        let metrics = scrape(&app).await;
        sample(&metrics, "kimi_gateway_config_last_reload_successful")
    };
    assert_eq!(successful().await, Some(0.0), "the file is not in use");
    write_config(&file, ALIAS_TO_AGENTSFLARE);
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    assert_eq!(successful().await, Some(1.0));
}

#[tokio::test]
async fn a_reload_keeps_the_circuit_state_of_unchanged_targets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let base =
        "[retry]\nmax_attempts = 1\n[breaker]\nconsecutive_failures = 1\ncooldown_secs = 60\n";
    write_config(&file, base);
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    app.chat(chat_body(
        "kimi-k2-turbo-preview",
        "[mock error=server]",
        false,
    ))
    .await;
    let open = app
        .chat(chat_body("kimi-k2-turbo-preview", "hi", false))
        .await;
    assert_eq!(open.status(), 503);

    write_config(&file, &format!("{base}{ALIAS_TO_AGENTSFLARE}"));
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    let still_open = app
        .chat(chat_body("kimi-k2-turbo-preview", "hi", false))
        .await;
    assert_eq!(
        still_open.status(),
        503,
        "breaker state survived the reload"
    );
    assert_eq!(app.chat(chat_body("kimi", "hi", false)).await.status(), 200);
}

/// A spare account key added to a provider (or one removed) leaves the
/// circuits of its other keys as they are: a failing account stays out.
#[tokio::test]
async fn a_key_added_to_a_provider_leaves_its_other_keys_circuits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let config = |keys: &str| {
        format!(
            "[retry]\nmax_attempts = 1\n[breaker]\nconsecutive_failures = 1\ncooldown_secs = 60\n\
             [providers.moonshot]\napi_key_envs = [{keys}]\n"
        )
    };
    write_config(&file, &config("\"MOONSHOT_API_KEY\""));
    let app = spawn_app_from(
        ConfigSource::File(&file),
        &[("SPARE_MOONSHOT_KEY", Some(PROVIDER_KEY))],
    )
    .await;
    let model = "moonshot/kimi-k2.6";
    app.chat(chat_body(model, "[mock error=server]", false))
        .await;
    let state_of = |ready: &serde_json::Value, label: &str| {
        ready["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == label)
            .map(|t| t["state"].as_str().unwrap().to_string())
    };
    assert_eq!(
        state_of(&app.readyz().await, model).as_deref(),
        Some("open")
    );

    write_config(
        &file,
        &config("\"MOONSHOT_API_KEY\", \"SPARE_MOONSHOT_KEY\""),
    );
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    let ready = app.readyz().await;
    assert_eq!(state_of(&ready, model).as_deref(), Some("open"), "{ready}");
    assert_eq!(
        state_of(&ready, "moonshot#2/kimi-k2.6").as_deref(),
        Some("closed"),
        "{ready}"
    );

    // Reordered: the first key's circuit follows it to its new place.
    write_config(
        &file,
        &config("\"SPARE_MOONSHOT_KEY\", \"MOONSHOT_API_KEY\""),
    );
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    let ready = app.readyz().await;
    assert_eq!(
        state_of(&ready, model).as_deref(),
        Some("closed"),
        "{ready}"
    );
    assert_eq!(
        state_of(&ready, "moonshot#2/kimi-k2.6").as_deref(),
        Some("open"),
        "{ready}"
    );
}

/// Tuning the breakers during an incident leaves the failing target out:
/// its open circuit goes on under the new settings, not closed afresh.
#[tokio::test]
async fn a_reload_that_changes_the_breaker_settings_keeps_open_circuits_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let breaker = |failures: u32| {
        format!(
            "[retry]\nmax_attempts = 1\n[breaker]\nconsecutive_failures = {failures}\ncooldown_secs = 60\n"
        )
    };
    write_config(&file, &breaker(1));
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    let model = "moonshot/kimi-k2.6";
    app.chat(chat_body(model, "[mock error=server]", false))
        .await;
    let open = app.chat(chat_body(model, "hi", false)).await;
    assert_eq!(error_of(open).await["code"], "circuit_open");

    write_config(&file, &breaker(3));
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    let still_open = app.chat(chat_body(model, "hi", false)).await;
    assert_eq!(error_of(still_open).await["code"], "circuit_open");
    let ready = app.readyz().await;
    assert!(ready.to_string().contains("\"open\""), "{ready}");
}

#[tokio::test]
async fn editing_the_config_file_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    write_config(&file, ALIAS_TO_MOONSHOT);
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    kimi_gateway::reload::spawn_triggers(app.state.clone());
    let before = app.state.config().fingerprint.clone();
    write_config(&file, ALIAS_TO_AGENTSFLARE);
    assert!(
        reloaded_within(&app, &before, Duration::from_secs(10)).await,
        "the file change was not picked up"
    );
    kimi_goes_to(&app, "agentsflare").await;
}

/// Asserts that the alias `kimi` is served by `provider` now.
async fn kimi_goes_to(app: &TestApp, provider: &str) {
    let response = app.chat(chat_body("kimi", "hi", false)).await;
    assert_eq!(response.headers()["x-gateway-provider"], provider);
}

/// Waits up to `within` for the gateway's configuration to change from
/// `before`; true if it did.
async fn reloaded_within(app: &TestApp, before: &str, within: Duration) -> bool {
    let wait = async {
        while app.state.config().fingerprint == before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(within, wait).await.is_ok()
}

/// A log file written beside the config every few milliseconds (a
/// gateway started with `> gw.log` in the config's directory) keeps the
/// directory's events coming; the reload still happens at once.
#[tokio::test]
async fn a_busy_file_beside_the_config_does_not_hold_off_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    write_config(&file, ALIAS_TO_MOONSHOT);
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    kimi_gateway::reload::spawn_triggers(app.state.clone());
    let log = dir.path().join("gw.log");
    let writing = tokio::spawn(async move {
        use std::io::Write;
        let mut log = std::fs::File::create(log).unwrap();
        loop {
            writeln!(log, "a line").unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let before = app.state.config().fingerprint.clone();
    write_config(&file, ALIAS_TO_AGENTSFLARE);
    // Under the 3 s the look-again period (2 s) and the wait for the
    // file to hold still (1 s) would take; the right path takes ~1.2 s.
    let reloaded = reloaded_within(&app, &before, Duration::from_millis(2900)).await;
    writing.abort();
    assert!(reloaded, "the change waited for the other file to go quiet");
    kimi_goes_to(&app, "agentsflare").await;
}

/// A file written in place in two parts, half a second apart (a slow
/// `cat` from a pipe): its first part is valid TOML that has lost a key's
/// `models` list, and taken it would let the key use every model. It is
/// loaded only once whole.
#[tokio::test]
async fn a_file_caught_part_way_through_a_slow_write_is_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let keyed = "[keys.team]\nsecret_env = \"TEAM_KEY\"\n";
    let models = "models = [\"kimi-k2.6\"]\n";
    write_config(&file, &format!("{keyed}{models}"));
    let app = spawn_app_from(ConfigSource::File(&file), &[("TEAM_KEY", Some("sk-team"))]).await;
    kimi_gateway::reload::spawn_triggers(app.state.clone());
    let reloads = || {
        app.state
            .metrics
            .reloads
            .with_label_values(&["success"])
            .get()
    };
    let before = app.state.config().fingerprint.clone();
    let mut slow = std::fs::File::create(&file).unwrap();
    slow.write_all(format!("# rewritten\n{keyed}").as_bytes())
        .unwrap();
    slow.sync_all().unwrap();
    // The slow writer's pause: what is under test, not a wait for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.write_all(models.as_bytes()).unwrap();
    slow.sync_all().unwrap();
    assert!(reloaded_within(&app, &before, Duration::from_secs(10)).await);
    assert_eq!(reloads(), 1, "one reload, of the whole file");
    let config = app.state.config();
    let team = config.keys.find(b"sk-team").expect("the key");
    assert!(team.may_use("kimi-k2.6"));
    assert!(!team.may_use("kimi-k2.5"), "the models list was kept");
}

/// The config's whole directory replaced (`mv conf conf.old; mv new
/// conf`): the watch on the old directory sees nothing of later edits, and
/// the file is still read again within the look-again period.
#[tokio::test]
async fn edits_after_the_config_directory_was_replaced_are_still_picked_up() {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let file = conf.join("gateway.toml");
    write_config(&file, ALIAS_TO_MOONSHOT);
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    kimi_gateway::reload::spawn_triggers(app.state.clone());
    let replacement = root.path().join("conf.new");
    std::fs::create_dir(&replacement).unwrap();
    write_config(&replacement.join("gateway.toml"), ALIAS_TO_AGENTSFLARE);
    let before = app.state.config().fingerprint.clone();
    std::fs::rename(&conf, root.path().join("conf.old")).unwrap();
    std::fs::rename(&replacement, &conf).unwrap();
    // The swap itself is seen (the old directory's events) and reloads.
    assert!(reloaded_within(&app, &before, Duration::from_secs(10)).await);
    kimi_goes_to(&app, "agentsflare").await;
    // An edit in the new directory raises no event the gateway watches.
    let before = app.state.config().fingerprint.clone();
    write_config(&file, ALIAS_TO_MOONSHOT);
    assert!(
        reloaded_within(&app, &before, Duration::from_secs(10)).await,
        "the edit was never picked up"
    );
    kimi_goes_to(&app, "moonshot").await;
}

/// How a Kubernetes ConfigMap volume updates a file: the file is a symlink
/// through `..data`, itself a symlink to a timestamped directory, and an
/// update points `..data` at a new directory with one rename. No event
/// names the file itself; the reload must still happen.
#[tokio::test]
#[cfg(unix)]
async fn a_configmap_style_symlink_swap_reloads_the_file() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let version = |name: &str, text: &str| {
        let versioned = dir.path().join(name);
        std::fs::create_dir(&versioned).unwrap();
        std::fs::write(versioned.join("gateway.toml"), text).unwrap();
    };
    version("..2026_01", ALIAS_TO_MOONSHOT);
    symlink("..2026_01", dir.path().join("..data")).unwrap();
    let file = dir.path().join("gateway.toml");
    symlink("..data/gateway.toml", &file).unwrap();
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    kimi_gateway::reload::spawn_triggers(app.state.clone());
    let before = app.state.config().fingerprint.clone();

    version("..2026_02", ALIAS_TO_AGENTSFLARE);
    symlink("..2026_02", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    assert!(
        reloaded_within(&app, &before, Duration::from_secs(10)).await,
        "the swap was not picked up"
    );
    kimi_goes_to(&app, "agentsflare").await;
}

/// A configuration file caught half-written (truncated, nothing in it yet)
/// is a valid configuration without keys; a reload does not take it when
/// the running one has keys, since it would open the gateway to anyone.
#[tokio::test]
async fn a_reload_never_opens_a_gateway_that_has_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let keyed = "[keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n";
    write_config(&file, keyed);
    let app = spawn_app_from(ConfigSource::File(&file), &[("TEAM_A_KEY", Some("sk-a"))]).await;
    write_config(&file, "");
    assert!(
        !kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File)
            .await
    );
    let ready = app.readyz().await;
    assert_eq!(ready["last_reload"]["result"], "failure");
    assert!(
        ready["last_reload"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("no client keys"),
        "{ready}"
    );
    let anonymous = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(anonymous.status(), 401, "still keyed");
}

/// A request pipelined behind a stream the drain lets finish is not served
/// (the stream's answer says `connection: close`), and the connection ends
/// cleanly: the client gets the whole stream, even the part still in the
/// gateway's send buffer when it closed, then the end. (Closing a socket
/// with unread bytes resets it, and a reset throws away what was not sent.)
#[tokio::test]
async fn a_request_pipelined_during_a_drain_does_not_cost_the_stream_its_end() {
    use crate::raw_client::{Client, chat_request, header_of};
    let mut app = spawn_app_with("[server]\ndrain_secs = 10\n", &[]).await;
    // A small receive buffer: most of the stream waits in the gateway's
    // send buffer until the client reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let mut client = Client {
        stream,
        read: Vec::new(),
    };
    // The provider's head comes seconds after the request, well after the
    // drain begins however slow the machine, so the answer's head is
    // written during the drain.
    let directive = "[mock head_delay_ms=3000 gate=pipelined chunks=8 chunk_bytes=100000]";
    let body = chat_body("kimi-k2.6", directive, true).to_string();
    client.send(chat_request(&body)).await;
    wait_until("the request is in flight", async || {
        app.state.metrics.in_flight.get() == 1
    })
    .await;
    let server = app.begin_shutdown();
    wait_until("the drain began", async || app.state.drain.is_draining()).await;
    let (status, head) = client.head().await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(header_of(&head, "connection"), Some("close"), "{head}");
    // Sent while the stream's answer is being written, more than the
    // gateway reads ahead: never served.
    let next = chat_body("kimi-k2.6", &"long prompt ".repeat(30_000), false).to_string();
    client.send(chat_request(&next)).await;
    app.mock.release("pipelined", 100);
    // The gateway is done with the connection before the client reads on.
    let result = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(result.expect("server stopped").unwrap().is_ok());
    let (events, _) = client.chunked_body().await;
    let events = String::from_utf8(events).unwrap();
    assert!(
        events.ends_with("data: [DONE]\n\n"),
        "{}",
        &events[events.len() - 200..]
    );
    client.assert_closed().await;
    assert_eq!(app.mock.requests_for(Flavour::Moonshot).len(), 1);
}

/// A request that comes behind an answer whose head went out before the
/// drain (so it said keep-alive) is not served once the drain has begun:
/// the connection closes after that answer, as an idle one does, and the
/// client retries the request elsewhere.
#[tokio::test]
async fn a_request_behind_an_answer_begun_before_a_drain_is_not_served() {
    use crate::raw_client::{Client, chat_request, header_of};
    let mut app = spawn_app_with("[server]\ndrain_secs = 10\n", &[]).await;
    let mut client = Client::connect(app.addr).await;
    let directive = "[mock gate=behind chunks=3]";
    let body = chat_body("kimi-k2.6", directive, true).to_string();
    client.send(chat_request(&body)).await;
    let (status, head) = client.head().await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(header_of(&head, "connection"), None, "{head}");
    // The next request is on its way before the drain begins.
    let next = chat_body("kimi-k2.6", "hi", false).to_string();
    client.send(chat_request(&next)).await;
    let server = app.begin_shutdown();
    wait_until("the drain began", async || app.state.drain.is_draining()).await;
    app.mock.release("behind", 100);
    let (events, _) = client.chunked_body().await;
    assert!(
        String::from_utf8(events)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );
    client.assert_closed().await;
    let result = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(result.expect("server stopped").unwrap().is_ok());
    assert_eq!(app.mock.requests_for(Flavour::Moonshot).len(), 1);
}

/// Waits (at most 10 s) for the last reload to have failed with a problem
/// that contains `problem`; `/readyz` then, as the operator sees it.
async fn failed_reload_names(app: &TestApp, problem: &str) -> serde_json::Value {
    let wait = async {
        loop {
            let ready = app.readyz().await;
            let named = ready["last_reload"]["problems"]
                .as_array()
                .is_some_and(|problems| {
                    problems
                        .iter()
                        .any(|p| p.as_str().is_some_and(|p| p.contains(problem)))
                });
            if named {
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no failed reload naming {problem:?}"))
}

/// A config file that goes from one unreadable state to another (a
/// directory put in its place, then a file over the size limit) is
/// reloaded each time, so the problem reported is the one it has now.
#[tokio::test]
async fn a_file_unreadable_in_another_way_is_reloaded_and_reported_anew() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    write_config(&file, ALIAS_TO_MOONSHOT);
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    kimi_gateway::reload::spawn_triggers(app.state.clone());
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    failed_reload_names(&app, "not a regular file").await;
    std::fs::remove_dir(&file).unwrap();
    // Sparse: over the limit without writing it.
    let large = std::fs::File::create(&file).unwrap();
    large.set_len(32 << 20).unwrap();
    let ready = failed_reload_names(&app, "larger than").await;
    assert_eq!(ready["last_reload"]["result"], "failure", "{ready}");
    kimi_goes_to(&app, "moonshot").await;
}

/// `server.metrics_listen` takes effect at the next restart, and so does
/// what it decides about `/metrics` on the main listener: a reload that adds
/// it leaves scrapes there served and uncounted (probes), not turned into
/// counted requests of a path that still answers 200.
#[tokio::test]
async fn a_reloaded_metrics_listen_leaves_scrapes_on_the_main_listener_as_probes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    write_config(&file, ALIAS_TO_MOONSHOT);
    let app = spawn_app_from(ConfigSource::File(&file), &[]).await;
    write_config(
        &file,
        &format!("{ALIAS_TO_MOONSHOT}\n[server]\nmetrics_listen = \"127.0.0.1:0\"\n"),
    );
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    assert!(app.state.config().server.metrics_listen.is_some());
    for _ in 0..3 {
        scrape(&app).await;
    }
    let text = scrape(&app).await;
    assert!(text.contains("kimi_gateway_build_info"));
    assert!(
        !text.contains(r#"kimi_gateway_requests_total{error_type="none",provider="none",route="none",status="200"}"#),
        "scrapes counted as requests:\n{text}"
    );
}
