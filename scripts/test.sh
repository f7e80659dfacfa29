#!/usr/bin/env bash
# The project's test command: installs what the suites need when it is
# missing, then runs the Rust suites and the real-client suites (the official
# OpenAI Python and Node SDKs, LangChain) against the built binaries.
#
#   scripts/test.sh            everything
#   scripts/test.sh --rust     only the Rust suites (cargo-nextest when it is
#                              installed, else cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

only_rust=false
[ "${1:-}" = "--rust" ] && only_rust=true

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# System packages the suites start for real: Prometheus (and promtool) for the
# metrics tests, Redis for the shared rate limits.
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # The package starts system services; the tests run their own instances.
    (systemctl stop prometheus redis-server || service prometheus stop || true) >/dev/null 2>&1
  else
    echo "missing: ${need[*]} (install Debian's packages: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

echo "== building binaries"
cargo build --bins

echo "== Rust unit and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
  # A process per test, and a test that hangs fails by name after 180 s
  # (.config/nextest.toml) rather than holding the run.
  cargo nextest run --lib --bins --tests --no-fail-fast
  # The benchmarks' own checks (alloc_per_chunk's) run once in test mode.
  cargo test --benches
else
  cargo test --all-targets
fi

if ! $only_rust && [ -f tests/clients/run.sh ]; then
  echo "== real-client suites (OpenAI Python + Node SDKs, LangChain)"
  KIMI_GATEWAY_BIN="$PWD/target/debug/kimi-gateway" \
  MOCK_PROVIDER_BIN="$PWD/target/debug/mock-provider" \
    bash tests/clients/run.sh
fi
echo "== all suites passed"
