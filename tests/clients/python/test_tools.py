"""Tool calls through the official SDK: a function tool round trip, the same
streamed, and Moonshot's builtin `$web_search` whose arguments the client
echoes back in a `role: tool` message."""

import json

import openai

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_weather",
        "description": "Current weather for a place.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}
WEB_SEARCH_TOOL = {"type": "builtin_function", "function": {"name": "$web_search"}}


def assistant_turn(message) -> dict:
    """The assistant message to send back, as the SDK returned it."""
    return message.model_dump(include={"role", "content", "tool_calls"}, exclude_none=True)


def test_function_tool_round_trip(client: openai.OpenAI, provider):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=provider.model, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "lookup_weather"
    assert json.loads(call.function.arguments) == {"query": "mock"}

    messages += [
        assistant_turn(choice.message),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = client.chat.completions.create(model=provider.model, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "The tool said: sunny, 21 C"


def test_streamed_tool_call_reassembles(client: openai.OpenAI, provider):
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(
        model=provider.model,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    ):
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            if delta.function:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"]
    assert calls[0]["name"] == "lookup_weather"
    assert json.loads(calls[0]["arguments"]) == {"query": "mock"}


def test_builtin_web_search_round_trip(client: openai.OpenAI, provider):
    messages = [{"role": "user", "content": "Search the news about Kimi."}]
    first = client.chat.completions.create(model=provider.model, messages=messages, tools=[WEB_SEARCH_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "$web_search"
    arguments = call.function.arguments
    assert json.loads(arguments)["search_result"]["search_id"] == "mock-search-1"

    # Moonshot's contract: hand the arguments back unchanged as the tool result.
    messages += [
        assistant_turn(choice.message),
        {"role": "tool", "tool_call_id": call.id, "name": "$web_search", "content": arguments},
    ]
    second = client.chat.completions.create(model=provider.model, messages=messages, tools=[WEB_SEARCH_TOOL])
    assert second.choices[0].message.content == f"The tool said: {arguments}"
