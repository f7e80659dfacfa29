//! `mock-provider`: the project's stand-in for Moonshot, AI/ML API and
//! Agentsflare, for offline try-outs, client tests and benchmarks.
//! Serves `/moonshot/v1`, `/aimlapi/v1` and `/agentsflare/v1` on one port.

use clap::Parser;
use kimi_gateway::mock::{self, Flavour, MockOptions};
use std::net::SocketAddr;
use std::time::Duration;

/// The gateway's allocator: glibc's shared bins took ~6% of the mock's core
/// in the load benchmark for the HTTP server's per-request 8 KiB buffers
/// and header maps, which the block cache hands back per thread instead.
#[global_allocator]
static ALLOCATOR: kimi_gateway::block_cache::BlockCache = kimi_gateway::block_cache::BlockCache;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Mock Kimi providers (Moonshot, AI/ML API, Agentsflare) for tests and demos"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The API key every flavour accepts.
    #[arg(long, default_value = "mock-key")]
    api_key: String,
    /// Content chunks per streamed answer (a request can override it).
    #[arg(long, default_value_t = 3)]
    chunks: usize,
    /// Delay between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // As the gateway's runtime (see its `SHARED_QUEUE_INTERVAL`): with
    // hundreds of busy connections a worker's own queue (256 tasks)
    // overflows into the shared one, and tokio's self-tuned interval leaves
    // the overflowed requests waiting behind everything woken later. The
    // mock then gave the benchmark's 512-connection scenarios a p99 five to
    // six times their p50 even with no proxy in front.
    runtime.global_queue_interval(3);
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads);
    }
    runtime.enable_all().build()?.block_on(async move {
        let listener = kimi_gateway::listener::bind(cli.listen, None)?;
        let options = MockOptions {
            api_key: cli.api_key,
            record: false,
            default_chunks: cli.chunks,
            default_chunk_delay: Duration::from_millis(cli.chunk_delay_ms),
        };
        let handle = mock::spawn(listener, options).await;
        for flavour in Flavour::ALL {
            println!("{:<12} {}", flavour.name(), handle.base_url(flavour));
        }
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}
