//! The gateway out of descriptors: a provider connection it cannot open
//! is its own failure (503 `gateway_out_of_resources`), not the provider's,
//! so the provider's circuit stays closed and the next request, once
//! descriptors are free, is served.

use crate::cli::{ANY_PORT, start};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;

/// The open-file limit the gateway runs under (soft and hard).
const LIMIT: usize = 48;

/// One request on `stream`, its answer's status and body (the gateway's
/// answers here all carry `Content-Length`).
fn exchange(stream: &mut BufReader<TcpStream>, request: &str) -> (u16, String) {
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut status_line = String::new();
    stream.read_line(&mut status_line).unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

fn chat_request() -> String {
    let body = r#"{"model":"kimi-k2-turbo-preview","messages":[{"role":"user","content":"hi"}]}"#;
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The gateway binary, started by a shell that first runs `ulimit`, and
/// without `GLIBC_TUNABLES`, as it starts in production.
fn gateway_under(ulimit: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(r#"{ulimit} && exec "$0" "$@""#))
        .arg(env!("CARGO_BIN_EXE_kimi-gateway"))
        .env_remove(kimi_gateway::malloc_tuning::VARIABLE);
    command
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The descriptors the gateway holds, or `None` while one of them is a file
/// it reads for a moment (its config file in `dir`, `/proc/self/statm`):
/// that one is closed again and frees a place in the table.
fn lasting_descriptors(pid: u32, dir: &std::path::Path) -> Option<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        // Gone between the listing and now: it was a passing one.
        let target = std::fs::read_link(entry.unwrap().path()).ok()?;
        if target.starts_with(dir) || target.starts_with("/proc") {
            return None;
        }
        count += 1;
    }
    Some(count)
}

/// Opens idle connections to `addr` until the gateway (`pid`, its config
/// file in `dir`) holds every descriptor its limit allows: full of
/// connections, not of a file being read (whose descriptor would be free
/// again when the test needs it full). They stay open while kept.
fn fill_with_idle_connections(addr: &str, pid: u32, dir: &std::path::Path) -> Vec<TcpStream> {
    let idle: Vec<TcpStream> = (0..LIMIT)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let dir = dir.canonicalize().unwrap();
    while lasting_descriptors(pid, &dir).is_none_or(|open| open < LIMIT) {
        assert!(
            std::time::Instant::now() < deadline,
            "the table never filled"
        );
        // Not a spin: the gateway needs this machine's other core.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    idle
}

/// A config file with `text` in a directory of its own: the gateway reads
/// its config file when anything in the directory changes, and a read of
/// it (the other tests write files in the shared temporary directory) is a
/// descriptor that comes and goes while the table is meant to be full.
fn config_alone(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn running_out_of_descriptors_is_the_gateways_failure_not_the_providers() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(crate::cli::mock_for_start());
    let (dir, path) = config_alone(
        // No connection cap short of the limit: idle connections must be
        // able to take every descriptor.
        "[server]\nmax_connections = 1000\n[retry]\nmax_attempts = 1\n[breaker]\nconsecutive_failures = 1\n",
    );
    // `ulimit -n` sets the soft and the hard limit: nothing to raise.
    let mut command = gateway_under(&format!("ulimit -n {LIMIT}"));
    command.env(
        "MOONSHOT_BASE_URL",
        mock.base_url(kimi_gateway::mock::Flavour::Moonshot),
    );
    let config = path.to_str().unwrap();
    let (mut child, mut stdout, addr) = start(command, &["--listen", ANY_PORT, "--config", config]);
    let pid = child.id();
    // A cap past what the descriptors allow is warned about.
    let warning = crate::cli::wait_for_line(&mut stdout, "server.max_connections is more");
    assert!(warning.contains("\"fits\":16"), "{warning}");

    // A client connected (and answered) before the table fills up.
    let mut client = BufReader::new(TcpStream::connect(&addr).unwrap());
    let (status, _) = exchange(&mut client, "GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_eq!(status, 200);
    let idle = fill_with_idle_connections(&addr, pid, dir.path());

    let (status, body) = exchange(&mut client, &chat_request());
    assert_eq!(status, 503, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "gateway_out_of_resources", "{body}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Too many open files"),
        "{body}"
    );

    // Descriptors free again: the provider's circuit is still closed.
    drop(idle);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while open_descriptors(pid) >= LIMIT - 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle ones never closed"
        );
        // Not a spin: the gateway needs this machine's other core.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (status, body) = exchange(&mut client, &chat_request());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Started with a soft open-file limit under the hard one, the gateway
/// raises it to the hard one.
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let command = gateway_under("ulimit -S -n 100");
    let (mut child, _stdout, _addr) = start(command, &["--listen", ANY_PORT]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let values: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_ne!(values[0], "100", "{open_files}");
    assert_eq!(values[0], values[1], "{open_files}");
}

/// Without `server.max_connections`, client connections are capped at
/// half the open-file limit less a reserve: each may need a provider
/// connection too, and idle ones must not take every descriptor.
#[test]
fn the_default_connection_cap_follows_the_open_file_limit() {
    let command = gateway_under("ulimit -n 300");
    let (mut child, _stdout, addr) = start(command, &["--listen", ANY_PORT]);
    let metrics = crate::cli::http_get(&addr, "/metrics");
    child.kill().unwrap();
    child.wait().unwrap();
    // (300 - 64 reserved) / 2
    assert!(
        metrics.contains("\nkimi_gateway_client_connections_max 118\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nkimi_gateway_client_connections 1\n"),
        "the scrape's own connection: {metrics}"
    );
}

/// `n` requests at once, each on its own connection of `clients`, with
/// `model` and a provider that takes 300 ms to answer (so each needs a
/// provider connection of its own): their statuses and bodies.
fn all_at_once(clients: &mut [BufReader<TcpStream>], model: &str) -> Vec<(u16, String)> {
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi [mock head_delay_ms=300]"}}]}}"#
    );
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::thread::scope(|scope| {
        let answers: Vec<_> = clients
            .iter_mut()
            .map(|client| scope.spawn(|| exchange(client, &request)))
            .collect();
        answers.into_iter().map(|a| a.join().unwrap()).collect()
    })
}

/// Traffic that moves from one provider to another: the first provider's
/// idle connections would hold the descriptors the second needs, so they
/// are closed when the table is full, and every request is served. So are
/// they for a client to be accepted.
#[test]
fn idle_provider_connections_give_way_when_descriptors_run_out() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(crate::cli::mock_for_start());
    // A cap above what the descriptors allow, for the accepts below.
    let (_dir, path) = config_alone("[retry]\nmax_attempts = 1\n[server]\nmax_connections = 40\n");
    let mut command = gateway_under(&format!("ulimit -n {LIMIT}"));
    crate::cli::to_mock(&mut command, &mock);
    let config = path.to_str().unwrap();
    let (mut child, mut stdout, addr) = start(command, &["--listen", ANY_PORT, "--config", config]);
    // One descriptor each, and one for a provider connection each, but
    // not for two.
    let mut clients: Vec<_> = (0..15)
        .map(|_| BufReader::new(TcpStream::connect(&addr).unwrap()))
        .collect();
    for (status, body) in all_at_once(&mut clients, "kimi-k2-turbo-preview") {
        assert_eq!(status, 200, "{body}");
    }
    // Moonshot's fifteen connections are idle now; Agentsflare needs as many.
    for (status, body) in all_at_once(&mut clients, "kimi-chat") {
        assert_eq!(status, 200, "{body}");
    }
    let line = crate::cli::wait_for_line(&mut stdout, "closed the idle provider connections");
    assert!(line.contains("to open one"), "{line}");
    // Agentsflare's fifteen are idle now, and ten more clients come.
    for _ in 0..10 {
        let stream = TcpStream::connect(&addr).unwrap();
        // Not accepted, the client would wait for the idle ones' 90 s.
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut client = BufReader::new(stream);
        let (status, _) = exchange(&mut client, "GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n");
        assert_eq!(status, 200);
        clients.push(client);
    }
    let line = crate::cli::wait_for_line(&mut stdout, "to accept a client");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains("\"closed\":"), "{line}");
}

