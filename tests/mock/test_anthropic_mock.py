"""The mock provider speaks Anthropic's Messages API well enough for the official anthropic SDK."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

from quotagate.mock import MockOptions, MockUpstream

from ..conftest import ServerThread

KEY = "sk-ant-mock-key"
MODEL = "claude-sonnet-4-5"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def mock() -> Iterator[ServerThread]:
    server = ServerThread(MockUpstream(MockOptions(api_key=KEY, completion_tokens=8))).start()
    yield server
    server.stop()


@pytest.fixture
def client(mock: ServerThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=mock.url, api_key=KEY, max_retries=0)


def test_create(client: anthropic.Anthropic) -> None:
    """messages.create returns a text message with usage and Anthropic's rate-limit headers."""
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Hello"}]
    )
    message = raw.parse()
    assert message.model == MODEL and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and len(message.content[0].text.split()) == 8
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 8
    assert int(raw.headers["anthropic-ratelimit-requests-remaining"]) < int(
        raw.headers["anthropic-ratelimit-requests-limit"]
    )
    assert raw.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    capped = client.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Hello"}])
    assert capped.stop_reason == "max_tokens" and capped.usage.output_tokens == 3


def test_stream_text_and_final_message(client: anthropic.Anthropic) -> None:
    """messages.stream yields the text and a final message with usage, thinking first when enabled."""
    with client.messages.stream(
        model=MODEL,
        max_tokens=100,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Hello"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[1].type == "text" and final.content[1].text == text and len(text.split()) == 8
    assert final.usage.output_tokens > 8 and final.usage.input_tokens > 0


def test_tool_use_streamed_and_not(client: anthropic.Anthropic) -> None:
    """A request with tools whose last message names one gets a tool_use block, streamed as input_json_delta."""
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Use get_weather for Paris"}]
    message = client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER], messages=messages)  # type: ignore[list-item]
    assert message.stop_reason == "tool_use"
    tool_use = message.content[-1]
    assert tool_use.type == "tool_use" and tool_use.name == "get_weather" and tool_use.input == {"city": "fox"}
    with client.messages.stream(model=MODEL, max_tokens=100, tools=[WEATHER], messages=messages) as stream:  # type: ignore[list-item]
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds and final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "fox"}
    answered = client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            *messages,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": tool_use.id, "name": "get_weather", "input": {"city": "Paris"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}]},
        ],
    )
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"


def test_prompt_cache_usage(client: anthropic.Anthropic) -> None:
    """A cache_control block writes the cache on the first request and reads it on the second."""
    system: list[anthropic.types.TextBlockParam] = [
        {"type": "text", "text": "You are a weather bot. " * 50, "cache_control": {"type": "ephemeral"}}
    ]
    first = client.messages.create(
        model=MODEL, max_tokens=10, system=system, messages=[{"role": "user", "content": "Hi"}]
    )
    second = client.messages.create(
        model=MODEL, max_tokens=10, system=system, messages=[{"role": "user", "content": "Bye"}]
    )
    assert first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens > 200
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0 and second.usage.input_tokens > 0


def test_count_tokens(client: anthropic.Anthropic) -> None:
    """count_tokens answers the input tokens that messages.create reports."""
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "How many tokens is this?"}]
    counted = client.messages.count_tokens(model=MODEL, messages=messages)
    created = client.messages.create(model=MODEL, max_tokens=5, messages=messages)
    assert counted.input_tokens == created.usage.input_tokens > 0


def test_errors(mock: ServerThread) -> None:
    """A wrong key is a 401 AuthenticationError; a missing anthropic-version header a 400; both Anthropic-shaped."""
    wrong = anthropic.Anthropic(base_url=mock.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    response = httpx.post(
        mock.url + "/v1/messages",
        headers={"x-api-key": KEY},
        json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_faults_are_anthropic_shaped() -> None:
    """The mock's 429 and 500 faults answer as Anthropic does: rate_limit_error with retry-after, 529 overloaded."""
    for options, status, error in [
        (MockOptions(rate_429=1.0, retry_after=2), 429, anthropic.RateLimitError),
        (MockOptions(rate_500=1.0), 529, anthropic.InternalServerError),
    ]:
        server = ServerThread(MockUpstream(options)).start()
        try:
            client = anthropic.Anthropic(base_url=server.url, api_key="any", max_retries=0)
            with pytest.raises(error) as info:
                client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
            assert info.value.status_code == status
            if status == 429:
                assert info.value.response.headers["retry-after"] == "2"
        finally:
            server.stop()
