#!/usr/bin/env bash
# Load benchmark: kimi-gateway against nginx and against the mock provider alone.
#
#   bash benches/load.sh            # every scenario, 3 rounds of 4 s per target (about 8 minutes)
#   bash benches/load.sh --quick    # fewer scenarios, 2 rounds of 3 s (about 2 minutes)
#
# (Both after the builds: the profile-guided one takes about 5 minutes, and
# on a clean clone the plain release build about 3 more.)
#
# It builds the release binaries (the gateway profile-guided, as the image
# ships it: scripts/pgo-build.sh), installs nginx (and jq) from Debian when
# missing, and drives the same closed-loop load (target/release/loadgen, one
# keep-alive connection per worker) at three targets:
#   direct   the mock provider itself                      127.0.0.1:18090
#   nginx    nginx, one worker, benches/nginx.conf         127.0.0.1:18081
#   gateway  kimi-gateway, TOKIO_WORKER_THREADS=1,          127.0.0.1:18080
#            every feature on (benches/gateway.toml: client keys, limits at
#            every scope; metrics; access log at info, written to a file)
# With taskset and 2+ CPUs the proxy under test runs on CPU 0 and the mock and
# the load generator share CPU 1. CPU 1 then does the same work per request
# for every target, so for small messages "direct" is about the most the load
# side can drive: a proxy close to it is not the bottleneck. (With 1 MiB
# bodies "direct" can come out lower than a proxy: the sender and the receiver
# of every megabyte then take turns on the one CPU.)
#
# Scenarios: a small non-stream request and a 10-chunk stream at 1, 64 and 512
# connections; a 200-chunk stream and a 1 MiB request body at 64 connections
# (--quick: the 64-connection ones only). Within each scenario the targets
# take turns for BENCH_ROUNDS rounds (direct, nginx, gateway, direct, ...),
# each proxy freshly started for its run, so its peak RSS (VmHWM; nginx: its
# worker) belongs to that run. The table gives each target's median over the
# rounds, and gateway/nginx (req/s and p99) the median of the rounds' own ratios: on a
# shared machine whose speed drifts by tens of percent within minutes, a
# ratio between runs seconds apart is what holds still. Then BENCH_HOLD_STREAMS (10,000, capped
# by the open-file limit: a proxy needs two descriptors per stream) slow
# streams are opened and held, and the proxy's VmRSS is read before and while
# they are open: the table's notes give KB per stream above idle.
#
# One-connection runs measure latency, and on a virtual machine an idle vCPU
# can take milliseconds to be woken by the host, which then swamps what a
# proxy adds (nginx fell from ~14,900 to ~1,000 req/s at one connection on
# such a host). During those runs a spinner of the lowest priority
# (`chrt --idle 0 loadgen --keep-awake`) holds each CPU, giving way at once to
# anything runnable: the CPUs never go idle, for every target alike. At 64
# and 512 connections the CPUs are busy anyway and no spinner runs.
#
# Prints one markdown table (also saved as BENCH_OUT/table.md; raw loadgen
# JSON, logs and nginx's prefix are under BENCH_OUT too).
#
# Environment: BENCH_SECS (measured seconds per run; default 4, --quick 3),
# BENCH_ROUNDS (default 3, --quick 2), BENCH_WARMUP (unmeasured seconds
# first; default 1), BENCH_HOLD_STREAMS
# (default 10000), BENCH_KEEP_AWAKE (default 1; 0: no spinners),
# BENCH_PGO (default 1: the gateway built as the image ships it,
# profile-guided by scripts/pgo-build.sh; 0: the plain release build),
# BENCH_OUT (default target/load-bench).
# Only loopback addresses are used; every process started here is stopped on exit.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
            exit 0
            ;;
        *)
            echo "load.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

if ((QUICK)); then SECS=${BENCH_SECS:-3}; else SECS=${BENCH_SECS:-4}; fi
if ((QUICK)); then ROUNDS=${BENCH_ROUNDS:-2}; else ROUNDS=${BENCH_ROUNDS:-3}; fi
WARMUP=${BENCH_WARMUP:-1}
HOLD=${BENCH_HOLD_STREAMS:-10000}
KEEP_AWAKE=${BENCH_KEEP_AWAKE:-1}
OUT=${BENCH_OUT:-$ROOT/target/load-bench}
BIN=$ROOT/target/release
PGO=${BENCH_PGO:-1}
MOCK_ADDR=127.0.0.1:18090
NGINX_ADDR=127.0.0.1:18081
GW_ADDR=127.0.0.1:18080
# Slow enough to hold, long enough (60 x 2 s) to outlast the measurement.
HOLD_DIRECTIVE="chunks=60 chunk_delay_ms=2000"

