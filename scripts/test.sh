#!/usr/bin/env bash
# The project's test command: installs what the suites need when it is
# missing, then runs the Rust suites and the real-client suites (the official
# OpenAI Python and Node SDKs, LangChain) against the built binaries.
#
#   scripts/test.sh            everything
#   scripts/test.sh --rust     only the Rust suites
set -euo pipefail
cd "$(dirname "$0")/.."

only_rust=false
[ "${1:-}" = "--rust" ] && only_rust=true

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The Redis-backed rate-limit tests start their own redis-server.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (Redis-backed rate-limit tests)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
  # The tests start their own server; the packaged service is not needed.
  $sudo_cmd service redis-server stop >/dev/null 2>&1 || true
fi

echo "== building binaries"
cargo build --bins

echo "== Rust unit and integration tests"
cargo test --all-targets

if ! $only_rust && [ -f tests/clients/run.sh ]; then
  echo "== real-client suites (OpenAI Python + Node SDKs, LangChain)"
  KIMI_GATEWAY_BIN="$PWD/target/debug/kimi-gateway" \
  MOCK_PROVIDER_BIN="$PWD/target/debug/mock-provider" \
    bash tests/clients/run.sh
fi
echo "== all suites passed"
