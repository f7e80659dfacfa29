"""The SDK's retry logic driven by the gateway's headers: `Retry-After` is
honoured on a 429, `x-should-retry: false` stops retries of errors that a
retry cannot fix, and `x-should-retry: true` keeps 5xx retried, the
gateway's own 503 for a body it has no room for included. Attempts are
counted with an httpx event hook on the client's http_client."""

import socket
import time
import urllib.request

import openai
import pytest


def ask(client, provider, directive):
    return client.chat.completions.create(
        model=provider.model, messages=[{"role": "user", "content": directive}]
    )


@pytest.mark.parametrize(
    "directive, field, value",
    [
        ("[mock error=rate_limit retry_after=1]", "retry-after", "1"),
        # Moonshot's 429 says "please try again after 1 seconds" and sends
        # no Retry-After; the gateway turns the words into the fields.
        ("[mock error=rate_limit]", "retry-after-ms", "1000"),
    ],
)
def test_rate_limit_is_retried_after_the_wait(make_client, provider, directive, field, value):
    client, counter = make_client(max_retries=1)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, provider, directive)
    assert counter.count == 2
    assert caught.value.response.headers[field] == value
    # The SDK's own first backoff is at most 0.5 s: waiting about a second
    # means it took the gateway's wait.
    assert counter.sent_at[1] - counter.sent_at[0] >= 0.9


@pytest.mark.parametrize(
    "scenario, exception",
    [
        ("invalid_request", openai.BadRequestError),
        ("content_filter", openai.BadRequestError),
        ("permission", openai.PermissionDeniedError),
        ("not_found", openai.NotFoundError),
        ("quota", openai.RateLimitError),
    ],
)
def test_errors_a_retry_cannot_fix_are_attempted_once(make_client, provider, scenario, exception):
    client, counter = make_client(max_retries=2)
    with pytest.raises(exception) as caught:
        ask(client, provider, f"[mock error={scenario}]")
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert counter.count == 1


def test_server_errors_are_retried(make_client, provider):
    client, counter = make_client(max_retries=2)
    with pytest.raises(openai.InternalServerError):
        ask(client, provider, "[mock error=server]")
    assert counter.count == 3


def test_unknown_model_is_not_retried(make_client):
    client, counter = make_client(max_retries=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert counter.count == 1


def gauge(servers, name: str) -> float | None:
    """A gauge's value on the gateway's /metrics."""
    with urllib.request.urlopen(f"{servers.gateway_url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return None


def wait_for(what: str, condition) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_a_body_the_gateway_has_no_room_for_is_retried_after_the_wait(
    make_client, servers, provider
):
    # A client declares a body of nearly the whole total and sends all of
    # it but its last byte: the gateway holds what it sent (a body claims
    # its bytes as they come, not its declared length).
    held = 33_000_000
    host, port = servers.gateway_url.removeprefix("http://").split(":")
    holder = socket.create_connection((host, int(port)))
    holder.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {held}\r\n\r\n{{".encode()
        + b" " * (held - 2)
    )
    wait_for(
        "the nearly whole body is held",
        lambda: gauge(servers, "kimi_gateway_request_body_bytes") == held,
    )

    client, counter = make_client(max_retries=1)
    # No room for the prompt: 503 with Retry-After: 1, which the SDK
    # retries. The holder leaves as the 503 comes, giving the room back
    # before the retry however slow the machine.
    counter.on_status = lambda status: status == 503 and holder.close()
    try:
        completion = client.chat.completions.create(
            model=provider.model, messages=[{"role": "user", "content": "x" * 600_000}]
        )
    finally:
        holder.close()
    assert completion.choices[0].message.content == provider.greeting()
    assert counter.statuses == [503, 200]
    assert counter.sent_at[1] - counter.sent_at[0] >= 0.9
    wait_for(
        "every body is given back",
        lambda: gauge(servers, "kimi_gateway_request_body_bytes") == 0,
    )
