//! The `kimi-gateway` binary: `--check` reports every problem with its key
//! path at once, and the binary serves on the address it is given.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kimi-gateway"));
    command.env_remove(kimi_gateway::malloc_tuning::VARIABLE);
    for var in ["MOONSHOT", "AIMLAPI", "AGENTSFLARE"] {
        command.env_remove(format!("{var}_API_KEY"));
        command.env_remove(format!("{var}_BASE_URL"));
    }
    command
}

pub(crate) fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn check_prints_every_problem_with_its_path_and_fails() {
    let file = config_file(
        r#"
        [server]
        listen = "not-an-address"
        [providers.moonshot]
        base_url = "ftp://example.com"
        [providers.moonshot.headers]
        User-Agent = "mine"
        [providers.extra]
        models = ["m1"]
        [aliases.kimi]
        targets = [{ provider = "nobody", model = "kimi-k2.6" }, { provider = "agentsflare", model = "kimi-k2.6", weight = 0 }]
        [aliases.split]
        targets = [{ provider = "moonshot", model = "kimi-k2.6", weight = 3 }, { provider = "agentsflare", model = "kimi-k2.6", weight = 1 }]
        "#,
    );
    let output = check(file.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for path in [
        "server.listen",
        "providers.moonshot.base_url",
        "providers.extra.base_url",
        "providers.extra.api_key_env",
        "aliases.kimi.targets[0].provider",
        "aliases.kimi.targets[1].weight",
        "aliases.split.targets[0].weight: has no effect",
        "providers.moonshot.headers.User-Agent",
    ] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }
}

/// A key pasted where a variable's name belongs is refused and never
/// printed: it would otherwise be shown as a variable "that is not set"
/// by `--check`, the log, `/readyz` and clients' errors.
#[test]
fn check_refuses_a_secret_given_as_a_variable_name_without_printing_it() {
    let secret = "sk-live-4f9a2c7e1b";
    let file = config_file(&format!(
        r#"
        [providers.moonshot]
        api_key_env = "{secret}"
        base_url_env = "https://{secret}@example.com/v1"
        [limits]
        backend = "redis"
        redis_url_env = "redis://:{secret}@cache:6379"
        [keys.team]
        secret_env = "{secret}"
        "#
    ));
    let output = check(file.path());
    assert_eq!(output.status.code(), Some(2));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for path in [
        "providers.moonshot.api_key_env: is not an environment variable name",
        "providers.moonshot.base_url_env: is not an environment variable name",
        "limits.redis_url_env: is not an environment variable name",
        "keys.team.secret_env: is not an environment variable name",
    ] {
        assert!(printed.contains(path), "{path} missing from:\n{printed}");
    }
    assert!(!printed.contains(secret), "{printed}");
}

/// The address `--listen` or `KIMI_GATEWAY_LISTEN` puts in place of
/// `server.listen` is checked against `server.metrics_listen` as the file's
/// is: refused by `--check` and at start, before anything binds.
#[test]
fn a_listen_override_on_the_metrics_port_is_refused() {
    let file = config_file("[server]\nmetrics_listen = \"127.0.0.1:19999\"\n");
    let by_flag = gateway()
        .args(["--check", "--listen", "127.0.0.1:19999", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    let by_env = gateway()
        .args(["--config"])
        .arg(file.path())
        .env("KIMI_GATEWAY_LISTEN", "0.0.0.0:19999")
        .env("MOONSHOT_API_KEY", "k")
        .output()
        .unwrap();
    for output in [by_flag, by_env] {
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("server.metrics_listen: 127.0.0.1:19999 takes the port of --listen"),
            "{stderr}"
        );
    }
    // Another port is fine.
    let output = gateway()
        .args(["--check", "--listen", "127.0.0.1:19998", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// A value of the wrong type hides nothing: the section's other values
/// still get their checks, and no check reports the unreadable value again
/// (here as a provider with no models, or an alias naming an unknown one).
#[test]
fn check_reports_the_problems_beside_a_wrong_typed_value() {
    let file = config_file(
        r#"
        [server]
        max_body_bytes = 0
        client_idle_secs = "x"
        metrics_listen = "nope"
        [providers.newp]
        base_url = "http://127.0.0.1:1/v1"
        api_key_env = "NEWP_KEY"
        models = "m1"
        [aliases.x]
        targets = [{ provider = "newp", model = "m1" }]
        "#,
    );
    let output = check(file.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut paths: Vec<&str> = stderr
        .lines()
        .skip(1)
        .filter_map(|line| line.split(": ").next())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "providers.newp.models",
            "server.client_idle_secs",
            "server.max_body_bytes",
            "server.metrics_listen",
        ],
        "{stderr}"
    );
}

#[test]
fn check_accepts_the_example_config() {
    let output = check(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/kimi-gateway.example.toml"
    )));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration OK"));
}

/// `--check` passes a file under which nothing can be served, but says so:
/// each provider left without a key, and that no chat request would work.
#[test]
fn check_notes_a_configuration_that_serves_nothing() {
    let file = config_file("");
    let output = check(file.path());
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "note: provider moonshot is not served: MOONSHOT_API_KEY is not set (or blank)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "note: no provider has an API key: every chat request gets 503 provider_not_configured"
        ),
        "{stdout}"
    );
    // Routable counts what a provider with a key serves: none here.
    assert!(
        stdout.contains("configuration OK: 3 provider(s), 0 usable, 0 routable"),
        "{stdout}"
    );
    // Every provider disabled: no provider at all, and one note that says
    // what a request gets (404: no model is served), not two.
    let disabled = config_file(
        "[providers.moonshot]\nenabled = false\n[providers.aimlapi]\nenabled = false\n\
         [providers.agentsflare]\nenabled = false\n",
    );
    let output = check(disabled.path());
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("note: no provider is configured (every one is disabled): every chat request gets 404 model_not_found"),
        "{stdout}"
    );
    assert!(!stdout.contains("no model is routable"), "{stdout}");
    assert!(!stdout.contains("no provider has an API key"), "{stdout}");
    let keyed = gateway()
        .env("MOONSHOT_API_KEY", "k")
        .args(["--check", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&keyed.stdout);
    assert!(
        stdout.contains("configuration OK: 3 provider(s), 1 usable"),
        "{stdout}"
    );
    assert!(!stdout.contains("no provider has an API key"), "{stdout}");
    assert!(!stdout.contains("no model is routable"), "{stdout}");
    // Every catalogue emptied: nothing routes.
    let emptied = config_file(
        "[providers.moonshot]\nmodels = []\n[providers.aimlapi]\nmodels = []\n\
         [providers.agentsflare]\nmodels = []\n",
    );
    let output = gateway()
        .env("MOONSHOT_API_KEY", "k")
        .args(["--check", "--config"])
        .arg(emptied.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("note: no model is routable (every provider's models list is empty): every chat request gets 404 model_not_found"),
        "{stdout}"
    );
    // A provider served with fewer keys than it names says which are unset.
    let two_keys = config_file(
        "[providers.moonshot]\napi_key_envs = [\"MOONSHOT_API_KEY\", \"MOONSHOT_API_KEY_2\"]\n",
    );
    let short = gateway()
        .env("MOONSHOT_API_KEY", "k")
        .env_remove("MOONSHOT_API_KEY_2")
        .args(["--check", "--config"])
        .arg(two_keys.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&short.stdout);
    assert!(
        stdout.contains(
            "note: provider moonshot is served with 1 of its 2 keys (not set or blank: MOONSHOT_API_KEY_2)"
        ),
        "{stdout}"
    );
}

