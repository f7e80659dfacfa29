#!/usr/bin/env bash
# What Redis-backed limits add to a request: the same gateway and config
# (client key, limits at every scope) with limits.backend = "local" and then
# "redis" (a private redis-server on loopback), non-stream requests at 1 and
# 64 connections, pinned like benches/load.sh (gateway on CPU 0; mock,
# redis-server and the load generator on CPU 1).
#
#   bash benches/redis_latency.sh          # BENCH_SECS (default 5) per run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS="${BENCH_SECS:-5}"
OUT="$ROOT/target/redis-latency"
mkdir -p "$OUT"
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq >/dev/null; }
cargo build --release --bins --quiet
BIN="$ROOT/target/release"
PIN0=(); PIN1=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then PIN0=(taskset -c 0); PIN1=(taskset -c 1); fi

PIDS=()
# Waits for what it stopped, so a rerun finds the ports free.
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return; sleep 0.05; done; echo "nothing on $1" >&2; exit 1; }

"${PIN1[@]}" "$BIN/mock-provider" --listen 127.0.0.1:18490 --threads 1 >/dev/null 2>&1 & PIDS+=($!)
"${PIN1[@]}" redis-server --port 18479 --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & PIDS+=($!)
wait_port 127.0.0.1:18490; wait_port 127.0.0.1:18479

run() { # backend connections
    local config="$OUT/gateway-$1.toml"
    cp "$ROOT/benches/gateway.toml" "$config"
    if [ "$1" = redis ]; then printf '\n[limits]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:18479"\n' >>"$config"; fi
    MOONSHOT_API_KEY=mock-key MOONSHOT_BASE_URL=http://127.0.0.1:18490/moonshot/v1 BENCH_CLIENT_KEY=mock-key \
        TOKIO_WORKER_THREADS=1 RUST_LOG=warn "${PIN0[@]}" "$BIN/kimi-gateway" --listen 127.0.0.1:18480 --config "$config" >"$OUT/gateway-$1.log" 2>&1 &
    local gw=$!
    wait_port 127.0.0.1:18480
    "${PIN1[@]}" "$BIN/loadgen" --url http://127.0.0.1:18480/v1/chat/completions --connections "$2" --duration "$SECS" >"$OUT/$1-$2.json"
    kill "$gw"; wait "$gw" 2>/dev/null || true
    jq -r --arg b "$1" --arg c "$2" '"| \($c) | \($b) | \(.rps|floor) | \(.latency_p50_ms) | \(.latency_p99_ms) | \(.errors) |"' "$OUT/$1-$2.json"
}

echo "| conns | limits backend | req/s | p50 ms | p99 ms | errors |"
echo "|--:|---|--:|--:|--:|--:|"
for c in 1 64; do run local "$c"; run redis "$c"; done