log() { printf '%s\n' "$*" >&2; }

# --- processes: every one started here is stopped on exit --------------------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() {
    local pid=$1 keep=() p
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# --- tools --------------------------------------------------------------------
SUDO=()
if ((EUID != 0)) && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
find_nginx() { command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }; }
missing=()
find_nginx >/dev/null || missing+=(nginx)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX_BIN=$(find_nginx)

log "building release binaries"
cargo build --release --bins --quiet
# The gateway measured is the build the image ships: profile-guided
# (scripts/pgo-build.sh, into target/pgo-release). BENCH_PGO=0: the plain
# release build.
if [[ $PGO == 1 ]]; then
    log "building the profile-guided gateway (scripts/pgo-build.sh)"
    GATEWAY_BIN="$(CARGO_TARGET_DIR="$ROOT/target/pgo-release" "$ROOT/scripts/pgo-build.sh" | tail -1)/kimi-gateway"
    GATEWAY_BUILD="profile-guided (scripts/pgo-build.sh)"
else
    GATEWAY_BIN="$BIN/kimi-gateway"
    GATEWAY_BUILD="plain release build (BENCH_PGO=0)"
fi

mkdir -p "$OUT/results"
rm -f "$OUT"/results/*.json "$OUT/rows.tsv" "$OUT/loadgen.log"

# A proxy holds two descriptors per open stream.
hard=$(ulimit -Hn)
if [[ $hard == unlimited ]]; then ulimit -n 1048576 2>/dev/null || true; else ulimit -n "$hard"; fi
FD_LIMIT=$(ulimit -n)
MAX_HOLD=$(((FD_LIMIT - 200) / 2))
HOLD_NOTE=""
if ((HOLD > MAX_HOLD)); then
    HOLD_NOTE="$HOLD streams asked, $MAX_HOLD held: open-file limit is $FD_LIMIT"
    HOLD=$MAX_HOLD
fi

PIN_PROXY=()
PIN_LOAD=()
PINNING="none (taskset missing or one CPU)"
if command -v taskset >/dev/null 2>&1 && (($(nproc) >= 2)); then
    PIN_PROXY=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
    PINNING="proxy on CPU 0; mock + loadgen on CPU 1"
fi

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
wait_port() {
    local _
    for _ in $(seq 1 200); do
        port_open "$1" && return 0
        sleep 0.05
    done
    log "nothing is listening on $1"
    return 1
}
for addr in $MOCK_ADDR $NGINX_ADDR $GW_ADDR; do
    if port_open "$addr"; then
        log "$addr is already in use; stop whatever listens there first"
        exit 1
    fi
done

# The nginx worker: the master's child.
child_of() {
    local parent=$1 stat _
    for _ in $(seq 1 100); do
        for stat in /proc/[0-9]*/stat; do
            # Field 4 is the parent pid (the command in field 2 has no spaces here).
            if [[ $(awk '{print $4}' "$stat" 2>/dev/null) == "$parent" ]]; then
                basename "$(dirname "$stat")"
                return 0
            fi
        done
        sleep 0.05
    done
    return 1
}