/// A variable the configuration reads that holds bytes that are not UTF-8
/// is refused by name, never taken for unset: an unreadable base URL
/// would otherwise send the provider's traffic, with its key, to the
/// preset's public address; an unreadable key would be "not set".
#[cfg(unix)]
#[test]
fn a_variable_that_is_not_utf8_is_refused_not_taken_for_unset() {
    use std::os::unix::ffi::OsStrExt;
    let not_text = std::ffi::OsStr::from_bytes(b"http://127.0.0.1:9/moonshot/v1\xff");
    let file = config_file("[keys.team]\nsecret_env = \"TEAM_KEY\"\n");
    for var in ["MOONSHOT_BASE_URL", "MOONSHOT_API_KEY", "TEAM_KEY"] {
        let output = gateway()
            .env("MOONSHOT_API_KEY", "k")
            .env("TEAM_KEY", "team-secret")
            .env(var, not_text)
            .args(["--check", "--config"])
            .arg(file.path())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{var}: set, but not valid UTF-8")),
            "{var}: {stderr}"
        );
        assert!(!stderr.contains("not set"), "{var}: {stderr}");
    }
}

/// A day budget no larger than its scope's minute limit leaves the minute
/// limit idle: valid, but noted by `--check` and in the start-up log.
#[test]
fn a_minute_limit_that_can_never_refuse_is_noted() {
    let file = config_file(
        "[keys.team]\nsecret_env = \"TEAM_KEY\"\n\
         limits = { requests_per_minute = 600, requests_per_day = 500 }\n",
    );
    let says = "keys.team.limits.requests_per_minute: 600 never refuses a request: \
                requests_per_day = 500 allows no more in a whole day";
    let output = gateway()
        .env("MOONSHOT_API_KEY", "k")
        .env("TEAM_KEY", "sk-team")
        .arg("--check")
        .arg("--config")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("note: {says}")), "{stdout}");
    // The note comes before the "listening" line `start` waits for.
    let mut child = gateway()
        .env("MOONSHOT_API_KEY", "k")
        .env("TEAM_KEY", "sk-team")
        .args(["--listen", ANY_PORT, "--config"])
        .arg(file.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let _gateway = Running(child);
    let logged = wait_for_line(&mut stdout, "never refuses");
    assert!(logged.contains(says), "{logged}");
}

