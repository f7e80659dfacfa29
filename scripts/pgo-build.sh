#!/usr/bin/env bash
# Builds the release binaries with profile-guided optimisation (PGO), the
# build the container image ships and the load benchmark measures:
#
#   1. an instrumented build (rustc -Cprofile-generate) of the gateway, the
#      mock provider and the load generator;
#   2. a training run: the instrumented gateway, with every feature on
#      (benches/gateway.toml: client keys, limits at every scope, metrics,
#      access log at info), in front of the mock provider, serving
#      non-stream requests, 10- and 200-event streams and a 64 KiB
#      conversation at 64 connections, and requests one at a time;
#   3. the gateway's counts merged with llvm-profdata (Debian's llvm-N
#      package; installed when missing) and the release build redone with
#      them (rustc -Cprofile-use): the hot path's branches, inlining and code
#      layout follow what the training run did.
#
#   scripts/pgo-build.sh [--target TRIPLE] [--bin NAME]...
#
# Default binaries: kimi-gateway. The final build goes where a plain
# `cargo build --release` would (CARGO_TARGET_DIR, default target/); the
# instrumented build and the profile are kept under $CARGO_TARGET_DIR/pgo.
# RUSTFLAGS, if set, is added to both builds (the image adds crt-static).
# The last line printed is the directory holding the built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TRIPLE=""
BINS=()
while (($#)); do
    case $1 in
    --target) TRIPLE=$2; shift 2 ;;
    --bin) BINS+=("$2"); shift 2 ;;
    *) echo "pgo-build: unknown argument $1" >&2; exit 2 ;;
    esac