MOCK_PID="" NGINX_MASTER="" NGINX_PID="" GW_PID=""
start_mock() {
    "${PIN_LOAD[@]}" "$BIN/mock-provider" --listen "$MOCK_ADDR" --api-key mock-key --threads 1 \
        >"$OUT/mock.log" 2>&1 &
    MOCK_PID=$!
    PIDS+=("$MOCK_PID")
    wait_port "$MOCK_ADDR"
}
start_nginx() {
    rm -rf "$OUT/nginx"
    mkdir -p "$OUT/nginx/tmp"
    "${PIN_PROXY[@]}" "$NGINX_BIN" -p "$OUT/nginx/" -e "$OUT/nginx/error.log" \
        -c "$ROOT/benches/nginx.conf" >"$OUT/nginx/stdout.log" 2>&1 &
    NGINX_MASTER=$!
    PIDS+=("$NGINX_MASTER")
    wait_port "$NGINX_ADDR"
    NGINX_PID=$(child_of "$NGINX_MASTER")
}
stop_nginx() { stop_pid "$NGINX_MASTER"; NGINX_MASTER="" NGINX_PID=""; }
# Each start begins a fresh log, as nginx's does: kept across every run,
# a full benchmark's access lines came to ~6 GB.
start_gateway() {
    env -u KIMI_GATEWAY_CONFIG -u AIMLAPI_API_KEY -u AGENTSFLARE_API_KEY \
        MOONSHOT_API_KEY=mock-key MOONSHOT_BASE_URL="http://$MOCK_ADDR/moonshot/v1" \
        BENCH_CLIENT_KEY=mock-key TOKIO_WORKER_THREADS=1 RUST_LOG=info \
        "${PIN_PROXY[@]}" "$GATEWAY_BIN" --listen "$GW_ADDR" \
        --config "$ROOT/benches/gateway.toml" \
        >"$OUT/gateway-access.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_port "$GW_ADDR"
}
stop_gateway() { stop_pid "$GW_PID"; GW_PID=""; }

url_of() {
    case $1 in
        direct) echo "http://$MOCK_ADDR/moonshot/v1/chat/completions" ;;
        nginx) echo "http://$NGINX_ADDR/v1/chat/completions" ;;
        gateway) echo "http://$GW_ADDR/v1/chat/completions" ;;
    esac
}
pid_of() {
    case $1 in
        direct) echo "" ;;
        nginx) echo "$NGINX_PID" ;;
        gateway) echo "$GW_PID" ;;
    esac
}

status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# rows.tsv: scenario conns target round rps p50 p99 ttfb50 hwm_kb notes
add_row() { (IFS=$'\t'; echo "$*") >>"$OUT/rows.tsv"; }

RUN_NO=0
RUN_TOTAL=0
# Lowest-priority spinners, one per CPU, while one-connection runs measure
# latency (see the top of this file).
SPINNERS=()
KEEP_AWAKE_NOTE=""
if ((KEEP_AWAKE)) && ! command -v chrt >/dev/null 2>&1; then
    KEEP_AWAKE=0
    KEEP_AWAKE_NOTE="no chrt: one-connection runs without keep-awake spinners"
fi
((KEEP_AWAKE)) && KEEP_AWAKE_NOTE="one-connection runs: a SCHED_IDLE spinner held each CPU awake"
# --quick has no one-connection runs: nothing to say about them.
((QUICK)) && KEEP_AWAKE_NOTE=""
start_spinners() {
    ((KEEP_AWAKE)) || return 0
    local cpu
    for ((cpu = 0; cpu < $(nproc); cpu++)); do
        chrt --idle 0 taskset -c "$cpu" "$BIN/loadgen" --keep-awake &
        PIDS+=($!)
        SPINNERS+=($!)
    done
}
stop_spinners() {
    local pid
    for pid in "${SPINNERS[@]}"; do stop_pid "$pid"; done
    SPINNERS=()
}