/// Keys set only for a provider whose catalogue is emptied: the gateway
/// can serve nothing, which `--check` says (exit 0: a note, not a
/// problem), as it says what is configured but served by no keyed
/// provider, and a client key that is the provider's own key.
#[test]
fn what_serves_nothing_and_a_shared_key_are_noted() {
    let file = config_file(
        "[providers.moonshot]\nmodels = []\n\
         [keys.team]\nsecret_env = \"TEAM_KEY\"\nmodels = [\"kimi-chat\"]\n",
    );
    let output = gateway()
        .env("MOONSHOT_API_KEY", "sk-shared")
        .env("TEAM_KEY", "sk-shared")
        .env_remove("AIMLAPI_API_KEY")
        .env_remove("AGENTSFLARE_API_KEY")
        .args(["--check", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    for says in [
        "note: no provider with an API key serves a model (the models lists of the providers \
         with a key are empty): every chat request gets 503 provider_not_configured",
        "note: providers.moonshot.models: lists no model",
        "note: keys.team.models: \"kimi-chat\": no provider has a key (set AGENTSFLARE_API_KEY)",
        "note: keys.team: its secret is provider moonshot's key (MOONSHOT_API_KEY)",
    ] {
        assert!(stdout.contains(says), "{says}\n{stdout}");
    }
    assert!(!stdout.contains("sk-shared"), "{stdout}");
}

#[test]
fn a_flag_variable_set_but_empty_is_refused_by_its_name() {
    for (variable, other) in [
        ("KIMI_GATEWAY_CONFIG", "KIMI_GATEWAY_LISTEN"),
        ("KIMI_GATEWAY_LISTEN", "KIMI_GATEWAY_CONFIG"),
    ] {
        let output = gateway()
            .env("MOONSHOT_API_KEY", "k")
            .env_remove(other)
            .env(variable, "")
            .arg("--check")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{variable} is set but empty")),
            "{variable}: {stderr}"
        );
    }
    // The flag given, clap does not read the variable: nothing to refuse.
    let file = config_file("");
    let output = gateway()
        .env("MOONSHOT_API_KEY", "k")
        .env("KIMI_GATEWAY_CONFIG", "")
        .env_remove("KIMI_GATEWAY_LISTEN")
        .arg("--check")
        .arg(format!("--config={}", file.path().display()))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let help = gateway()
        .env("KIMI_GATEWAY_CONFIG", "")
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");
}

#[test]
fn the_binary_serves_on_the_given_address() {
    let (mut child, _stdout, addr) = start_gateway(&["--listen", ANY_PORT]);
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[test]
fn healthcheck_exits_zero_for_a_healthy_gateway_and_non_zero_otherwise() {
    let addr = free_addr();
    let down = gateway()
        .args(["healthcheck", "--addr", &addr])
        .output()
        .unwrap();
    assert!(!down.status.success(), "nothing listens yet");
    // A timeout no duration can hold is clamped, not a panic.
    let forever = gateway()
        .args(["healthcheck", "--addr", &addr, "--timeout", "inf"])
        .output()
        .unwrap();
    assert_eq!(forever.status.code(), Some(1), "{forever:?}");

    let (mut child, _stdout, addr) = start_gateway(&["--listen", ANY_PORT]);
    let port = addr.rsplit(':').next().unwrap().to_string();
    // `--listen` with a wildcard address is probed on loopback.
    let up = gateway()
        .args(["--listen", &format!("0.0.0.0:{port}"), "healthcheck"])
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_probed_up(&up);
}

/// The healthcheck found the gateway up.
fn assert_probed_up(probe: &std::process::Output) {
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

/// Without `--addr` or `--listen`, the probe goes where the configuration
/// file (`KIMI_GATEWAY_CONFIG`, as a systemd unit would set it) says the
/// gateway listens.
#[test]
fn healthcheck_probes_the_address_the_config_file_gives() {
    let (mut child, _stdout, addr) = start_gateway(&["--listen", ANY_PORT]);
    let port = addr.rsplit(':').next().unwrap();
    let file = config_file(&format!("[server]\nlisten = \"0.0.0.0:{port}\"\n"));
    let up = gateway()
        .env("KIMI_GATEWAY_CONFIG", file.path())
        .env_remove("KIMI_GATEWAY_LISTEN")
        .arg("healthcheck")
        .output()
        .unwrap();
    // The file given after the subcommand, as its help reads.
    let given_after = gateway()
        .env_remove("KIMI_GATEWAY_CONFIG")
        .env_remove("KIMI_GATEWAY_LISTEN")
        .arg("healthcheck")
        .arg("--config")
        .arg(file.path())
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_probed_up(&up);
    assert_probed_up(&given_after);
}

/// `--check` piped into a reader that has gone (`| head -1`) exits with
/// its verdict, not a panic on the closed pipe, for a valid file and an
/// invalid one alike.
#[test]
fn check_into_a_closed_pipe_exits_with_its_verdict() {
    let invalid = config_file("[server]\nlisten = 8080\n");
    for (args, code) in [
        (vec!["--check"], 0),
        (
            vec!["--check", "--config", invalid.path().to_str().unwrap()],
            2,
        ),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let writer_too = writer.try_clone().unwrap();
        let status = gateway()
            .args(&args)
            .env("MOONSHOT_API_KEY", "k")
            .stdout(writer)
            .stderr(writer_too)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}

/// On a gateway with keys, a request to a public path (no key checked
/// there) is logged with an empty `key`, not `anonymous`, which would say
/// the gateway runs open.
#[test]
fn a_public_path_on_a_keyed_gateway_logs_no_key_name() {
    let file = config_file("[keys.team]\nsecret_env = \"TEAM_KEY\"\n");
    let mut command = gateway();
    command.env("TEAM_KEY", "sk-team");
    let (mut child, mut stdout, addr) = start(
        command,
        &[
            "--listen",
            ANY_PORT,
            "--config",
            file.path().to_str().unwrap(),
        ],
    );
    for key in ["", "sk-team"] {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "POST /healthz HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {key}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        let line = wait_for_line(&mut stdout, "\"path\":\"/healthz\"");
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(line["key"], "", "{line}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A metrics listener on port 0 logs the port the system gave it, where
/// its probes answer.
#[test]
fn the_metrics_listener_logs_the_port_it_got() {
    let file = config_file("[server]\nmetrics_listen = \"127.0.0.1:0\"\n");
    let mut child = gateway()
        .args([
            "--listen",
            ANY_PORT,
            "--config",
            file.path().to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let _child = Running(child);
    let line = wait_for_line(&mut stdout, "metrics on a separate listener");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr: std::net::SocketAddr = line["listen"].as_str().unwrap().parse().unwrap();
    assert_ne!(addr.port(), 0, "{line}");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A gateway that runs open logs the callers it refuses for their
/// `Origin` as `anonymous`, as it does the callers it serves.
#[test]
fn an_open_gateway_logs_a_refused_browser_request_as_anonymous() {
    let (mut child, mut stdout, addr) = start_gateway(&["--listen", ANY_PORT]);
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\norigin: https://a.page\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let line = wait_for_line(&mut stdout, "\"status\":403");
    child.kill().unwrap();
    child.wait().unwrap();
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["key"], "anonymous", "{line}");
}

/// A key sent where a name goes (in the path, as the model) is not
/// logged: the access line and the error it quotes show `***`.
#[test]
fn a_key_sent_as_a_name_is_not_logged() {
    let file = config_file("[keys.team]\nsecret_env = \"TEAM_KEY\"\n");
    let mut command = gateway();
    command.env("TEAM_KEY", "sk-team-secret-1");
    command.env("AIMLAPI_API_KEY", "sk-aiml-secret-2");
    let (mut child, mut stdout, addr) = start(
        command,
        &[
            "--listen",
            ANY_PORT,
            "--config",
            file.path().to_str().unwrap(),
        ],
    );
    let send = |request: &str| {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        answer
    };
    let answer =
        send("GET /v1/models/sk-team-secret-1 HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let line = wait_for_line(&mut stdout, "\"status\":401");
    assert!(!line.contains("sk-team-secret-1"), "{line}");
    assert!(line.contains("/v1/models/***"), "{line}");

    // Percent-encoded in the path, which the model's lookup decodes (and
    // its error quotes decoded).
    let answer = send(
        "GET /v1/models/sk-team-secret%2D1 HTTP/1.1\r\nHost: x\r\n\
         authorization: Bearer sk-team-secret-1\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(!answer.contains("sk-team-secret"), "{answer}");
    let line = wait_for_line(&mut stdout, "\"status\":404");
    assert!(!line.contains("sk-team-secret"), "{line}");
    assert!(line.contains("/v1/models/***"), "{line}");

    // The answer's error quotes the model as the log does; a NUL after
    // the key does not make it another name.
    for model in [
        "sk-team-secret-1",
        "moonshot/sk-team-secret-1",
        "sk-team-secret-1\\u0000",
        "\\u200bsk-team-secret-1\\ufeff",
    ] {
        let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
        let answer = send(&format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nauthorization: Bearer sk-team-secret-1\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ));
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(!answer.contains("sk-team-secret-1"), "{answer}");
        assert!(answer.contains("***"), "{answer}");
        let line = wait_for_line(&mut stdout, "\"status\":404");
        assert!(!line.contains("sk-team-secret-1"), "{line}");
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        let shown = if model.contains('/') {
            model.replace("sk-team-secret-1", "***")
        } else {
            "***".to_string()
        };
        assert_eq!(line["model"], shown, "{line}");
        assert!(line["error"].as_str().unwrap().contains("***"), "{line}");
    }

    // An encoded slash splits the name the lookup (and its error) sees.
    let answer = send(
        "GET /v1/models/sk-team-secret-1%2Fkimi HTTP/1.1\r\nHost: x\r\n\
         authorization: Bearer sk-team-secret-1\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(!answer.contains("sk-team-secret-1"), "{answer}");
    let line = wait_for_line(&mut stdout, "\"status\":404");
    assert!(!line.contains("sk-team-secret-1"), "{line}");

    // A key sent as the request id (with it or without it as the key) is
    // replaced by a generated id: in the answer and the log.
    for authorization in ["authorization: Bearer sk-team-secret-1\r\n", ""] {
        let answer = send(&format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\n{authorization}\
             x-request-id: sk-team-secret-1\r\nconnection: close\r\n\r\n"
        ));
        assert!(!answer.contains("sk-team-secret-1"), "{answer}");
        assert!(answer.contains("\r\nx-request-id: req_"), "{answer}");
        let status = if authorization.is_empty() { 401 } else { 200 };
        let line = wait_for_line(&mut stdout, &format!("\"status\":{status}"));
        assert!(!line.contains("sk-team-secret-1"), "{line}");
        assert!(line.contains("\"request_id\":\"req_"), "{line}");
    }
    // A provider key as the id, in another letter case or inside a
    // longer id, is replaced too.
    for id in ["SK-AIML-SECRET-2", "trace-sk-aiml-SECRET-2-x"] {
        let answer = send(&format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nauthorization: Bearer sk-team-secret-1\r\n\
             x-request-id: {id}\r\nconnection: close\r\n\r\n",
        ));
        assert!(
            !answer.to_lowercase().contains("sk-aiml-secret-2"),
            "{answer}"
        );
        assert!(answer.contains("\r\nx-request-id: req_"), "{answer}");
        let line = wait_for_line(&mut stdout, "\"status\":200");
        assert!(!line.to_lowercase().contains("sk-aiml-secret-2"), "{line}");
    }
    // Another id is the client's.
    let answer = send(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nauthorization: Bearer sk-team-secret-1\r\n\
         x-request-id: trace-42\r\nconnection: close\r\n\r\n",
    );
    assert!(
        answer.contains("\r\nx-request-id: trace-42\r\n"),
        "{answer}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A configuration file the probe cannot read, or whose `server.listen`
/// is no address, fails the probe with the reason: probing the default
/// address instead could report another gateway's health.
#[test]
fn healthcheck_with_an_unreadable_config_says_so() {
    let bad_listen = config_file("[server]\nlisten = \"localhost\"\n");
    let missing = std::path::Path::new("/nonexistent/gateway.toml");
    for (file, says) in [
        (bad_listen.path(), "server.listen is not an address"),
        (missing, "No such file"),
    ] {
        let probe = gateway()
            .env_remove("KIMI_GATEWAY_LISTEN")
            .args(["healthcheck", "--config"])
            .arg(file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&probe.stderr);
        assert_eq!(probe.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with("cannot tell which address to probe: ") && stderr.contains(says),
            "{stderr}"
        );
    }
}

/// Starts the binary with `args` and waits for its "listening" log line;
/// returns the child and its stdout reader.
fn start_gateway(
    args: &[&str],
) -> (
    Running,
    std::io::BufReader<std::process::ChildStdout>,
    String,
) {
    start(gateway(), args)
}

/// A started process, killed (and reaped) when dropped: a test that fails
/// half-way does not leave its gateway running.
pub(crate) struct Running(pub(crate) std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Already ended (the test waited for it) or not: either is fine.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start(
    command: Command,
    args: &[&str],
) -> (
    Running,
    std::io::BufReader<std::process::ChildStdout>,
    String,
) {
    let (child, mut stdout) = spawn(command, args);
    let addr = listen_address(&wait_for_line(&mut stdout, "listening"));
    (child, stdout, addr)
}

/// Starts the binary with `args` (and a Moonshot key), its log read from
/// the returned reader.
pub(crate) fn spawn(
    mut command: Command,
    args: &[&str],
) -> (Running, std::io::BufReader<std::process::ChildStdout>) {
    let mut child = command
        .args(args)
        .env("MOONSHOT_API_KEY", "k")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    (Running(child), stdout)
}

/// The address in the gateway's "listening" line.
pub(crate) fn listen_address(line: &str) -> String {
    line.split("\"listen\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no address in {line}"))
        .to_string()
}

/// Points Moonshot and Agentsflare (with a key) at `mock`.
pub(crate) fn to_mock(command: &mut Command, mock: &kimi_gateway::mock::MockHandle) {
    use kimi_gateway::mock::Flavour;
    command
        .env("MOONSHOT_BASE_URL", mock.base_url(Flavour::Moonshot))
        .env("AGENTSFLARE_BASE_URL", mock.base_url(Flavour::Agentsflare))
        .env("AGENTSFLARE_API_KEY", "k");
}

/// `kimi-gateway --check --config FILE`, run to its end.
fn check(file: &std::path::Path) -> std::process::Output {
    gateway()
        .arg("--check")
        .arg("--config")
        .arg(file)
        .output()
        .unwrap()
}

/// A mock provider that takes the key [`start`] gives the gateway.
pub(crate) async fn mock_for_start() -> kimi_gateway::mock::MockHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = kimi_gateway::mock::MockOptions {
        api_key: "k".into(),
        ..Default::default()
    };
    kimi_gateway::mock::spawn(listener, options).await
}

/// What the gateways under test listen on: a port the kernel picks, read
/// back from the "listening" line (a port found free beforehand can be
/// taken by a parallel test before the gateway binds it).
pub(crate) const ANY_PORT: &str = "127.0.0.1:0";

pub(crate) fn wait_for_line(stdout: &mut impl std::io::BufRead, needle: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "gateway exited before logging {needle:?}");
        if line.contains(needle) {
            return line;
        }
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn free_addr() -> String {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    addr.to_string()
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let (mut child, mut stdout, _) = start_gateway(&["--listen", ANY_PORT]);
    signal(&child, "TERM");
    wait_for_line(&mut stdout, "shutting down");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn sighup_reloads_the_config_file() {
    let file = config_file(
        "[aliases.kimi]\ntargets = [{ provider = \"moonshot\", model = \"kimi-k2.6\" }]\n",
    );
    let path = file.path().to_str().unwrap().to_string();
    let (mut child, mut stdout, _) = start_gateway(&["--listen", ANY_PORT, "--config", &path]);
    signal(&child, "HUP");
    let line = wait_for_line(&mut stdout, "configuration reloaded");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains("sighup"), "{line}");
    assert!(line.contains("success"), "{line}");
}

/// The gateway's environment and arguments as the kernel sees them now.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn environ_and_args(child: &std::process::Child) -> (Vec<String>, Vec<String>) {
    let read = |what: &str| {
        let raw = std::fs::read(format!("/proc/{}/{what}", child.id())).unwrap();
        raw.split(|&b| b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect::<Vec<_>>()
    };
    (read("environ"), read("cmdline"))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn serving_restarts_once_with_a_larger_malloc_cache_and_the_same_arguments() {
    use kimi_gateway::malloc_tuning::{TUNABLES, VARIABLE};
    let (mut child, _stdout, _) = start_gateway(&["--listen", ANY_PORT]);
    let (environ, args) = environ_and_args(&child);
    let name = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(name, "kimi-gateway\n", "named as started, not `exe`");
    // glibc 2.36 parses the tunables in place, leaving a NUL for each `:`
    // in the process's environment: joined again, they are what was set.
    assert!(
        environ
            .join(":")
            .contains(&format!("{VARIABLE}={TUNABLES}")),
        "{environ:?}"
    );
    assert_eq!(
        args,
        [env!("CARGO_BIN_EXE_kimi-gateway"), "--listen", ANY_PORT],
        "the same argv[0] and arguments"
    );
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn glibc_tunables_set_by_the_operator_are_left_alone() {
    use kimi_gateway::malloc_tuning::VARIABLE;
    let mut command = gateway();
    command.env(VARIABLE, "glibc.malloc.tcache_count=7");
    let (mut child, _stdout, _) = start(command, &["--listen", ANY_PORT]);
    let (environ, _) = environ_and_args(&child);
    child.kill().unwrap();
    child.wait().unwrap();
    let set: Vec<&String> = environ
        .iter()
        .filter(|v| v.starts_with(&format!("{VARIABLE}=")))
        .collect();
    assert_eq!(set, [&format!("{VARIABLE}=glibc.malloc.tcache_count=7")]);
}

/// Large plain answers leave no memory behind once they are written. Left
/// to itself, glibc's malloc raises its mmap threshold after it frees the
/// first large block, and later answers then come from the worker
/// threads' arenas, whose free tops neither its own trimming nor
/// `malloc_trim` give back: an idle gateway held 50-100 MB after a few
/// rounds of 16 MB answers. The gateway starts with the threshold fixed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn large_plain_answers_leave_no_memory_behind() {
    const ANSWER_BYTES: usize = 16_000_000;
    let status_kb = |pid: u32, field: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(mock_for_start());
    let mut command = gateway();
    to_mock(&mut command, &mock);
    let (mut child, _stdout, addr) = start(command, &["--listen", ANY_PORT]);
    let pid = child.id();
    let idle_kb = status_kb(pid, "VmRSS:");
    let client = reqwest::Client::new();
    let mut after_each_round = Vec::new();
    for round in 0..3 {
        runtime.block_on(async {
            let answers = (0..4).map(|i| {
                let client = client.clone();
                let addr = addr.clone();
                async move {
                    let content =
                        format!("round {round} answer {i} [mock chunk_bytes={ANSWER_BYTES}]");
                    let response = client
                        .post(format!("http://{addr}/v1/chat/completions"))
                        .json(&serde_json::json!({
                            "model": "moonshot/kimi-k2.6",
                            "messages": [{"role": "user", "content": content}],
                        }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    response.bytes().await.unwrap().len()
                }
            });
            for len in futures_util::future::join_all(answers).await {
                assert!(len > ANSWER_BYTES, "{len} bytes");
            }
        });
        // What was freed goes back at once, or at the next idle trim
        // (every 2 s): wait up to 10 s for the resident size to settle.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let settled = loop {
            let now_kb = status_kb(pid, "VmRSS:");
            if now_kb < idle_kb + 12 * 1024 || std::time::Instant::now() > deadline {
                break now_kb;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        after_each_round.push(settled);
    }
    let peak_kb = status_kb(pid, "VmHWM:");
    child.kill().unwrap();
    child.wait().unwrap();
    for settled in &after_each_round {
        assert!(
            *settled < idle_kb + 12 * 1024,
            "idle at {idle_kb} KB, after each round of 4 x 16 MB answers: {after_each_round:?} KB"
        );
    }
    // Four answers held at once, and not more with each round.
    assert!(
        peak_kb < idle_kb + 4 * 16 * 1024 * 7 / 4,
        "peak {peak_kb} KB, idle {idle_kb} KB"
    );
}

/// The access line, and the event of a head refused before it could be
/// read, name the connection's peer address.
#[test]
fn the_access_line_names_the_clients_address() {
    use std::io::{Read, Write};
    let (mut child, mut stdout, addr) = start(gateway(), &["--listen", ANY_PORT]);
    let mut models = std::net::TcpStream::connect(&addr).unwrap();
    models
        .write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    models.read_to_end(&mut Vec::new()).unwrap();
    let line = wait_for_line(&mut stdout, "\"path\":\"/v1/models\"");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["client_addr"], "127.0.0.1", "{line}");

    let mut refused = std::net::TcpStream::connect(&addr).unwrap();
    refused
        .write_all(b"GET / HTTP/1.1\r\nbad head\r\n\r\n")
        .unwrap();
    refused.read_to_end(&mut Vec::new()).unwrap();
    let line = wait_for_line(&mut stdout, "request head refused");
    child.kill().unwrap();
    child.wait().unwrap();
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["client_addr"], "127.0.0.1", "{line}");
    assert_eq!(line["status"], 400, "{line}");
}

/// The access line of a request the provider refused still says how long
/// the provider took to answer (its head came; only its status was bad).
#[test]
fn the_access_line_of_a_provider_error_has_its_time_to_head() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(mock_for_start());
    let mut command = gateway();
    command.env(
        "MOONSHOT_BASE_URL",
        mock.base_url(kimi_gateway::mock::Flavour::Moonshot),
    );
    let (mut child, mut stdout, addr) = start(command, &["--listen", ANY_PORT]);
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "kimi-k2-turbo-preview",
                "messages": [{"role": "user", "content": "[mock error=invalid_request head_delay_ms=20]"}],
            }))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 400);
    let line = wait_for_line(&mut stdout, "\"status\":400");
    child.kill().unwrap();
    child.wait().unwrap();
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    let time_to_head = line["time_to_head_ms"].as_f64().unwrap();
    assert!(time_to_head >= 20.0, "{line}");
}

/// The access line's time to head is the last attempt's: none when the
/// gateway's own limit on the provider refused that attempt unsent, even
/// though an earlier attempt got a head.
#[test]
fn the_access_line_of_a_last_attempt_refused_unsent_has_no_time_to_head() {
    let file = config_file(
        "[retry]\nmax_attempts = 2\nbackoff_base_ms = 1\nbackoff_max_ms = 2\n\
         [limits.providers.moonshot]\nrequests_per_minute = 1\n",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(mock_for_start());
    let mut command = gateway();
    command.env(
        "MOONSHOT_BASE_URL",
        mock.base_url(kimi_gateway::mock::Flavour::Moonshot),
    );
    let path = file.path().to_str().unwrap();
    let (mut child, mut stdout, addr) = start(command, &["--listen", ANY_PORT, "--config", path]);
    let response = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "moonshot/kimi-k2.6",
                "messages": [{"role": "user", "content": "[mock error=server head_delay_ms=20]"}],
            }))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(response.headers()["x-gateway-attempts"], "2");
    let line = wait_for_line(&mut stdout, "\"attempts\":2");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(mock.requests().len(), 1, "the second attempt was not sent");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["time_to_head_ms"].as_f64(), Some(0.0), "{line}");
}

/// An answer served after a fail-over still shows what failed before it:
/// each failed attempt is a warning with the request's id.
#[test]
fn a_failed_attempt_before_a_fail_over_is_logged_with_the_request_id() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(mock_for_start());
    let mut command = gateway();
    to_mock(&mut command, &mock);
    let (mut child, mut stdout, addr) = start(command, &["--listen", ANY_PORT]);
    let response = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "kimi-k2.6",
                "messages": [{"role": "user", "content": "[mock moonshot:error=server]"}],
            }))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-provider"], "agentsflare");
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let warning = wait_for_line(&mut stdout, "upstream attempt failed");
    let access = wait_for_line(&mut stdout, "\"target\":\"access\"");
    child.kill().unwrap();
    child.wait().unwrap();
    let warning: serde_json::Value = serde_json::from_str(&warning).unwrap();
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["request_id"], id, "{warning}");
    assert_eq!(warning["provider"], "moonshot", "{warning}");
    assert_eq!(warning["error_status"], 500, "{warning}");
    let access: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(access["request_id"], id, "{access}");
    assert_eq!(access["attempts"], 2, "{access}");
}