done
((${#BINS[@]})) || BINS=(kimi-gateway)

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PGO_DIR="$TARGET_DIR/pgo"
GEN_DIR="$PGO_DIR/generate"
RAW_DIR="$PGO_DIR/raw"
PROFILE="$PGO_DIR/kimi-gateway.profdata"
TARGET_ARGS=()
[ -n "$TRIPLE" ] && TARGET_ARGS=(--target "$TRIPLE")
out_dir() { if [ -n "$TRIPLE" ]; then echo "$1/$TRIPLE/release"; else echo "$1/release"; fi; }
log() { printf 'pgo-build: %s\n' "$*" >&2; }

# --- llvm-profdata: the one of rustc's LLVM version if there is one, else the
# newest installed, if it is recent enough, else Debian's newest llvm-N
# package (Debian 12 has llvm-22, Rust 1.95's own LLVM, in its security
# updates). An older one reads the raw profiles of a newer LLVM as long as
# their format version is one it knows: LLVM 19 reads those of LLVM 22,
# LLVM 14 does not. If it cannot, the merge below says so.
MIN_PROFDATA_LLVM=19
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
find_profdata() {
    local candidate
    for candidate in "llvm-profdata-$llvm_major" "/usr/lib/llvm-$llvm_major/bin/llvm-profdata"; do
        command -v "$candidate" >/dev/null 2>&1 && { command -v "$candidate"; return; }
    done
    # shellcheck disable=SC2012
    { ls -d /usr/lib/llvm-*/bin/llvm-profdata 2>/dev/null || true; } | sort -V | tail -1
}
# Its LLVM major version: from --version, or (LLVM 14's has no --version)
# from the directory it is installed in; 0 when neither tells.
profdata_major() {
    local version
    version=$({ "$1" --version 2>/dev/null || true; } | sed -n 's/.*LLVM version \([0-9]*\).*/\1/p' | head -1)
    [ -n "$version" ] || version=$(readlink -f "$1" | sed -n 's|.*/llvm-\([0-9]*\)/.*|\1|p')
    echo "${version:-0}"
}
PROFDATA=$(find_profdata)
major=""
[ -n "$PROFDATA" ] && major=$(profdata_major "$PROFDATA")
if [ "${major:-0}" -lt "$MIN_PROFDATA_LLVM" ]; then
    SUDO=()
    [ "$(id -u)" = 0 ] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq
    package=$(apt-cache search --names-only '^llvm-[0-9]+$' | awk '{print $1}' | sort -V | tail -1)
    [ -n "$package" ] || { log "no llvm-N package to install llvm-profdata from"; exit 1; }
    log "installing $package (llvm-profdata) from Debian"
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    PROFDATA=$(find_profdata)
fi
[ -n "$PROFDATA" ] || { log "no llvm-profdata"; exit 1; }
log "llvm-profdata: $PROFDATA (LLVM $(profdata_major "$PROFDATA"); rustc's LLVM: $llvm_major)"

# --- 1. instrumented build ----------------------------------------------------
log "instrumented build"
rm -rf "$RAW_DIR"
mkdir -p "$RAW_DIR"
# Build scripts are instrumented too; their counts go to a directory of
# their own and are not used.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$PGO_DIR/build-scripts" CARGO_TARGET_DIR="$GEN_DIR" \
    cargo build --release --locked --quiet "${TARGET_ARGS[@]}" \
    --bin kimi-gateway --bin mock-provider --bin loadgen
GEN_BIN=$(out_dir "$GEN_DIR")

# --- 2. training run ----------------------------------------------------------
MOCK_ADDR=127.0.0.1:18690
GW_ADDR=127.0.0.1:18680
PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_port() {
    local _
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return; sleep 0.05; done
    log "nothing listens on $1"
    exit 1
}
# Only the gateway's counts are kept (the mock's and load generator's go
# elsewhere). %p: the gateway restarts itself once at start-up (glibc's
# malloc settings), and only the restarted process exits.
LLVM_PROFILE_FILE="$PGO_DIR/tools/%p.profraw" "$GEN_BIN/mock-provider" \
    --listen "$MOCK_ADDR" --threads 1 >"$PGO_DIR/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$MOCK_ADDR"
env -u KIMI_GATEWAY_CONFIG -u AIMLAPI_API_KEY -u AGENTSFLARE_API_KEY \
    LLVM_PROFILE_FILE="$RAW_DIR/gateway-%p.profraw" \
    MOONSHOT_API_KEY=mock-key MOONSHOT_BASE_URL="http://$MOCK_ADDR/moonshot/v1" \
    BENCH_CLIENT_KEY=mock-key TOKIO_WORKER_THREADS=1 RUST_LOG=info \
    "$GEN_BIN/kimi-gateway" --listen "$GW_ADDR" --config "$ROOT/benches/gateway.toml" \
    >"$PGO_DIR/gateway.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_port "$GW_ADDR"

# A 64 KiB conversation (the body scan over many short strings).
BODY="$PGO_DIR/conversation.json"
{
    printf '{"model":"kimi-k2-turbo-preview","max_tokens":64,"messages":['
    for i in $(seq 460); do
        printf '{"role":"user","content":"Message %d: summarise the \\"quarterly\\" report.\\nlorem ipsum dolor sit amet lorem ipsum dolor sit amet lorem ipsum"},' "$i"
    done
    printf '{"role":"user","content":"Summarise the conversation above."}]}'
} >"$BODY"

train() {
    local what=$1
    shift
    local result
    result=$(LLVM_PROFILE_FILE="$PGO_DIR/tools/%p.profraw" "$GEN_BIN/loadgen" \
        --url "http://$GW_ADDR/v1/chat/completions" --warmup 0 "$@")
    # The training must have been served, every request of it: a profile of
    # refusals (401, 429) or provider errors would tune the error path.
    local ok errors
    ok=$(grep -o '"requests": *[0-9]*' <<<"$result" | grep -o '[0-9]*$' || echo 0)
    errors=$(grep -o '"errors": *[0-9]*' <<<"$result" | grep -o '[0-9]*$' || echo unknown)
    if [ "${ok:-0}" -lt 100 ] || [ "$errors" != 0 ]; then
        log "training run '$what': ${ok:-0} requests, $errors errors: $result"
        exit 1
    fi
    log "trained: $what ($ok requests)"
}
train "non-stream, 64 connections" --connections 64 --duration 4
train "10-event streams, 64 connections" --connections 64 --duration 3 --stream --mock chunks=10
train "200-event streams, 64 connections" --connections 64 --duration 2 --stream --mock chunks=200
train "64 KiB conversation, 64 connections" --connections 64 --duration 2 --body-file "$BODY"
train "non-stream, one connection" --connections 1 --duration 1
train "10-event streams, one connection" --connections 1 --duration 1 --stream --mock chunks=10
kill -INT "$GW"
wait "$GW" || { log "the instrumented gateway did not stop cleanly (log: $PGO_DIR/gateway.log)"; exit 1; }
# Its access log: one line per training request, tens of megabytes.
rm -f "$PGO_DIR/gateway.log"

# --- 3. merge, and the optimised build --------------------------------------
shopt -s nullglob
raws=("$RAW_DIR"/*.profraw)
((${#raws[@]})) || { log "the gateway wrote no profile"; exit 1; }
if ! "$PROFDATA" merge -o "$PROFILE" "${raws[@]}"; then
    log "$PROFDATA cannot read the profile of rustc's LLVM $llvm_major: install llvm-profdata of LLVM $llvm_major or newer"
    exit 1
fi
log "profile: $PROFILE"

log "optimised build of ${BINS[*]}"
bin_args=()
for bin in "${BINS[@]}"; do bin_args+=(--bin "$bin"); done
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PROFILE" CARGO_TARGET_DIR="$TARGET_DIR" \
    cargo build --release --locked --quiet "${TARGET_ARGS[@]}" "${bin_args[@]}"
out_dir "$TARGET_DIR"