# run_load SCENARIO CONNS TARGET ROUND [loadgen args...]
run_load() {
    local scen=$1 conns=$2 target=$3 round=$4
    shift 4
    local pid file
    file="$OUT/results/$(echo "$scen-c$conns-$target-r$round" | tr -c 'A-Za-z0-9.\n-' _).json"
    RUN_NO=$((RUN_NO + 1))
    case $target in
        nginx) start_nginx ;;
        gateway) start_gateway ;;
    esac
    pid=$(pid_of "$target")
    if ! "${PIN_LOAD[@]}" "$BIN/loadgen" --url "$(url_of "$target")" --connections "$conns" \
        --duration "$SECS" --warmup "$WARMUP" "$@" >"$file" 2>>"$OUT/loadgen.log"; then
        echo '{"requests":0,"errors":1,"first_error":"loadgen failed"}' >"$file"
    fi
    local hwm="" stream=0
    [[ -n $pid ]] && hwm=$(status_kb "$pid" VmHWM)
    case $target in
        nginx) stop_nginx ;;
        gateway) stop_gateway ;;
    esac
    [[ " $* " == *" --stream "* ]] && stream=1
    local fields
    fields=$(jq -r --argjson stream "$stream" '[
        (.rps // 0), (.latency_p50_ms // "—"), (.latency_p99_ms // "—"),
        (if $stream == 1 then (.ttfb_p50_ms // "—") else "—" end),
        (if (.errors // 0) > 0 then "\(.errors) errors of \(.requests) (\(.first_error))" else "" end)
        ] | map(tostring) | join("\t")' "$file")
    local rps p50 p99 ttfb notes
    IFS=$'\t' read -r rps p50 p99 ttfb notes <<<"$fields"
    add_row "$scen" "$conns" "$target" "$round" "$rps" "$p50" "$p99" "$ttfb" "$hwm" "$notes"
    log "[$RUN_NO/$RUN_TOTAL] $scen c=$conns $target (round $round): $rps req/s, p50 $p50 ms, p99 $p99 ms${notes:+, $notes}"
}

# hold_test TARGET: fresh proxy, idle RSS, HOLD open streams, RSS while held.
hold_test() {
    local target=$1 pid ready="$OUT/hold-ready.json" file="$OUT/results/hold-$1.json"
    case $target in
        nginx) start_nginx ;;
        gateway) start_gateway ;;
    esac
    pid=$(pid_of "$target")
    # Warm the proxy (first connections, lazily built state) before the idle reading.
    "${PIN_LOAD[@]}" "$BIN/loadgen" --url "$(url_of "$target")" --connections 4 --duration 1 \
        --warmup 0 --stream --mock chunks=3 >/dev/null 2>>"$OUT/loadgen.log" || true
    sleep 1
    local idle
    idle=$(status_kb "$pid" VmRSS)
    rm -f "$ready"
    log "holding $HOLD streams through $target (idle VmRSS ${idle} kB)"
    "${PIN_LOAD[@]}" "$BIN/loadgen" --url "$(url_of "$target")" --hold-streams "$HOLD" --stream \
        --mock "$HOLD_DIRECTIVE" --duration 600 --ready-file "$ready" \
        >"$file" 2>>"$OUT/loadgen.log" &
    local lg=$!
    PIDS+=("$lg")
    for _ in $(seq 1 1800); do
        [[ -s $ready ]] && break
        kill -0 "$lg" 2>/dev/null || break
        sleep 0.1
    done
    # Let buffers settle, then take the highest of a few readings.
    sleep 2
    local held=0 rss
    for _ in 1 2 3 4 5; do
        rss=$(status_kb "$pid" VmRSS)
        ((rss > held)) && held=$rss
        sleep 0.4
    done
    local hwm
    hwm=$(status_kb "$pid" VmHWM)
    kill -INT "$lg" 2>/dev/null || true
    wait "$lg" 2>/dev/null || true
    stop_pid "$lg"
    case $target in
        nginx) stop_nginx ;;
        gateway) stop_gateway ;;
    esac
    [[ -s $file ]] || echo '{"open":0,"failed":0,"first_error":"loadgen failed"}' >"$file"
    local open failed ttfb ramp first_error
    IFS=$'\t' read -r open failed ttfb ramp first_error <<<"$(jq -r '[
        (.open // 0), (.failed // 0), (.ttfb_p50_ms // "—"), (.ramp_secs // "—"),
        (.first_error // "")] | map(tostring) | join("\t")' "$file")"
    local per="—"
    ((open > 0)) && per=$(awk -v h="$held" -v i="$idle" -v n="$open" 'BEGIN {printf "%.1f", (h - i) / n}')
    local notes
    notes=$(awk -v i="$idle" -v h="$held" -v p="$per" -v o="$open" -v r="$ramp" \
        'BEGIN {printf "**%s KB/stream**: VmRSS %.1f MB idle, %.1f MB with %d open (opened in %s s)", p, i / 1024, h / 1024, o, r}')
    ((failed > 0)) && notes+="; $failed failed ($first_error)"
    add_row "open streams (slow)" "$HOLD" "$target" 1 "—" "—" "—" "$ttfb" "$hwm" "$notes"
    log "hold $target: $open open, $failed failed, idle ${idle} kB, held ${held} kB, $per KB/stream"
}

# --- the body for the large-request scenario: exactly 1 MiB -------------------
# A long prompt as clients send one: a conversation's history, ~200-byte
# messages with escaped quotes and newlines (many short strings for the
# gateway's body scan), then a last user message padded to 1 MiB in total.
BODY_1MIB="$OUT/body-1mib.json"
awk -v size=1048576 'BEGIN {
    out = "{\"model\":\"kimi-k2-turbo-preview\",\"max_tokens\":64,\"messages\":["
    last_open = "{\"role\":\"user\",\"content\":\"Summarise the conversation above."
    last_close = "\"}]}"
    for (i = 0; ; i++) {
        role = (i % 2 == 0) ? "user" : "assistant"
        message = "{\"role\":\"" role "\",\"content\":\"Message " i ": please summarise the \\\"quarterly\\\" report and list three risks, one per line.\\nlorem ipsum dolor sit amet lorem ipsum dolor sit amet lorem ipsum dolor sit amet\"},"
        if (length(out) + length(message) + length(last_open) + length(last_close) > size) break
        out = out message
    }
    pad = size - length(out) - length(last_open) - length(last_close)
    out = out last_open
    for (; pad > 0; pad--) out = out " "
    printf "%s%s", out, last_close
}' >"$BODY_1MIB"

# --- scenarios: label | connections | loadgen args -----------------------------
SCENARIOS=()
if ((QUICK)); then
    SCENARIOS+=("non-stream|64|" "stream 10 chunks|64|--stream --mock chunks=10")
    SCENARIOS+=("stream 200 chunks|64|--stream --mock chunks=200" "1 MiB request body|64|--body-file $BODY_1MIB")
else
    for c in 1 64 512; do SCENARIOS+=("non-stream|$c|"); done
    for c in 1 64 512; do SCENARIOS+=("stream 10 chunks|$c|--stream --mock chunks=10"); done
    SCENARIOS+=("stream 200 chunks|64|--stream --mock chunks=200" "1 MiB request body|64|--body-file $BODY_1MIB")
fi
TARGETS=(direct nginx gateway)
RUN_TOTAL=$((${#SCENARIOS[@]} * ${#TARGETS[@]} * ROUNDS))

log "load runs: ${#SCENARIOS[@]} scenarios x ${#TARGETS[@]} targets x $ROUNDS rounds, ${WARMUP}+${SECS} s each; $PINNING"
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_mock
for spec in "${SCENARIOS[@]}"; do
    IFS='|' read -r scen conns args <<<"$spec"
    read -r -a argv <<<"$args"
    ((conns == 1)) && start_spinners
    for round in $(seq 1 "$ROUNDS"); do
        for target in "${TARGETS[@]}"; do
            run_load "$scen" "$conns" "$target" "$round" "${argv[@]}"
        done
    done
    stop_spinners
done

hold_test nginx
hold_test gateway

# --- the table -------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
nginx_version=$("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///')
{
    echo "kimi-gateway load benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) x ${cpu:-unknown CPU}," \
        "Linux $(uname -r), nginx $nginx_version, $ROUNDS rounds of ${WARMUP} s warm-up + ${SECS} s per target," \
        "pinning: $PINNING${KEEP_AWAKE_NOTE:+; $KEEP_AWAKE_NOTE}, load average at start $LOAD_AT_START;" \
        "gateway: $GATEWAY_BUILD."
    echo "req/s, p50, p99 (whole response) and TTFB (first body byte, streams): median over the rounds." \
        "Peak RSS: highest VmHWM of the proxy (nginx: its worker), started afresh for each run." \
        "gateway/nginx req/s and p99: medians of each round's ratios (the rounds' ratios in the notes; p99 below 1 is lower than nginx's).${HOLD_NOTE:+ $HOLD_NOTE.}"
    echo
    echo "| scenario | conns | target | req/s | p50 ms | p99 ms | TTFB p50 ms | peak RSS MB | gateway/nginx req/s | gateway/nginx p99 | notes |"
    echo "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|"
    awk -F'\t' -f "$ROOT/benches/load_table.awk" "$OUT/rows.tsv"
} >"$OUT/table.md"
echo
cat "$OUT/table.md"
