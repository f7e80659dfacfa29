#!/usr/bin/env bash
# Runs the real-client compatibility suites against kimi-gateway: the Python
# one (official openai package and LangChain, with pytest) and the Node one
# (official openai npm package, with node --test).
#
# Builds nothing: it expects the binaries, from KIMI_GATEWAY_BIN and
# MOCK_PROVIDER_BIN or else target/debug/ (run `cargo build --bins` first).
# Creates tests/clients/python/.venv when missing. Both suites always run; the
# exit status is non-zero if either fails.

set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export KIMI_GATEWAY_BIN="${KIMI_GATEWAY_BIN:-$ROOT/target/debug/kimi-gateway}"
export MOCK_PROVIDER_BIN="${MOCK_PROVIDER_BIN:-$ROOT/target/debug/mock-provider}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

die() {
    echo "run.sh: $*" >&2
    exit 2
}

for bin in "$KIMI_GATEWAY_BIN" "$MOCK_PROVIDER_BIN"; do
    [ -x "$bin" ] || die "$bin is missing: run \`cargo build --bins\` or set KIMI_GATEWAY_BIN / MOCK_PROVIDER_BIN"
done

# --- Python -----------------------------------------------------------------
PY_DIR="$HERE/python"
VENV="$PY_DIR/.venv"

ensure_venv_module() {
    python3 -c 'import ensurepip, venv' 2>/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "run.sh: installing python3-venv" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -c 'import ensurepip, venv' 2>/dev/null && return 0
    fi
    die "python3 cannot create a virtual environment: install python3-venv"
}

if [ ! -x "$VENV/bin/python" ]; then
    command -v python3 >/dev/null || die "python3 is not installed"
    ensure_venv_module
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "could not create $VENV"
fi
"$VENV/bin/python" -m pip install -q -r "$PY_DIR/requirements.txt" || die "pip install failed"

(cd "$PY_DIR" && "$VENV/bin/python" -m pytest -q)
python_status=$?

# --- Node -------------------------------------------------------------------
NODE_DIR="$HERE/node"
command -v node >/dev/null || die "node is not installed"
(cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"

(cd "$NODE_DIR" && node --test --test-timeout=120000)
node_status=$?

echo "run.sh: python suite exit $python_status, node suite exit $node_status"
[ "$python_status" = 0 ] && [ "$node_status" = 0 ]
