//! The `loadgen` binary's load mode against the mock provider: requests
//! counted, latency and time to first byte measured, its own CPU time
//! reported, and refusals counted as errors with the first one named.

use kimi_gateway::mock::{self, Flavour, MockOptions};
use tokio::net::TcpListener;

async fn run_loadgen(url: &str, args: &[&str]) -> serde_json::Value {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    command
        .args(["--url", url, "--connections", "2", "--duration", "0.5"])
        .args(["--warmup", "0"])
        .args(args);
    // Off the runtime's threads: the mock answers on them meanwhile.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_mode_measures_plain_and_streamed_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = mock::spawn(listener, MockOptions::default()).await;
    let url = format!("{}/chat/completions", mock.base_url(Flavour::Moonshot));

    let plain = run_loadgen(&url, &["--api-key", "mock-key"]).await;
    let requests = plain["requests"].as_u64().unwrap();
    assert!(requests > 10, "{plain}");
    assert_eq!(plain["errors"], 0, "{plain}");
    assert_eq!(plain["reconnects"], 0, "{plain}");
    assert!(plain["latency_p99_ms"].as_f64().unwrap() > 0.0, "{plain}");
    assert!(plain["cpu_seconds"].as_f64().unwrap() > 0.0, "{plain}");
    // Every answer's body was read: the mock's completion is ~300 bytes.
    assert!(plain["bytes"].as_u64().unwrap() > 200 * requests, "{plain}");

    let streamed = run_loadgen(
        &url,
        &["--api-key", "mock-key", "--stream", "--mock", "chunks=10"],
    )
    .await;
    let requests = streamed["requests"].as_u64().unwrap();
    assert!(requests > 10, "{streamed}");
    assert_eq!(streamed["errors"], 0, "{streamed}");
    assert!(
        streamed["ttfb_p50_ms"].as_f64().unwrap() > 0.0,
        "{streamed}"
    );
    // Ten content events and the usage event, each ~200 bytes.
    assert!(
        streamed["bytes"].as_u64().unwrap() > 1500 * requests,
        "{streamed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_as_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = mock::spawn(listener, MockOptions::default()).await;
    let url = format!("{}/chat/completions", mock.base_url(Flavour::Moonshot));
    let refused = run_loadgen(&url, &["--api-key", "wrong-key"]).await;
    assert!(refused["requests"].as_u64().unwrap() > 0, "{refused}");
    assert_eq!(refused["errors"], refused["requests"], "{refused}");
    assert_eq!(refused["first_error"], "HTTP 401 Unauthorized", "{refused}");
    assert!(refused["latency_p99_ms"].is_null(), "{refused}");
}
