//! The `kimi-gateway` command: parse flags, load and validate the
//! configuration, bind, and serve until SIGINT/SIGTERM.

use clap::{Parser, Subcommand};
use kimi_gateway::{config, healthcheck, reload, server, state::AppState, telemetry};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// OpenAI-compatible gateway for Kimi models on Moonshot, AI/ML API and Agentsflare.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see config/kimi-gateway.example.toml).
    #[arg(long, env = "KIMI_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; overrides `server.listen` (default 127.0.0.1:8080).
    #[arg(long, env = "KIMI_GATEWAY_LISTEN")]
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
        /// Address of the gateway (default: --listen, else 127.0.0.1:8080).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { addr, timeout }) = cli.command {
        let addr = addr
            .or(cli.listen)
            .unwrap_or_else(|| config::DEFAULT_LISTEN.parse().expect("default address"));
        let timeout = std::time::Duration::from_secs_f64(timeout.max(0.1));
        return match healthcheck::probe(addr, "/healthz", timeout) {
            Ok(()) => ExitCode::SUCCESS,
            Err(reason) => {
                eprintln!("{reason}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("configuration has {} problem(s):", errors.0.len());
            eprint!("{errors}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!(
            "configuration OK: {} provider(s), {} usable, {} routable model name(s)",
            config.providers.len(),
            config.usable_providers().count(),
            config.routes.routes().len()
        );
        match config.keys.len() {
            0 => println!("note: no client keys: the gateway is open to anyone who can reach it"),
            n => println!("{n} client key(s)"),
        }
        for provider in config.providers.iter().filter(|p| !p.is_usable()) {
            println!(
                "note: provider {} is not served: {} is not set",
                provider.name, provider.api_key_env
            );
        }
        return ExitCode::SUCCESS;
    }

    telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(serve(config, cli.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "gateway stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: config::Config, listen: Option<SocketAddr>) -> std::io::Result<()> {
    let addr = listen.unwrap_or(config.listen);
    for provider in &config.providers {
        if provider.is_usable() {
            tracing::info!(provider = &*provider.name, base_url = %provider.base_url, models = provider.models.len(), "provider ready");
        } else {
            tracing::warn!(
                provider = &*provider.name,
                "provider not served: {} is not set",
                provider.api_key_env
            );
        }
    }
    if config.usable_providers().next().is_none() {
        tracing::warn!("no provider has an API key: every chat request will fail until one is set");
    }
    if config.keys.is_empty() {
        tracing::warn!(
            alert = "open_gateway",
            "NO CLIENT KEYS CONFIGURED: the gateway is OPEN and anyone who can reach it \
             spends the providers' accounts; add [keys.NAME] tables to require keys"
        );
    } else {
        tracing::info!(keys = config.keys.len(), "client keys required");
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let state = AppState::new(config);
    // Signal handlers go in before "listening" is logged: a supervisor may
    // signal the moment it sees that line.
    reload::spawn_triggers(state.clone());
    let shutdown = shutdown_signal();
    tracing::info!(listen = %listener.local_addr()?, config = %state.config().fingerprint, "kimi-gateway listening");
    server::run(listener, state, shutdown).await
}

/// Resolves on SIGINT or SIGTERM.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(interrupt) => {},
                _ = wait(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
    }
}
