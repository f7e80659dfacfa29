"""The request id the gateway sets (`x-request-id`) as the SDK exposes it:
`_request_id` on responses and `request_id` on errors."""

import openai
import pytest


def test_completion_exposes_the_request_id(client: openai.OpenAI, provider):
    raw = client.chat.completions.with_raw_response.create(
        model=provider.model, messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert raw.headers["x-request-id"]
    assert completion._request_id == raw.headers["x-request-id"]


def test_each_request_gets_its_own_id(client: openai.OpenAI, provider):
    ids = {
        client.chat.completions.create(
            model=provider.model, messages=[{"role": "user", "content": "hi"}]
        )._request_id
        for _ in range(3)
    }
    assert None not in ids
    assert len(ids) == 3


def test_a_client_chosen_request_id_is_kept(client: openai.OpenAI, provider):
    completion = client.chat.completions.create(
        model=provider.model,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "client-trace-42"},
    )
    assert completion._request_id == "client-trace-42"


def test_errors_expose_the_request_id(client: openai.OpenAI, provider):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model=provider.model, messages=[{"role": "user", "content": "[mock error=rate_limit]"}]
        )
    assert caught.value.request_id
    assert caught.value.request_id == caught.value.response.headers["x-request-id"]


def test_streams_expose_the_request_id(client: openai.OpenAI, provider):
    raw = client.chat.completions.with_raw_response.create(
        model=provider.model, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(raw.parse())
    assert raw.request_id
    assert raw.request_id == raw.headers["x-request-id"]
    assert chunks


def test_models_expose_the_request_id(client: openai.OpenAI):
    model = client.models.retrieve("kimi-chat")
    assert model._request_id
