//! A provider that quotes the key it was sent (in an error's message, its
//! request id, an error event): the key reaches neither the client (body,
//! header fields, stream events) nor the log, even at `debug`, nor the
//! metrics. The binary runs as shipped, its log read from its stdout.

use crate::cli::{ANY_PORT, config_file, gateway, http_get, start};
use kimi_gateway::mock::{self, MockOptions};
use std::io::BufRead;

const ECHOED: &str = "sk-echoed-0123456789abcdef";

/// One request's answer as the client saw it: status, header fields and
/// body, as text.
struct Seen {
    status: u16,
    fields: String,
    body: String,
}

async fn send(addr: &str, model: &str, directive: &str, stream: bool) -> Seen {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": directive}],
        }))
        .send()
        .await
        .unwrap();
    let fields = format!("{:?}", response.headers());
    Seen {
        status: response.status().as_u16(),
        fields,
        body: response.text().await.unwrap(),
    }
}

#[test]
fn a_key_the_provider_quotes_reaches_neither_the_client_nor_the_log() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = MockOptions {
            api_key: ECHOED.into(),
            ..Default::default()
        };
        mock::spawn(listener, options).await
    });
    let file = config_file(
        "[retry]\nmax_attempts = 1\n\
         [providers.moonshot]\napi_key_env = \"MOONSHOT_ECHO_KEY\"\n",
    );
    let mut command = gateway();
    command
        .env("RUST_LOG", "debug")
        .env("MOONSHOT_ECHO_KEY", ECHOED)
        .env("AIMLAPI_API_KEY", ECHOED)
        .env("MOONSHOT_BASE_URL", mock.base_url(mock::Flavour::Moonshot))
        .env("AIMLAPI_BASE_URL", mock.base_url(mock::Flavour::Aimlapi));
    let config = file.path().to_str().unwrap();
    let (mut child, mut stdout, addr) = start(command, &["--listen", ANY_PORT, "--config", config]);

    // Moonshot's error shape and request id header; AI/ML API's body
    // `requestId`.
    let mut requests = 0;
    for model in ["kimi-k2-turbo-preview", "moonshot/kimi-k2-preview"] {
        let cases = [
            ("[mock error=invalid_request echo_key]", false, 400),
            ("[mock echo_key]", false, 200),
            // Apart from the first event, or both arrive in one read and
            // the error is the stream's first.
            (
                "[mock echo_key error_event_after=2 chunk_delay_ms=20]",
                true,
                200,
            ),
            ("[mock echo_key error_event_after=0]", true, 429),
            // In `Retry-After`, after the number.
            ("[mock error=rate_limit retry_after=1 echo_key]", false, 429),
        ];
        for (directive, stream, status) in cases {
            let seen = runtime.block_on(send(&addr, model, directive, stream));
            requests += 1;
            let what = format!("{model} {directive}");
            assert_eq!(seen.status, status, "{what}: {}", seen.body);
            assert!(!seen.fields.contains(ECHOED), "{what}: {}", seen.fields);
            assert!(!seen.body.contains(ECHOED), "{what}: {}", seen.body);
            if status != 200 || stream {
                // The provider's message is kept, the key masked in it.
                assert!(seen.body.contains("(key ***)"), "{what}: {}", seen.body);
            }
            if directive.contains("retry_after") {
                // Not a number or a date: dropped, and the wait the
                // message states is sent instead.
                assert!(
                    seen.fields.contains(r#""retry-after": "1""#),
                    "{what}: {}",
                    seen.fields
                );
            }
        }
    }
    // The provider's request id quoting the key is passed on masked.
    let seen = runtime.block_on(send(
        &addr,
        "kimi-k2-turbo-preview",
        "[mock echo_key]",
        false,
    ));
    requests += 1;
    assert!(seen.fields.contains("-***"), "{}", seen.fields);

    let mut log = Vec::new();
    while log
        .iter()
        .filter(|l: &&String| l.contains("/v1/chat/completions"))
        .count()
        < requests
    {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "{log:?}");
        log.push(line);
    }
    let metrics = http_get(&addr, "/metrics");
    child.kill().unwrap();
    child.wait().unwrap();
    log.extend(stdout.lines().map(Result::unwrap));
    let log = log.concat();
    assert!(log.contains("(key ***)"), "{log}");
    assert!(!log.contains(ECHOED), "{log}");
    assert!(!metrics.contains(ECHOED), "{metrics}");
}
