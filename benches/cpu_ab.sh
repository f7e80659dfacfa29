#!/usr/bin/env bash
# CPU per request of two gateway builds, in interleaved rounds, with nginx
# as the reference: what a build change (compiler flags, profile-guided
# optimisation, a code change) buys, measured where it counts (the proxy's
# own core) and in the same minutes for both builds.
#
#   bash benches/cpu_ab.sh                       # plain release build vs PGO build
#   bash benches/cpu_ab.sh BASELINE CANDIDATE    # two gateway binaries
#   bash benches/cpu_ab.sh A B -- --stream --mock chunks=10   # other load
#
# Without arguments it builds both: `cargo build --release` (target/release)
# and scripts/pgo-build.sh (target/pgo-release). Each round starts nginx,
# the baseline and the candidate in turn, each pinned to CPU 0 (the mock
# provider and the load generator on CPU 1, as in benches/load.sh), drives
# AB_SECS seconds of closed-loop load at AB_CONNECTIONS connections, and
# reads the proxy's user and system CPU time from /proc (and the load
# generator's p99 latency), and what the load side spent per request (the
# mock provider's CPU time plus the load generator's) with how busy each
# core was: at 64 connections the shared load core, not the proxy's, is
# the one that is full, so a proxy's answers (how many header fields the
# load generator parses, how often the proxy's core goes idle and must be
# woken) move req/s as well as its own CPU does. Prints each round and a
# table of medians;
# candidate/baseline (req/s, CPU and p99) is the median of the rounds' own
# ratios (this machine's speed drifts within minutes, a round's targets run
# seconds apart), and so is each build's p99 against nginx's, with the
# number of rounds in which it was no worse.
#
# Environment: AB_ROUNDS (default 6), AB_SECS (default 5), AB_CONNECTIONS
# (default 64), AB_OUT (default target/cpu-ab). Loopback only; every process
# started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${AB_ROUNDS:-6}
SECS=${AB_SECS:-5}
CONNS=${AB_CONNECTIONS:-64}
OUT=${AB_OUT:-$ROOT/target/cpu-ab}
log() { printf '[cpu-ab] %s\n' "$*" >&2; }

BASELINE=""
CANDIDATE=""
LOAD=()
if (($#)) && [ "$1" != -- ]; then
    BASELINE=$1
    CANDIDATE=${2:?"usage: cpu_ab.sh [BASELINE CANDIDATE] [-- loadgen args]"}
    shift 2
fi
[ "${1:-}" = -- ] && shift
LOAD=("$@")

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX_BIN=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

log "building release binaries"
cargo build --release --locked --quiet --bins
BIN="$ROOT/target/release"
if [ -z "$BASELINE" ]; then
    BASELINE="$BIN/kimi-gateway"
    log "building the PGO gateway (scripts/pgo-build.sh)"
    CANDIDATE="$(CARGO_TARGET_DIR="$ROOT/target/pgo-release" scripts/pgo-build.sh | tail -1)/kimi-gateway"
fi
for b in "$BASELINE" "$CANDIDATE"; do [ -x "$b" ] || { log "not an executable: $b"; exit 1; }; done

PIN_PROXY=()
PIN_LOAD=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    PIN_PROXY=(taskset -c 0)
    PIN_LOAD=(taskset -c 1)
fi

mkdir -p "$OUT/nginx/tmp"
rm -f "$OUT/rounds.tsv"
MOCK_ADDR=127.0.0.1:18090
PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() {
    local _
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return; sleep 0.05; done
    log "nothing listens on $1"
    exit 1
}
wait_closed() {
    local _
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null || return 0; sleep 0.05; done
}
# utime and stime of a process, in clock ticks.
ticks() { awk '{print $14 + 0, $15 + 0}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
# Busy and idle ticks of the proxy's core (0) and the load core (1).
core_ticks() {
    awk '$1 == "cpu0" || $1 == "cpu1" { printf "%d %d ", $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat
}

"${PIN_LOAD[@]}" "$BIN/mock-provider" --listen "$MOCK_ADDR" --api-key mock-key --threads 1 >"$OUT/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$MOCK_ADDR"

run_target() { # name round
    local name=$1 round=$2 pid addr proxy
    case $name in
    nginx)
        addr=127.0.0.1:18081
        "${PIN_PROXY[@]}" "$NGINX_BIN" -p "$OUT/nginx/" -e "$OUT/nginx/error.log" \
            -c "$ROOT/benches/nginx.conf" >"$OUT/nginx/stdout.log" 2>&1 &
        proxy=$!
        wait_port "$addr"
        pid=$(pgrep -P "$proxy" | head -1)
        ;;
    *)
        addr=127.0.0.1:18082
        local bin=$BASELINE
        [ "$name" = candidate ] && bin=$CANDIDATE
        env -u KIMI_GATEWAY_CONFIG -u AIMLAPI_API_KEY -u AGENTSFLARE_API_KEY \
            MOONSHOT_API_KEY=mock-key MOONSHOT_BASE_URL="http://$MOCK_ADDR/moonshot/v1" \
            BENCH_CLIENT_KEY=mock-key TOKIO_WORKER_THREADS=1 RUST_LOG=info \
            "${PIN_PROXY[@]}" "$bin" --listen "$addr" --config "$ROOT/benches/gateway.toml" \
            >"$OUT/gateway.log" 2>&1 &
        proxy=$!
        wait_port "$addr"
        pid=$proxy
        ;;
    esac
    PIDS+=("$proxy")
    local before after requests mock_before mock_after cores_before cores_after
    before=$(ticks "$pid")
    mock_before=$(ticks "$MOCK_PID")
    cores_before=$(core_ticks)
    "${PIN_LOAD[@]}" "$BIN/loadgen" --url "http://$addr/v1/chat/completions" \
        --connections "$CONNS" --duration "$SECS" --warmup 0 "${LOAD[@]}" >"$OUT/load.json"
    after=$(ticks "$pid")
    mock_after=$(ticks "$MOCK_PID")
    cores_after=$(core_ticks)
    requests=$(jq .requests "$OUT/load.json")
    # Refusals and failures are cheap: CPU per request would flatter them.
    local errors
    errors=$(jq .errors "$OUT/load.json")
    if [ "$errors" != 0 ]; then
        log "$name answered $errors of $requests requests with errors ($(jq -r .first_error "$OUT/load.json")): stopping"
        exit 1
    fi
    kill "$proxy"
    wait "$proxy" 2>/dev/null || true
    wait_closed "$addr"
    read -r u0 s0 <<<"$before"
    read -r u1 s1 <<<"$after"
    local p99 loadgen_cpu mu0 ms0 mu1 ms1
    p99=$(jq .latency_p99_ms "$OUT/load.json")
    loadgen_cpu=$(jq .cpu_seconds "$OUT/load.json")
    read -r mu0 ms0 <<<"$mock_before"
    read -r mu1 ms1 <<<"$mock_after"
    awk -v n="$name" -v r="$round" -v q="$requests" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
        -v hz="$HZ" -v secs="$SECS" -v p99="$p99" -v mock=$((mu1 + ms1 - mu0 - ms0)) \
        -v loadgen="$loadgen_cpu" -v before="$cores_before" -v after="$cores_after" 'BEGIN {
            split(before, b, " "); split(after, a, " ")
            busy0 = a[1] - b[1]; idle0 = a[2] - b[2]; busy1 = a[3] - b[3]; idle1 = a[4] - b[4]
            printf "%s\t%d\t%.0f\t%.2f\t%.2f\t%.3f\t%.2f\t%.0f\t%.0f\n", n, r, q / secs,
                u / hz * 1e6 / q, s / hz * 1e6 / q, p99, (mock / hz + loadgen) * 1e6 / q,
                100 * busy0 / (busy0 + idle0 + 1e-9), 100 * busy1 / (busy1 + idle1 + 1e-9)
        }' | tee -a "$OUT/rounds.tsv" | awk -F'\t' '{ printf "[cpu-ab] round %d %-9s %7d req/s  user %5.2f us  sys %5.2f us per request  p99 %.3f ms  load side %5.2f us per request  cores busy %d%% %d%%\n", $2, $1, $3, $4, $5, $6, $7, $8, $9 }' >&2
}