/// A long path is logged cut, with its length: a client, keyed or not,
/// cannot make each access line as long as the request head it sent.
#[test]
fn a_long_path_is_logged_cut_with_its_length() {
    let (mut child, mut stdout, addr) = start_gateway(&["--listen", ANY_PORT]);
    let path = format!("/v1/{}", "p".repeat(20_000));
    let status = http_get(&addr, &path);
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let line = wait_for_line(&mut stdout, "\"status\":404");
    child.kill().unwrap();
    child.wait().unwrap();
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    let logged = line["path"].as_str().unwrap();
    assert_eq!(logged, format!("{}... (20004 bytes)", &path[..256]));
}

/// A long model name is the client's to send, not to have copied back: the
/// error quotes its start and length, and so does the access line; one too
/// long to be looked up at all (over 64 KiB) is logged and counted the same.
#[test]
fn a_long_unknown_model_name_is_quoted_cut_in_the_answer_and_the_log() {
    let (mut child, mut stdout, addr) = start_gateway(&["--listen", ANY_PORT]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for tail in [60_000, 70_000] {
        // A two-byte character across the cut: it is left out whole.
        let model = format!("{}\u{e9}{}", "a".repeat(255), "b".repeat(tail));
        let (status, body) = runtime.block_on(async {
            let response = reqwest::Client::new()
                .post(format!("http://{addr}/v1/chat/completions"))
                .json(&serde_json::json!({"model": model, "messages": [], "stream": true}))
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        });
        assert_eq!(status, 404, "{body:.300}");
        assert!(body.len() < 1024, "{} bytes: {body:.300}", body.len());
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        let shown = format!("{}... ({} bytes)", "a".repeat(255), model.len());
        if tail < 65_536 {
            assert!(message.contains(&format!("{shown:?}")), "{message}");
        } else {
            assert!(
                message.contains(&format!("{} bytes long", model.len())),
                "{message}"
            );
        }
        assert_eq!(error["error"]["code"], "model_not_found");

        let line = wait_for_line(&mut stdout, "\"status\":404");
        assert!(line.len() < 2048, "{} bytes: {line:.300}", line.len());
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(line["model"], shown, "{line}");
        assert_eq!(line["error_type"], "resource_not_found_error", "{line}");
        assert_eq!(line["error_code"], "model_not_found", "{line}");
    }
    let metrics = http_get(&addr, "/metrics");
    child.kill().unwrap();
    child.wait().unwrap();
    let not_found: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("kimi_gateway_requests_total{") && l.contains("status=\"404\""))
        .collect();
    assert_eq!(not_found.len(), 1, "{not_found:?}");
    assert!(not_found[0].contains("route=\"unknown\""), "{not_found:?}");
    assert!(not_found[0].ends_with(" 2"), "{not_found:?}");
}

