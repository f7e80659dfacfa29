"""LangChain's `ChatOpenAI` pointed at the gateway: `invoke`, `stream` (with
and without usage) and a tool call through `bind_tools`, for every provider."""

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from support import CLIENT_KEY, REQUEST_TIMEOUT


@tool
def search_docs(query: str) -> str:
    """Search the product documentation."""
    return f"results for {query}"


@pytest.fixture
def chat(servers, provider):
    def make(**options) -> ChatOpenAI:
        return ChatOpenAI(
            model=provider.model,
            base_url=servers.base_url,
            api_key=CLIENT_KEY,
            max_retries=0,
            timeout=REQUEST_TIMEOUT,
            **options,
        )

    return make


def test_invoke(chat, provider):
    reply = chat().invoke("hi")
    assert isinstance(reply, AIMessage)
    assert reply.content == provider.greeting()
    assert reply.usage_metadata["input_tokens"] > 0
    assert reply.usage_metadata["output_tokens"] == 7
    assert reply.response_metadata["finish_reason"] == "stop"


def test_stream(chat, provider):
    chunks = list(chat().stream("[mock chunks=4]"))
    assert "".join(c.content for c in chunks) == provider.streamed_text(4)
    assert sum(1 for c in chunks if c.content) == 4


def test_stream_with_usage(chat, provider):
    total = None
    for chunk in chat(stream_usage=True).stream("hi"):
        total = chunk if total is None else total + chunk
    assert total.content == provider.streamed_text()
    assert total.usage_metadata is not None, "no usage chunk reached LangChain"
    assert total.usage_metadata["output_tokens"] == 3
    assert total.usage_metadata["input_tokens"] > 0


def test_bind_tools_round_trip(chat, provider):
    model = chat().bind_tools([search_docs])
    question = HumanMessage("How do I rotate keys?")
    first = model.invoke([question])
    assert len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert call["name"] == "search_docs"
    assert call["args"] == {"query": "mock"}
    assert call["id"]

    result = ToolMessage(search_docs.invoke(call["args"]), tool_call_id=call["id"])
    second = model.invoke([question, first, result])
    assert second.tool_calls == []
    assert second.content == "The tool said: results for mock"
