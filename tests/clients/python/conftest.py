"""Session fixtures: a mock provider and a kimi-gateway, each a real process on
a free loopback port, and OpenAI clients pointed at the gateway.

The binaries come from `MOCK_PROVIDER_BIN` and `KIMI_GATEWAY_BIN`, defaulting
to `target/debug/mock-provider` and `target/debug/kimi-gateway` under the
repository root. The gateway runs with `tests/clients/gateway.toml` (one
attempt per request, no circuit breaking). Both processes are stopped when the
session ends, and their working directory (with both logs) is removed unless a
test failed or `KIMI_GATEWAY_KEEP_TEST_LOGS` is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import openai
import pytest

from support import CLIENT_KEY, PROVIDERS, REQUEST_TIMEOUT, Provider

REPO_ROOT = Path(__file__).resolve().parents[3]
GATEWAY_CONFIG = Path(__file__).resolve().parents[1] / "gateway.toml"
PROVIDER_KEY = "mock-key"
STARTUP_SECONDS = 30.0

# The servers are on loopback: never send their traffic through a proxy.
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))


def binary(env_var: str, default: str) -> Path:
    """The path of a binary named by `env_var`, else `target/debug/<default>`."""
    path = Path(os.environ.get(env_var) or REPO_ROOT / "target" / "debug" / default)
    if not path.is_file():
        pytest.exit(
            f"{path} not found: run `cargo build --bins` or set {env_var}", returncode=2
        )
    return path


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ok(url: str, process: subprocess.Popen, log: Path) -> None:
    """Polls `url` until it answers 200; fails fast if `process` exits."""
    deadline = time.monotonic() + STARTUP_SECONDS
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.exit(
                f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()}",
                returncode=2,
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            last_error = err
        time.sleep(0.05)
    pytest.exit(f"{url} did not answer within {STARTUP_SECONDS}s ({last_error}):\n{log.read_text()}", returncode=2)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class Servers:
    gateway_url: str
    mock_url: str
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """What an OpenAI client uses as its `base_url`."""
        return f"{self.gateway_url}/v1"


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest) -> Iterator[Servers]:
    mock_bin = binary("MOCK_PROVIDER_BIN", "mock-provider")
    gateway_bin = binary("KIMI_GATEWAY_BIN", "kimi-gateway")
    workdir = Path(tempfile.mkdtemp(prefix="kimi-gateway-clients-"))
    processes: list[subprocess.Popen] = []
    try:
        mock_port = free_port()
        mock_url = f"http://127.0.0.1:{mock_port}"
        mock_log = workdir / "mock-provider.log"
        with mock_log.open("wb") as out:
            mock = subprocess.Popen(
                [str(mock_bin), "--listen", f"127.0.0.1:{mock_port}", "--api-key", PROVIDER_KEY],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        processes.append(mock)
        wait_until_ok(f"{mock_url}/moonshot/v1/models", mock, mock_log)

        env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_GATEWAY_")}
        for name in ("moonshot", "aimlapi", "agentsflare"):
            env[f"{name.upper()}_API_KEY"] = PROVIDER_KEY
            env[f"{name.upper()}_BASE_URL"] = f"{mock_url}/{name}/v1"
        gateway_port = free_port()
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        gateway_log = workdir / "kimi-gateway.log"
        with gateway_log.open("wb") as out:
            gateway = subprocess.Popen(
                [
                    str(gateway_bin),
                    "--config",
                    str(GATEWAY_CONFIG),
                    "--listen",
                    f"127.0.0.1:{gateway_port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=env,
            )
        processes.append(gateway)
        wait_until_ok(f"{gateway_url}/healthz", gateway, gateway_log)
        yield Servers(gateway_url, mock_url, {"mock": mock_log, "gateway": gateway_log})
    finally:
        for process in reversed(processes):
            stop(process)
        if request.session.testsfailed or os.environ.get("KIMI_GATEWAY_KEEP_TEST_LOGS"):
            print(f"\nlogs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Counter:
    """Requests an httpx event hook saw leave the client, and the statuses
    of the responses that came back, in order."""

    requests: list = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    # Called with each status as it comes, before the SDK acts on it.
    on_status: Callable[[int], None] | None = None

    def hook(self, request) -> None:
        self.requests.append(request)
        self.sent_at.append(time.monotonic())

    def on_response(self, response) -> None:
        self.statuses.append(response.status_code)
        if self.on_status:
            self.on_status(response.status_code)

    @property
    def count(self) -> int:
        return len(self.requests)


MakeClient = Callable[..., tuple[openai.OpenAI, Counter]]


@pytest.fixture
def make_client(servers: Servers) -> Iterator[MakeClient]:
    """Builds OpenAI clients (no retries unless asked) that count their HTTP
    requests; closes them after the test."""
    made: list[openai.OpenAI] = []

    def make(**options) -> tuple[openai.OpenAI, Counter]:
        counter = Counter()
        http_client = openai.DefaultHttpxClient(
            event_hooks={"request": [counter.hook], "response": [counter.on_response]}
        )
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", REQUEST_TIMEOUT)
        client = openai.OpenAI(
            base_url=servers.base_url, api_key=CLIENT_KEY, http_client=http_client, **options
        )
        made.append(client)
        return client, counter

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: MakeClient) -> openai.OpenAI:
    """An OpenAI client without retries."""
    return make_client()[0]


@pytest.fixture(params=PROVIDERS, ids=lambda p: p.name)
def provider(request) -> Provider:
    """Each of the three providers the gateway fronts, by a model it serves."""
    return request.param
