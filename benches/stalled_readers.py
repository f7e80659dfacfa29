#!/usr/bin/env python3
"""Memory the gateway holds per client that stops reading its stream.

    cargo build --release --bins && python3 benches/stalled_readers.py

Starts the mock provider and the gateway (target/release, or
BENCH_GATEWAY_BIN / BENCH_MOCK_BIN) on free local ports, then opens, in two
steps, SMALL and LARGE streams whose clients send the request and never read
(a 4 KiB receive buffer), while the mock sends long streams of 4,000-byte
events as fast as it can. Once the gateway's resident size is steady it
prints its growth per stalled stream between the two steps (the slope, so
the process's own start-up memory is left out). The gateway holds a stalled
stream until `server.client_idle_secs` (75 s by default) cuts it. It also
prints what the kernel holds queued for those clients (the gateway's
connections' unacknowledged bytes in /proc/net/tcp), which the gateway's
RSS does not show but a container's memory accounting charges to it: that
is bounded by `server.client_send_buffer_bytes`.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.environ.get("BENCH_GATEWAY_BIN", os.path.join(ROOT, "target/release/kimi-gateway"))
MOCK = os.environ.get("BENCH_MOCK_BIN", os.path.join(ROOT, "target/release/mock-provider"))
SMALL, LARGE = 100, 500
DIRECTIVE = "hi [mock chunks=3000 chunk_bytes=4000]"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_for_port(port, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def steady_rss(pid):
    """The resident size once it has moved less than 1% over a second."""
    last = rss_kb(pid)
    for _ in range(60):
        time.sleep(1.0)
        now = rss_kb(pid)
        if abs(now - last) <= last / 100:
            return now
        last = now
    return last


def kernel_queued(port):
    """Bytes sent and not yet acknowledged on the gateway's client
    connections (local port `port`, established), and how many there are."""
    queued, connections = 0, 0
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
                queued += int(fields[4].split(":")[0], 16)
                connections += 1
    return queued, connections


def stall(port, n, body):
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        sockets.append(s)
    return sockets


def main():
    mock_port, gateway_port = free_port(), free_port()
    config = "".join(
        f'[providers.{name}]\nbase_url = "http://127.0.0.1:{mock_port}/{name}/v1"\n'
        for name in ("moonshot", "aimlapi", "agentsflare")
    )
    env = dict(os.environ, MOONSHOT_API_KEY="mock-key", AIMLAPI_API_KEY="mock-key",
               AGENTSFLARE_API_KEY="mock-key", RUST_LOG="warn")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as file:
        file.write(config)
        file.flush()
        mock = subprocess.Popen([MOCK, "--listen", f"127.0.0.1:{mock_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gateway = subprocess.Popen(
            [GATEWAY, "--config", file.name, "--listen", f"127.0.0.1:{gateway_port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(mock_port)
            wait_for_port(gateway_port)
            body = json.dumps({"model": "kimi-k2-turbo-preview", "stream": True,
                               "messages": [{"role": "user", "content": DIRECTIVE}]}).encode()
            held = stall(gateway_port, SMALL, body)
            small = steady_rss(gateway.pid)
            held += stall(gateway_port, LARGE - SMALL, body)
            large = steady_rss(gateway.pid)
            per = (large - small) / (LARGE - SMALL)
            print(f"gateway RSS with {SMALL} stalled streams: {small / 1024:.1f} MB, "
                  f"with {LARGE}: {large / 1024:.1f} MB; {per:.1f} KB per stalled stream")
            queued, connections = kernel_queued(gateway_port)
            print(f"kernel send queues: {queued / 1024 / 1024:.1f} MB for {connections} stalled "
                  f"streams; {queued / 1024 / max(connections, 1):.1f} KB each")
            for s in held:
                s.close()
        finally:
            gateway.terminate()
            mock.terminate()
            gateway.wait()
            mock.wait()


if __name__ == "__main__":
    sys.exit(main())