log "baseline:  $BASELINE"
log "candidate: $CANDIDATE"
log "$ROUNDS rounds of ${SECS}s at $CONNS connections${LOAD[*]:+, loadgen ${LOAD[*]}}"
for round in $(seq "$ROUNDS"); do
    for name in nginx baseline candidate; do run_target "$name" "$round"; done
done

# Medians per target, and the median of each round's candidate/baseline.
awk -F'\t' '
function median(list, n,   i, j, t, a) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ rps[$1] = rps[$1] " " $3; user[$1] = user[$1] " " $4; sys[$1] = sys[$1] " " $5; p99[$1] = p99[$1] " " $6; load[$1] = load[$1] " " $7; busy0[$1] = busy0[$1] " " $8; busy1[$1] = busy1[$1] " " $9; cpu[$1, $2] = $4 + $5; r[$1, $2] = $3; tail[$1, $2] = $6; rounds[$2] = 1 }
END {
    for (k in rounds) {
        ratio_rps = ratio_rps " " r["candidate", k] / r["baseline", k]
        ratio_cpu = ratio_cpu " " cpu["candidate", k] / cpu["baseline", k]
        ratio_p99 = ratio_p99 " " tail["candidate", k] / tail["baseline", k]
        base_nginx = base_nginx " " tail["baseline", k] / tail["nginx", k]
        cand_nginx = cand_nginx " " tail["candidate", k] / tail["nginx", k]
        base_wins += tail["baseline", k] <= tail["nginx", k]
        cand_wins += tail["candidate", k] <= tail["nginx", k]
        n_rounds++
    }
    print "| target | req/s | user µs/request | system µs/request | p99 ms | load side µs/request | proxy core busy | load core busy |"
    print "|---|---|---|---|---|---|---|---|"
    split("nginx baseline candidate", order, " ")
    for (i = 1; i <= 3; i++) {
        t = order[i]
        printf "| %s | %.0f | %.2f | %.2f | %.3f | %.2f | %.0f%% | %.0f%% |\n", t, median(rps[t]), median(user[t]), median(sys[t]), median(p99[t]), median(load[t]), median(busy0[t]), median(busy1[t])
    }
    printf "\ncandidate/baseline (median of the rounds): req/s %.2fx, CPU per request %.2fx, p99 %.2fx\n", median(ratio_rps), median(ratio_cpu), median(ratio_p99)
    printf "p99 against nginx (median of the rounds; rounds no worse): baseline %.2fx (%d of %d), candidate %.2fx (%d of %d)\n", median(base_nginx), base_wins, n_rounds, median(cand_nginx), cand_wins, n_rounds
}' "$OUT/rounds.tsv" | tee "$OUT/table.md"
