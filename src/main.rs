//! The `kimi-gateway` command: parse flags, load and validate the
//! configuration, bind, and serve until SIGINT/SIGTERM.

use clap::{Parser, Subcommand};
use kimi_gateway::{
    config, healthcheck, malloc_tuning, reload, server, state::AppState, telemetry,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// glibc malloc, with freed blocks of the per-request sizes glibc's own
/// per-thread cache does not take kept per thread (see `block_cache`).
#[global_allocator]
static ALLOCATOR: kimi_gateway::block_cache::BlockCache = kimi_gateway::block_cache::BlockCache;

/// OpenAI-compatible gateway for Kimi models on Moonshot, AI/ML API and Agentsflare.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see config/kimi-gateway.example.toml).
    /// Global, like `--listen`: `healthcheck` reads both, written before
    /// or after it.
    #[arg(long, env = "KIMI_GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on; overrides `server.listen` (default 127.0.0.1:8080).
    #[arg(long, env = "KIMI_GATEWAY_LISTEN", global = true)]
    listen: Option<SocketAddr>,
    /// Validate the configuration, print every problem, and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Probe a running gateway's /healthz; exit 0 when it answers 200
    /// (for container health checks: the image has no shell or curl).
    Healthcheck {
        /// Address of the gateway (default: --listen, else the config
        /// file's server.listen, else 127.0.0.1:8080).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
    },
}

/// The variables clap reads for flags that take a value.
const FLAG_VARIABLES: [(&str, &str); 2] = [
    ("KIMI_GATEWAY_CONFIG", "--config"),
    ("KIMI_GATEWAY_LISTEN", "--listen"),
];

/// A flag's variable set to nothing, as a template that had no value
/// leaves it, is refused by its own name: clap would name only the flag,
/// which the operator never wrote. Not when the flag is given (clap then
/// does not read the variable), nor for `--help` or `--version`.
fn empty_flag_variable() -> Option<String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let given = |flag: &str| {
        args.iter().any(|arg| {
            let arg = arg.as_encoded_bytes();
            arg == flag.as_bytes()
                || arg
                    .strip_prefix(flag.as_bytes())
                    .is_some_and(|rest| rest.starts_with(b"="))
        })
    };
    if ["-h", "--help", "-V", "--version"].iter().any(|f| given(f)) {
        return None;
    }
    FLAG_VARIABLES.iter().find_map(|(variable, flag)| {
        let empty = std::env::var_os(variable).is_some_and(|value| value.is_empty());
        (empty && !given(flag)).then(|| {
            format!("{variable} is set but empty: unset it, or give it a value as you would {flag}")
        })
    })
}

fn main() -> ExitCode {
    if let Some(problem) = empty_flag_variable() {
        eprintln!("error: {problem}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { addr, timeout }) = cli.command {
        let from_file = match cli.config.as_deref().map(config::listen_in_file) {
            Some(Err(reason)) if addr.or(cli.listen).is_none() => {
                eprintln!("cannot tell which address to probe: {reason}");
                return ExitCode::FAILURE;
            }
            Some(Ok(listen)) => listen,
            _ => None,
        };
        let addr = addr
            .or(cli.listen)
            .or(from_file)
            .unwrap_or_else(|| config::DEFAULT_LISTEN.parse().expect("default address"));
        // `inf`, NaN or a huge number would panic in the conversion.
        let timeout = std::time::Duration::try_from_secs_f64(timeout.clamp(0.1, 3600.0))
            .unwrap_or(std::time::Duration::from_secs(2));
        return match healthcheck::probe(addr, "/healthz", timeout) {
            Ok(()) => ExitCode::SUCCESS,
            Err(reason) => {
                eprintln!("{reason}");
                ExitCode::FAILURE
            }
        };
    }
    let loaded = config::load(cli.config.as_deref())
        .and_then(|config| config::check_listen_override(&config, cli.listen).map(|()| config));
    let config = match loaded {
        Ok(config) => config,
        Err(errors) => {
            use std::io::Write;
            // Not `eprint!`, which panics when the reader has gone
            // (`--check 2>&1 | head -1`).
            let _ = write!(
                std::io::stderr().lock(),
                "configuration has {} problem(s):\n{errors}",
                errors.0.len()
            );
            return ExitCode::from(2);
        }
    };
    if cli.check {
        // A reader that stops early (`--check | head -1`) is no failure:
        // the report is cut, not a panic on the closed pipe.
        let _ = print_check_report(&config);
        return ExitCode::SUCCESS;
    }

    // Returns only when the tunables were already chosen, or could not be.
    let restart_failed = malloc_tuning::restart_with_tunables();
    let _log_writer = telemetry::init();
    if let Some(err) = restart_failed {
        tracing::warn!(error = %err, "could not restart with {}={}; running with glibc's malloc defaults", malloc_tuning::VARIABLE, malloc_tuning::TUNABLES);
    }
    match kimi_gateway::fd_limit::raise_to_hard() {
        Ok(Some((before, after))) => {
            tracing::info!(before, after, "open-file limit raised to its hard limit");
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "could not raise the open-file limit"),
    }
    let runtime = runtime();
    // Served on a worker, not on this thread: `block_on` would run the
    // accept loop here, and every accepted connection's task would be
    // handed across threads to a worker (a futex wake and context
    // switches per connection). Spawned, it shares its worker's queue.
    let served = runtime.block_on(runtime.spawn(serve(config, cli.listen)));
    match served {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            tracing::error!(error = %err, "gateway stopped");
            ExitCode::FAILURE
        }
        Err(err) => {
            tracing::error!(error = %err, "gateway stopped: its serving task failed");
            ExitCode::FAILURE
        }
    }
}