/// The access line of a request whose client left while its second
/// attempt waited for a provider: the model, route and provider it had
/// reached, and both attempts.
#[test]
fn the_access_line_of_a_request_left_mid_attempt_names_its_provider() {
    use kimi_gateway::mock::Flavour;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(mock_for_start());
    let mut command = gateway();
    command
        .env("MOONSHOT_BASE_URL", mock.base_url(Flavour::Moonshot))
        .env("AGENTSFLARE_BASE_URL", mock.base_url(Flavour::Agentsflare))
        .env("AGENTSFLARE_API_KEY", "k");
    let (mut child, mut stdout, addr) = start(command, &["--listen", ANY_PORT]);
    runtime.block_on(async {
        let request = reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "kimi-latest",
                "messages": [{"role": "user", "content": "[mock moonshot:error=server agentsflare:head_delay_ms=60000]"}],
            }))
            .send();
        let request = tokio::spawn(request);
        // The first attempt's failure is counted as the second one starts.
        let failed_over = r#"kimi_gateway_upstream_attempts_total{outcome="failover",provider="moonshot"} 1"#;
        let second_attempt = async {
            loop {
                let metrics = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
                if metrics.text().await.unwrap().contains(failed_over) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), second_attempt)
            .await
            .expect("the second attempt never started");
        request.abort();
    });
    let line = wait_for_line(&mut stdout, "\"status\":499");
    child.kill().unwrap();
    child.wait().unwrap();
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["model"], "kimi-latest", "{line}");
    assert_eq!(line["provider"], "agentsflare", "{line}");
    assert_eq!(line["upstream_model"], "kimi-latest", "{line}");
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["error_type"], "", "{line}");
    assert_eq!(line["error_code"], "", "{line}");
}

