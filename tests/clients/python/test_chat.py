"""Non-streamed chat completions through the official SDK: plain answers,
`n` choices, Moonshot's partial mode and image content parts."""

import base64
import json
import os

import openai

# A valid 1x1 PNG.
TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def sent_body(counter) -> dict:
    """The JSON body of the last request the client sent."""
    return json.loads(counter.requests[-1].content)


def test_completion(client: openai.OpenAI, provider):
    completion = client.chat.completions.create(
        model=provider.model, messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.object == "chat.completion"
    assert completion.model == provider.model
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == provider.greeting()
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_cached_tokens_are_readable_the_openai_way(client: openai.OpenAI, provider):
    completion = client.chat.completions.create(
        model=provider.model, messages=[{"role": "user", "content": "hi"}]
    )
    details = completion.usage.prompt_tokens_details
    assert details is not None, completion.usage
    # The mock's Moonshot reports 2 cached tokens (as `usage.cached_tokens`),
    # the others report 0 the OpenAI way.
    assert details.cached_tokens == (2 if provider.name == "moonshot" else 0)


def test_provider_prefix_routes_to_that_provider(client: openai.OpenAI):
    completion = client.chat.completions.create(
        model="agentsflare/kimi-k2.6", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Hello from agentsflare (kimi-k2.6)."


def test_n_choices(client: openai.OpenAI, provider):
    completion = client.chat.completions.create(
        model=provider.model, n=2, messages=[{"role": "user", "content": "hi"}]
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content == provider.greeting() for c in completion.choices)


def test_partial_mode_in_message_dicts(make_client, provider):
    client, counter = make_client()
    completion = client.chat.completions.create(
        model=provider.model,
        messages=[
            {"role": "user", "content": "Tell me a story."},
            {"role": "assistant", "content": "Once upon", "partial": True, "name": "Narrator"},
        ],
    )
    assert completion.choices[0].message.content == provider.greeting()
    last = sent_body(counter)["messages"][-1]
    assert last == {"role": "assistant", "content": "Once upon", "partial": True, "name": "Narrator"}


def test_partial_mode_through_extra_body(make_client, provider):
    client, counter = make_client()
    messages = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once upon", "partial": True, "name": "Narrator"},
    ]
    completion = client.chat.completions.create(
        model=provider.model,
        messages=[{"role": "user", "content": "replaced by extra_body"}],
        extra_body={"messages": messages},
    )
    assert completion.choices[0].message.content == provider.greeting()
    assert sent_body(counter)["messages"] == messages


def test_image_content_part(make_client, provider):
    client, counter = make_client()
    url = f"data:image/png;base64,{TINY_PNG}"
    completion = client.chat.completions.create(
        model=provider.vision_model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is in this picture?"},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == provider.greeting(provider.vision_model)
    parts = sent_body(counter)["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": url}}


def test_a_megabyte_sized_image_reaches_the_provider_whole(client: openai.OpenAI, provider):
    # 1.5 MB of base64: the mock provider itself takes bodies up to 2 MB.
    picture = base64.b64encode(os.urandom(1100 * 1024)).decode()
    completion = client.chat.completions.create(
        model=provider.vision_model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{picture}"}},
                    {"type": "text", "text": "Describe it."},
                ],
            }
        ],
    )
    # The mock counts a prompt token per 4 bytes of the body it received.
    assert completion.usage.prompt_tokens >= len(picture) // 4