/// What `--check` says of a valid configuration.
fn print_check_report(config: &config::Config) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // Routable: served by a provider with a key now (as `/v1/models`
    // lists them), not merely configured.
    let routable = config
        .routes
        .routes()
        .iter()
        .filter(|route| route.usable_targets().next().is_some())
        .count();
    writeln!(
        out,
        "configuration OK: {} provider(s), {} usable, {routable} routable model name(s)",
        config.providers.len(),
        config.usable_providers().count(),
    )?;
    match config.keys.len() {
        0 => writeln!(
            out,
            "note: no client keys: the gateway is open to anyone who can reach it"
        )?,
        n => writeln!(out, "{n} client key(s)")?,
    }
    for note in config.key_notes() {
        writeln!(out, "note: {note}")?;
    }
    if let Some(problem) = config.out_of_service() {
        writeln!(out, "note: {problem}")?;
    }
    for note in &config.notes {
        writeln!(out, "note: {note}")?;
    }
    out.flush()
}

/// How many tasks a worker polls from its own queue before it takes one from
/// the shared queue. A worker's own queue holds 256 tasks; when one readiness
/// poll wakes more connections than that (hundreds of busy keep-alive
/// clients), the oldest half moves to the shared queue and waits behind
/// everything woken later. tokio's self-tuned interval (about ten tasks here)
/// left those requests waiting long enough to make the p99 latency at 512
/// connections ~1.3-1.8x nginx's; every third task keeps the queue nearly
/// first-in first-out (p99 within nginx's range), and at 64 connections,
/// where nothing overflows, it changes nothing measurable.
const SHARED_QUEUE_INTERVAL: u32 = 3;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .global_queue_interval(SHARED_QUEUE_INTERVAL)
        .build()
        .expect("tokio runtime")
}

async fn serve(config: config::Config, listen: Option<SocketAddr>) -> std::io::Result<()> {
    let addr = listen.unwrap_or(config.server.listen);
    for provider in config.usable_providers() {
        tracing::info!(provider = &*provider.name, base_url = %provider.base_url, models = provider.models.len(), "provider ready");
    }
    config.log_notes();
    if config.keys.is_empty() {
        tracing::warn!(
            alert = "open_gateway",
            "NO CLIENT KEYS CONFIGURED: the gateway is OPEN and anyone who can reach it \
             spends the providers' accounts; add [keys.NAME] tables to require keys"
        );
    } else {
        tracing::info!(keys = config.keys.len(), "client keys required");
    }
    // Every signal handler (SIGINT and SIGTERM here, SIGHUP's below) is
    // registered before the "listening" line: a supervisor may signal the
    // moment it sees it, and an unhandled signal would kill the process.
    let shutdown = shutdown_signal()?;
    let listener = kimi_gateway::listener::bind(addr, config.server.client_send_buffer)?;
    let metrics_listen = config.server.metrics_listen;
    let fingerprint = config.fingerprint.clone();
    let state = AppState::new(config);
    if let Some(listen) = listen {
        let _ = state.listen_override.set(listen);
    }
    reload::spawn_triggers(state.clone());
    kimi_gateway::model_refresh::spawn(state.clone());
    kimi_gateway::memory_trim::spawn(state.metrics.in_flight.clone());
    if let Some(addr) = metrics_listen {
        let listener = kimi_gateway::listener::bind(addr, None)?;
        // The bound address: with port 0 the system picked one.
        tracing::info!(listen = %listener.local_addr()?, "metrics on a separate listener");
        tokio::spawn(kimi_gateway::metrics_listener::serve(
            listener,
            state.clone(),
        ));
    }
    tracing::info!(listen = %listener.local_addr()?, config = %fingerprint, "kimi-gateway listening");
    let served = server::run(listener, state, shutdown).await;
    // Redis-backed limits settle in the background: the requests served to
    // the end of the drain give back their leases and unused tokens before
    // the runtime (and the settlements with it) is gone.
    kimi_gateway::limits::redis::finish_settlements(SETTLEMENT_WAIT).await;
    served
}

/// How long a stopping gateway waits for its last Redis settlements.
const SETTLEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Registers SIGINT and SIGTERM now; the future resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutting down: finishing requests in flight");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
    })
}