/// The metrics listener out of descriptors behaves as the main one: it
/// closes idle provider connections, and otherwise logs one line and waits
/// a second before accepting again (it retried every 0.1 s, a warning
/// each time, for as long as the table stayed full).
#[test]
fn the_metrics_listener_out_of_descriptors_logs_once_a_second() {
    let (dir, path) =
        config_alone("[server]\nmax_connections = 1000\nmetrics_listen = \"127.0.0.1:0\"\n");
    let (child, mut stdout) = crate::cli::spawn(
        gateway_under(&format!("ulimit -n {LIMIT}")),
        &["--listen", ANY_PORT, "--config", path.to_str().unwrap()],
    );
    let pid = child.id();
    let metrics_line = crate::cli::wait_for_line(&mut stdout, "metrics on a separate listener");
    let metrics_line: serde_json::Value = serde_json::from_str(&metrics_line).unwrap();
    let metrics_addr = metrics_line["listen"].as_str().unwrap().to_string();
    let addr = crate::cli::listen_address(&crate::cli::wait_for_line(&mut stdout, "listening"));
    // Idle connections to the main listener take every descriptor.
    let _idle = fill_with_idle_connections(&addr, pid, dir.path());
    // A scraper waits in the metrics listener's backlog, which it cannot
    // accept from.
    let _scraper = TcpStream::connect(&metrics_addr).unwrap();
    let failed = "\"listener\":\"metrics\"";
    // Read as they are written (the log writer flushes within 20 ms).
    let arrivals: Vec<std::time::Instant> = (0..2)
        .map(|_| {
            let line = crate::cli::wait_for_line(&mut stdout, failed);
            let line: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(line["level"], "ERROR", "{line}");
            std::time::Instant::now()
        })
        .collect();
    drop(child);
    let apart = arrivals[1] - arrivals[0];
    assert!(
        apart >= std::time::Duration::from_millis(800),
        "{apart:?} apart"
    );
}
