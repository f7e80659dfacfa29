//! `loadgen`: a closed-loop HTTP/1.1 load generator for comparing the gateway
//! with nginx and with the mock provider itself (driven by `benches/load.sh`).
//! This file holds the command line and picks the mode.
//!
//! Load mode: `--connections N` workers, each with one keep-alive connection
//! (`TCP_NODELAY`), send the same POST back to back for `--warmup` seconds and
//! then `--duration` seconds, and one JSON object is printed on stdout:
//! request and error counts, rate, latency and time-to-first-body-byte
//! percentiles, and response bytes. Only requests that start after the
//! warm-up and finish before the end are counted.
//!
//! Hold mode (`--hold-streams N`): opens N streaming requests (the upstream is
//! told to send slow chunks), writes `--ready-file` once every stream has its
//! first byte (or failed), and keeps reading them until SIGINT/SIGTERM or
//! `--duration` seconds, so the proxy's memory per open stream can be read.
//!
//! Keep-awake mode (`--keep-awake`): spins on the CPU it is pinned to until
//! killed, yielding the processor whenever anything else wants it when run
//! as `chrt --idle 0 taskset -c N loadgen --keep-awake`. On a virtual machine
//! whose idle vCPUs take milliseconds to be woken by the host, this keeps the
//! CPU running, so a one-connection benchmark measures the proxy, not the
//! hypervisor's wake-up latency.
//!
//! Modules: `target` (the request to send), `client` (connections and
//! exchanges), `load` (load mode), `stats` (histograms and the load report),
//! `hold` (hold mode).

mod client;
mod hold;
mod load;
mod stats;
mod target;

use clap::Parser;
use http::Uri;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop HTTP/1.1 load generator for chat completion endpoints")]
struct Cli {
    /// Endpoint to POST to, e.g. http://127.0.0.1:8080/v1/chat/completions.
    #[arg(long, required_unless_present = "keep_awake")]
    url: Option<Uri>,
    /// Concurrent keep-alive connections (one worker each).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured seconds (load mode); seconds to hold the streams (hold mode).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds before the measurement starts (load mode).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Send this file as the request body instead of the built-in one.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Model named in the built-in body.
    #[arg(long, default_value = "kimi-k2-turbo-preview")]
    model: String,
    /// Ask for a stream (`"stream":true` in the built-in body).
    #[arg(long)]
    stream: bool,
    /// A mock directive put in the built-in body's message, e.g. `chunks=10`.
    #[arg(long)]
    mock: Option<String>,
    /// Stop after this many measured requests (the duration still caps the run).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Sent as `Authorization: Bearer …` (empty: no header).
    #[arg(long, default_value = "mock-key")]
    api_key: String,
    /// Also send the headers the OpenAI Python SDK sends with every
    /// request (`user-agent`, `accept`, the `x-stainless-*` fields), as a
    /// real client's request head looks.
    #[arg(long)]
    sdk_headers: bool,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Hold mode: open this many concurrent streams and keep them open.
    #[arg(long)]
    hold_streams: Option<usize>,
    /// Hold mode: file written (JSON counts) once every stream is open or failed.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Hold mode: connection attempts in flight at once while opening.
    #[arg(long, default_value_t = 128)]
    open_parallel: usize,
    /// Keep-awake mode: spin until killed (run it under `chrt --idle 0`).
    #[arg(long)]
    keep_awake: bool,
}

impl Cli {
    /// The endpoint; clap requires it in every mode that sends requests.
    fn url(&self) -> &Uri {
        self.url
            .as_ref()
            .expect("--url is required unless --keep-awake")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.keep_awake {
        keep_awake();
    }
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::from(2)
        }
    }
}

/// Never returns: the process ends when it is killed.
fn keep_awake() -> ! {
    loop {
        std::hint::spin_loop();
    }
}

async fn run(cli: Cli) -> Result<Value, String> {
    let target = Arc::new(target::target(&cli).await?);
    match cli.hold_streams {
        Some(n) => hold::hold(&cli, target, n).await,
        None => load::load(&cli, target).await,
    }
}