/// A provider that refuses one of several keys: the alert line and the
/// error name the variable that holds it.
#[test]
fn a_rejected_key_is_named_by_its_variable() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(mock_for_start());
    let file = config_file(
        "[providers.moonshot]\napi_key_envs = [\"MOONSHOT_API_KEY\", \"MOONSHOT_KEY_OLD\"]\n",
    );
    let mut command = gateway();
    command
        .env(
            "MOONSHOT_BASE_URL",
            mock.base_url(kimi_gateway::mock::Flavour::Moonshot),
        )
        .env("MOONSHOT_KEY_OLD", "revoked");
    let config = file.path().to_str().unwrap();
    let (mut child, mut stdout, addr) = start(command, &["--listen", ANY_PORT, "--config", config]);
    let request_id = runtime.block_on(async {
        // Each request tries the targets in a random order: the revoked
        // key's target is tried within a few.
        for _ in 0..40 {
            let response = reqwest::Client::new()
                .post(format!("http://{addr}/v1/chat/completions"))
                .json(&serde_json::json!({
                    "model": "kimi-k2-turbo-preview",
                    "messages": [{"role": "user", "content": "hi"}],
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            if response.headers()["x-gateway-attempts"] == "2" {
                return response.headers()["x-request-id"]
                    .to_str()
                    .unwrap()
                    .to_string();
            }
        }
        panic!("the revoked key's target was never tried first");
    });
    let line = wait_for_line(&mut stdout, "upstream_key_rejected");
    child.kill().unwrap();
    child.wait().unwrap();
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["key_env"], "MOONSHOT_KEY_OLD", "{line}");
    // The request it happened to, though the request was served.
    assert_eq!(line["request_id"], request_id.as_str(), "{line}");
    // The error names the refused key's variable, not all of them.
    let message = line["message"].as_str().unwrap();
    assert!(message.ends_with("; check MOONSHOT_KEY_OLD"), "{line}");
    assert!(!line.to_string().contains("revoked"), "{line}");
}

/// At `RUST_LOG=trace`, with the log written into the config file's
/// directory: the file watcher's library logs each change it sees, so every
/// line written would make another. Its lines stay out unless asked for.
#[test]
fn a_log_beside_the_config_file_does_not_feed_itself_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "").unwrap();
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Running(
        gateway()
            .args(["--listen", ANY_PORT, "--config", config.to_str().unwrap()])
            .env("MOONSHOT_API_KEY", "k")
            .env("RUST_LOG", "trace")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let read = || std::fs::read_to_string(&log_path).unwrap();
    let started = std::time::Instant::now();
    while !read().contains("listening") {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", read());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing to wait for: a second in which the gateway does nothing.
    std::thread::sleep(Duration::from_secs(1));
    child.kill().unwrap();
    child.wait().unwrap();
    let text = read();
    let watcher_lines = text.lines().filter(|l| l.contains("\"notify")).count();
    assert_eq!(
        watcher_lines,
        0,
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
}

/// Every line up to and including the first with `needle`.
fn lines_until(stdout: &mut impl std::io::BufRead, needle: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "gateway exited before logging {needle:?}: {lines:?}");
        let found = line.contains(needle);
        lines.push(line);
        if found {
            return lines;
        }
    }
}

