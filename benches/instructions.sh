#!/usr/bin/env bash
# Instructions the gateway executes per request, counted by valgrind's
# callgrind: unlike req/s on a shared machine, the count repeats to within
# about 1% between runs, so it shows what a change to the hot path buys.
# The gateway runs with every feature on (benches/gateway.toml, access log
# at info) in front of the mock provider; requests are non-stream (or
# 10-chunk streams with --stream), at 4 connections. Counted: user-space
# instructions of the whole process from the first measured request to
# exit (the kernel's TCP work is not included).
#
#   bash benches/instructions.sh            # non-stream
#   bash benches/instructions.sh --stream   # 10-chunk streams
#
# BENCH_SDK_HEADERS=1 sends the OpenAI Python SDK's request headers too
# (a real client's head: twelve more fields, nine of them custom names).
# BENCH_SECS (default 6) is how long the measured load runs (under
# callgrind the gateway serves roughly 1,000-2,500 requests a second).
# BENCH_LOCKS=1 also counts the locked (atomic) instructions per request,
# by function (benches/locked_instructions.py).
# BENCH_GATEWAY_BIN counts another build of the gateway, e.g. the
# profile-guided one (target/pgo-release/release/kimi-gateway after
# scripts/pgo-build.sh); the mock and load generator are still these.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS="${BENCH_SECS:-6}"
OUT="$ROOT/target/instructions"
LOAD=()
[ "${1:-}" = --stream ] && LOAD=(--stream --mock chunks=10)
[ -n "${BENCH_SDK_HEADERS:-}" ] && LOAD+=(--sdk-headers)
VALGRIND=(--tool=callgrind)
[ -n "${BENCH_LOCKS:-}" ] && VALGRIND+=(--dump-instr=yes)
rm -rf "$OUT"
mkdir -p "$OUT"
missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v jq >/dev/null || missing+=(jq)
[ -n "${BENCH_LOCKS:-}" ] && { command -v objdump >/dev/null || missing+=(binutils); }
if ((${#missing[@]})); then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --bins --quiet
BIN="$ROOT/target/release"
GATEWAY="${BENCH_GATEWAY_BIN:-$BIN/kimi-gateway}"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

"$BIN/mock-provider" --listen 127.0.0.1:18590 --threads 1 >/dev/null 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1:18590
# GLIBC_TUNABLES: what the gateway would restart itself with; under
# valgrind it must be given (the restart cannot be followed).
MOONSHOT_API_KEY=mock-key MOONSHOT_BASE_URL=http://127.0.0.1:18590/moonshot/v1 BENCH_CLIENT_KEY=mock-key \
    TOKIO_WORKER_THREADS=1 RUST_LOG=info GLIBC_TUNABLES=glibc.malloc.tcache_count=128:glibc.malloc.mmap_threshold=131072 \
    valgrind "${VALGRIND[@]}" --callgrind-out-file="$OUT/callgrind.out" \
    "$GATEWAY" --listen 127.0.0.1:18580 --config "$ROOT/benches/gateway.toml" \
    >"$OUT/gateway.log" 2>"$OUT/valgrind.log" &
GW=$!
PIDS+=("$GW")
wait_port 127.0.0.1:18580
URL=http://127.0.0.1:18580/v1/chat/completions
# Warm up (connections, lazily built state), then count from zero.
"$BIN/loadgen" --url "$URL" --connections 4 --duration 1 --warmup 0 "${LOAD[@]}" >/dev/null
callgrind_control --zero "$GW" >/dev/null
"$BIN/loadgen" --url "$URL" --connections 4 --duration "$SECS" --warmup 0 "${LOAD[@]}" >"$OUT/load.json"
kill -INT "$GW"
wait "$GW" 2>/dev/null || true
requests=$(jq .requests "$OUT/load.json")
instructions=$(grep -h '^summary:' "$OUT"/callgrind.out* | awk '{s += $2} END {print s}')
echo "requests: $requests, instructions: $instructions, per request: $((instructions / requests))"
if [ -n "${BENCH_LOCKS:-}" ]; then
    python3 "$ROOT/benches/locked_instructions.py" "$OUT/callgrind.out" "$requests"
fi
echo "(callgrind_annotate --inclusive=yes $OUT/callgrind.out* shows where they go)"
