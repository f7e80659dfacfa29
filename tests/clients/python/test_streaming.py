"""Streamed chat completions through the official SDK: reassembly chunk by
chunk, `stream_options.include_usage` for every provider, `n` streams, an
error after the first byte (the gateway's or the provider's own event), keep-alive comments between events that carry
ids, and a client-side read timeout mid-stream."""

import openai
import pytest


def stream(client, provider, content="hi", **options):
    return client.chat.completions.create(
        model=provider.model,
        messages=[{"role": "user", "content": content}],
        stream=True,
        **options,
    )


def raised_mid_stream(client, provider, content):
    """The chunks a stream delivered before it raised, and what it raised."""
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream(client, provider, content):
            seen.append(chunk)
    return seen, caught.value


def test_chunks_reassemble_into_the_answer(client: openai.OpenAI, provider):
    chunks = list(stream(client, provider, "[mock chunks=5]"))
    # Every chunk has a choice, from every provider (Agentsflare's opening
    # Azure-style chunk with none is dropped): OpenAI's own examples read
    # `chunk.choices[0]` of each.
    assert all(c.object == "chat.completion.chunk" and c.choices for c in chunks), chunks
    content_chunks = [c for c in chunks if c.choices[0].delta.content]
    assert len(content_chunks) == 5
    text = "".join(c.choices[0].delta.content for c in content_chunks)
    assert text == provider.streamed_text(5)
    roles = [c.choices[0].delta.role for c in chunks if c.choices[0].delta.role]
    assert roles == ["assistant"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_include_usage_adds_a_final_usage_chunk(client: openai.OpenAI, provider):
    chunks = list(stream(client, provider, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [], last
    assert last.usage is not None
    assert last.usage.completion_tokens == 3
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    # Only the final chunk carries a top-level usage.
    assert [c for c in chunks[:-1] if c.usage is not None] == []
    assert [c for c in chunks if c.choices == [] and c.usage is not None] == [last]


def test_usage_chunk_reports_cached_tokens_the_openai_way(client: openai.OpenAI, provider):
    last = list(stream(client, provider, stream_options={"include_usage": True}))[-1]
    assert last.usage is not None
    details = last.usage.prompt_tokens_details
    assert details is not None, last.usage
    assert details.cached_tokens == (2 if provider.name == "moonshot" else 0)


def test_no_usage_chunk_unless_asked(client: openai.OpenAI, provider):
    chunks = list(stream(client, provider))
    assert [c for c in chunks if c.usage is not None and c.choices == []] == []
    # The stream still ends with the finish_reason chunk.
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_streams_reassemble_per_choice(client: openai.OpenAI, provider):
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for chunk in stream(client, provider, n=2):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert texts == {0: provider.streamed_text(), 1: provider.streamed_text()}
    assert finished == {0: "stop", 1: "stop"}


def test_a_failure_after_the_first_byte_raises_mid_stream(client: openai.OpenAI, provider):
    seen, error = raised_mid_stream(client, provider, "[mock cut_after=3 chunks=5 chunk_delay_ms=50]")
    assert seen, "chunks before the failure were delivered"
    assert not isinstance(error, openai.APIConnectionError), error
    assert error.type == "server_error"
    assert error.code == "upstream_unreachable"
    assert provider.name in error.message


def test_a_providers_error_event_mid_stream_raises_with_its_message(client: openai.OpenAI, provider):
    seen, error = raised_mid_stream(client, provider, "[mock error_event_after=2 chunks=5 chunk_delay_ms=20]")
    assert seen, "chunks before the error event were delivered"
    assert error.type == "engine_overloaded_error"
    assert "overloaded" in error.message


def test_an_empty_error_event_mid_stream_raises_too(client: openai.OpenAI, provider):
    # `{"error":{}}` as the provider sent it would be no error to this SDK
    # (an empty dict is false): the stream would look complete.
    seen, error = raised_mid_stream(
        client, provider, "[mock error_event_after=2 chunks=5 chunk_delay_ms=20 empty_error]"
    )
    assert seen, "chunks before the error event were delivered"
    assert error.type == "server_error"
    assert provider.name in error.message


@pytest.mark.parametrize(
    "directive",
    [
        "[mock event_ids chunk_delay_ms=1300 chunks=1]",
        # The provider's writes stop between the CR and the LF of each
        # event's blank line, so the comment lands between them.
        "[mock event_ids line_end=crlf split_crlf chunk_delay_ms=1300 chunks=1]",
    ],
)
def test_keepalive_comments_between_events_with_ids_are_ignored(client: openai.OpenAI, directive):
    # The gateway comments after 1 s of silence (tests/clients/gateway.toml);
    # the SDK must not read a comment as an event once events carry `id:`.
    chunks = list(
        client.chat.completions.create(
            model="kimi-k2.6",
            messages=[{"role": "user", "content": directive}],
            stream=True,
        )
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_client_read_timeout_mid_stream(make_client, provider):
    client, _ = make_client(timeout=0.5, max_retries=0)
    seen = []
    with pytest.raises(openai.APITimeoutError):
        for chunk in stream(client, provider, "[mock chunk_delay_ms=3000 chunks=3]"):
            seen.append(chunk)
    # Events before the first delay arrived; the answer did not.
    assert seen
    assert not any(c.choices and c.choices[0].finish_reason for c in seen)


def test_client_timeout_waiting_for_the_head(make_client, provider):
    client, counter = make_client(timeout=0.5, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        stream(client, provider, "[mock head_delay_ms=3000]")
    assert counter.count == 1