/// `GET path` on `addr`, the whole answer as text.
pub(crate) fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// A restart-only setting is compared with what runs, not with the file
/// before: a change still waiting for a restart is said at every reload,
/// and one set back to the running value is not.
#[test]
fn a_restart_only_change_is_warned_about_until_set_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[server]\nmax_connections = 100\n").unwrap();
    let path = config.to_str().unwrap().to_string();
    let (mut child, mut stdout, _addr) = start_gateway(&["--listen", ANY_PORT, "--config", &path]);
    let warned = |lines: &[String]| {
        lines
            .iter()
            .any(|l| l.contains("server.max_connections differs"))
    };
    for (text, expected) in [
        ("[server]\nmax_connections = 200\n", true),
        ("[server]\nmax_connections = 200 # still\n", true),
        ("[server]\nmax_connections = 100\n", false),
    ] {
        std::fs::write(&config, text).unwrap();
        signal(&child, "HUP");
        let lines = lines_until(&mut stdout, "configuration reloaded");
        assert_eq!(warned(&lines), expected, "{text}: {lines:?}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The send buffer asked for client connections is logged with what the
/// kernel gave, and, set on the listener, changes only at a restart.
#[test]
fn the_client_send_buffer_is_logged_and_changes_at_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "").unwrap();
    let path = config.to_str().unwrap();
    let (child, mut stdout) = spawn(gateway(), &["--listen", ANY_PORT, "--config", path]);
    let lines = lines_until(&mut stdout, "kimi-gateway listening");
    let sized = lines
        .iter()
        .find(|l| l.contains("client send buffers sized"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(sized.contains("\"asked\":262144"), "{sized}");
    assert!(sized.contains("\"kernel_gives\":"), "{sized}");

    std::fs::write(&config, "[server]\nclient_send_buffer_bytes = 65536\n").unwrap();
    signal(&child, "HUP");
    let lines = lines_until(&mut stdout, "configuration reloaded");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("server.client_send_buffer_bytes differs")),
        "{lines:?}"
    );
}

/// A file that names the cap the gateway already runs with (the default
/// its open-file limit set) changes nothing that needs a restart.
#[test]
fn naming_the_running_connection_cap_is_no_restart_only_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "").unwrap();
    let path = config.to_str().unwrap().to_string();
    let (mut child, mut stdout, addr) = start_gateway(&["--listen", ANY_PORT, "--config", &path]);
    let metrics = http_get(&addr, "/metrics");
    let cap = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kimi_gateway_client_connections_max "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .trim()
        .to_string();
    std::fs::write(&config, format!("[server]\nmax_connections = {cap}\n")).unwrap();
    signal(&child, "HUP");
    let lines = lines_until(&mut stdout, "configuration reloaded");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("server.max_connections differs")),
        "{lines:?}"
    );
}

/// A reload that leaves a provider without its key, and so none usable,
/// says so as a start with that file would.
#[test]
fn a_reload_that_takes_providers_out_of_service_warns() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "").unwrap();
    let path = config.to_str().unwrap().to_string();
    let mut command = gateway();
    command.env("MOONSHOT_API_KEY", "sk-moonshot");
    let (mut child, mut stdout, _addr) = start(command, &["--listen", ANY_PORT, "--config", &path]);
    std::fs::write(
        &config,
        "[providers.moonshot]\napi_key_env = \"MOONSHOT_KEY_NOT_SET\"\n",
    )
    .unwrap();
    signal(&child, "HUP");
    let lines = lines_until(&mut stdout, "no provider has an API key");
    child.kill().unwrap();
    child.wait().unwrap();
    let reloaded = lines
        .iter()
        .position(|l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        lines[reloaded..]
            .iter()
            .any(|l| l.contains("provider moonshot is not served")
                && l.contains("MOONSHOT_KEY_NOT_SET")),
        "{lines:?}"
    );
}

/// An edit followed by a SIGHUP (what an operator or a config manager
/// does) reloads once: the file watcher sees the contents SIGHUP loaded.
/// And with `--listen` given, a changed `server.listen` is no news.
#[test]
fn an_edit_and_a_sighup_reload_once_and_listen_given_on_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
    let path = config.to_str().unwrap().to_string();
    let (mut child, mut stdout, addr) = start_gateway(&["--listen", ANY_PORT, "--config", &path]);
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:2\"\n").unwrap();
    signal(&child, "HUP");
    let lines = lines_until(&mut stdout, "configuration reloaded");
    assert!(
        !lines.iter().any(|l| l.contains("server.listen differs")),
        "{lines:?}"
    );
    // Nothing to wait for: past the watcher's settle time and its 2 s
    // look-again, no second reload of the same contents.
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = http_get(&addr, "/metrics");
    child.kill().unwrap();
    child.wait().unwrap();
    let reloads = metrics
        .lines()
        .find(|l| l.starts_with("kimi_gateway_config_reloads_total{result=\"success\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(reloads.ends_with(" 1"), "{reloads}");
}

/// A reload is refused a `server.metrics_listen` on the port given by
/// `--listen`, as a restart with that file would be.
#[test]
fn a_reload_putting_metrics_on_the_listen_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "").unwrap();
    let path = config.to_str().unwrap().to_string();
    let listen = free_addr();
    let (mut child, mut stdout, _) = start_gateway(&["--listen", &listen, "--config", &path]);
    std::fs::write(
        &config,
        format!("[server]\nmetrics_listen = \"{listen}\"\n"),
    )
    .unwrap();
    signal(&child, "HUP");
    let lines = lines_until(&mut stdout, "kept the previous configuration");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("configuration reload rejected")
                && l.contains("takes the port of --listen")),
        "{lines:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A `RUST_LOG` with a typo does not silence the log nor pass unseen: the
/// gateway says so and logs at `info`. A misspelt bare level would read as
/// a target's name and turn every other line off.
#[test]
fn an_unreadable_rust_log_is_reported_and_info_is_kept() {
    for filter in ["kimi_gateway=loud", "warning"] {
        an_unreadable_rust_log_is_reported(filter);
    }
}

fn an_unreadable_rust_log_is_reported(filter: &str) {
    let mut child = Running(
        gateway()
            .args(["--listen", ANY_PORT])
            .env("MOONSHOT_API_KEY", "k")
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let lines = lines_until(&mut stdout, "listening");
    let warning = lines
        .iter()
        .find(|l| l.contains("RUST_LOG is not a filter"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    let warning: serde_json::Value = serde_json::from_str(warning).unwrap();
    assert_eq!(warning["level"], "WARN", "{warning}");
}

/// A log output that fails (here a pipe whose reader is gone; a full disk
/// is the same) loses lines: they are counted in the metric, and the
/// failure is told once on stderr, since the log cannot carry it.
#[test]
fn a_failing_log_output_is_counted_and_told_on_stderr() {
    use std::io::BufRead;
    let mut child = gateway()
        .args(["--listen", ANY_PORT])
        .env("MOONSHOT_API_KEY", "k")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let child = Running(child);
    let addr = listen_address(&wait_for_line(&mut stdout, "listening"));
    drop(stdout);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let dropped = loop {
        // A wrong path is logged at info: a line for the closed pipe.
        assert!(http_get(&addr, "/v1/nope").contains(" 404 "));
        let metrics = http_get(&addr, "/metrics");
        let count = metrics
            .lines()
            .find_map(|line| line.strip_prefix("kimi_gateway_log_lines_dropped_total "))
            .map(|value| value.trim().parse::<u64>().unwrap());
        if let Some(count) = count.filter(|&count| count > 0) {
            break count;
        }
        assert!(std::time::Instant::now() < deadline, "nothing counted");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(dropped >= 1);
    let mut notice = String::new();
    stderr.read_line(&mut notice).unwrap();
    assert!(
        notice.contains("writing the log to its output failed")
            && notice.contains("kimi_gateway_log_lines_dropped_total"),
        "{notice}"
    );
    // Told once, not at every failed batch.
    for _ in 0..5 {
        http_get(&addr, "/v1/nope");
    }
    drop(child);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(!rest.contains("output failed"), "{rest}");
}

/// A stream whose provider goes on sending while the gateway's process is
/// frozen (SIGSTOP here; a paused VM or container alike) for longer than
/// the idle limit goes on at resume: the limit is believed only once what
/// arrived meanwhile has been looked for.
#[test]
fn a_stream_outlives_a_freeze_of_the_gateway_longer_than_its_idle_limit() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(mock_for_start());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[providers.moonshot.timeouts]\nidle_secs = 1\n[retry]\nmax_attempts = 1\n",
    )
    .unwrap();
    let mut command = gateway();
    command.env(
        "MOONSHOT_BASE_URL",
        mock.base_url(kimi_gateway::mock::Flavour::Moonshot),
    );
    let path = config.to_str().unwrap();
    let (mut child, _stdout, addr) = start(command, &["--listen", ANY_PORT, "--config", path]);
    let text = runtime.block_on(async {
        let mut response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "kimi-k2-turbo-preview",
                "stream": true,
                "messages": [{"role": "user", "content": "[mock chunks=20 chunk_delay_ms=200]"}],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let first = response.chunk().await.unwrap().unwrap();
        let mut text = String::from_utf8_lossy(&first).into_owned();
        signal(&child, "STOP");
        // The freeze itself, past the 1 s idle limit, while the provider
        // sends an event every 200 ms.
        tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
        signal(&child, "CONT");
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!text.contains("upstream_timeout"), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
}
