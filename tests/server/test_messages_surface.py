"""Anthropic's Messages API on the gateway, with the official anthropic SDK as the client: to a
deployment that speaks it (``provider: anthropic``) and to one that speaks OpenAI's (translated)."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic import Anthropic, AsyncAnthropic

from quotagate.config import Config

from ..conftest import RunningGateway, ServerThread, gateway_config
from .test_passthrough import ledger

UPSTREAM_KEY = "sk-upstream-test-key-123456"  # the session mock's key (conftest's TEST_UPSTREAM_KEY)
CLAUDE = "claude-house"  # the gateway's name; its anthropic deployment's model is PROVIDER_MODEL
PROVIDER_MODEL = "claude-sonnet-4-5"
GPT = "gpt-4o-mini"  # an OpenAI deployment: Messages requests are translated to chat for it
BOTH = pytest.mark.parametrize("model", [CLAUDE, GPT])
HELLO: list[Any] = [{"role": "user", "content": "Say hello in a few words."}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# A 1x1 PNG.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f3d0000000049454e44ae426082"
    )
).decode()


def messages_config(sqlite_url: str, upstream_url: str, base_url: str | None = None, **overrides: Any) -> Config:
    """The conftest's configuration with a Claude model served by an anthropic deployment."""
    claude = {
        "name": CLAUDE,
        "deployments": [
            {
                "provider": "anthropic",
                "base_url": base_url or upstream_url + "/v1",
                "api_key": "env:TEST_UPSTREAM_KEY",
                "model": PROVIDER_MODEL,
            }
        ],
    }
    openai = {
        "name": GPT,
        "deployments": [{"provider": "openai", "base_url": upstream_url + "/v1", "api_key": "env:TEST_UPSTREAM_KEY"}],
    }
    return gateway_config(sqlite_url, upstream_url, models=[claude, openai], **overrides)


def sdk(gateway: RunningGateway, key: str) -> Anthropic:
    return Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


@pytest.fixture
def gw(start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str) -> RunningGateway:
    return start_gateway(messages_config(sqlite_url, mock_upstream.url))


@pytest.fixture
def key(gw: RunningGateway) -> str:
    return str(gw.create_key()["key"])


@pytest.fixture
def client(gw: RunningGateway, key: str) -> Anthropic:
    return sdk(gw, key)


def last_messages_request(mock: ServerThread) -> Any:
    """The last request the mock received on Anthropic's /v1/messages."""
    return next(r for r in reversed(mock.app.state.recorded) if r.path == "/v1/messages")


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event of an Anthropic stream."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events


def prompt_of(usage: Any) -> int:
    """All of a message's prompt tokens: uncached, written to the cache and read from it."""
    return int(usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0))


# -- 1. create, async create and streams, to both kinds of deployment ----------------------------


@BOTH
def test_create_returns_a_typed_message(client: Anthropic, model: str) -> None:
    """messages.create answers an SDK Message: text content, end_turn, usage."""
    message = client.messages.create(model=model, max_tokens=100, messages=HELLO)
    assert message.type == "message" and message.role == "assistant"
    assert message.id and message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text" and len(message.content[0].text.split()) == 16
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 16


@BOTH
def test_max_tokens_caps_the_answer(client: Anthropic, model: str) -> None:
    """A max_tokens below the answer's length stops it there, with stop_reason max_tokens."""
    message = client.messages.create(model=model, max_tokens=3, messages=HELLO)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


@BOTH
async def test_async_create(gw: RunningGateway, key: str, model: str) -> None:
    """AsyncAnthropic's messages.create works as the sync one does."""
    client = AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    message = await client.messages.create(model=model, max_tokens=100, messages=HELLO)
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 16
    await client.close()


@BOTH
def test_stream_helper_text_and_final_message(client: Anthropic, model: str) -> None:
    """messages.stream: text_stream yields the answer's text, get_final_message the whole Message."""
    with client.messages.stream(model=model, max_tokens=100, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens == 16


@BOTH
async def test_async_stream_helper(gw: RunningGateway, key: str, model: str) -> None:
    """AsyncAnthropic's messages.stream gives the same text and final message."""
    client = AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    async with client.messages.stream(model=model, max_tokens=100, messages=HELLO) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text and text
    assert final.usage.output_tokens == 16
    await client.close()


@BOTH
def test_raw_stream_has_every_event_type(client: Anthropic, model: str) -> None:
    """stream=True yields the SDK's typed events in Anthropic's order, usage in message_delta."""
    events = list(client.messages.create(model=model, max_tokens=100, messages=HELLO, stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1:4] == ["content_block_start", "content_block_delta", "content_block_delta"]
    assert kinds[-3] == "content_block_stop"
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.usage.input_tokens > 0
    assert delta.type == "message_delta" and delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 16
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert len(text.split()) == 16


@BOTH
def test_raw_stream_on_the_wire_has_pings(gw: RunningGateway, key: str, model: str) -> None:
    """On the wire the stream is Anthropic's SSE: named events, a ping after message_start
    (the SDK skips pings, clients reading the bytes see them)."""
    body = {"model": model, "max_tokens": 100, "messages": HELLO, "stream": True}
    response = httpx.post(
        gw.url + "/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json=body,
        timeout=10,
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(names)
    assert names[-2:] == ["message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)  # event name and data agree


# -- 2. tools, system prompts, images, thinking --------------------------------------------------


def test_tool_use_then_tool_result(client: Anthropic) -> None:
    """A tool_use block with its input comes back; the tool_result turn gets text."""
    ask: list[Any] = [{"role": "user", "content": "Use the tool: the weather in Paris?"}]
    first = client.messages.create(model=CLAUDE, max_tokens=200, tools=[WEATHER], messages=ask)
    assert first.stop_reason == "tool_use"
    tool_use = next(block for block in first.content if block.type == "tool_use")
    assert tool_use.name == "get_weather" and tool_use.input == {"city": "fox"} and tool_use.id
    turns: list[Any] = [
        *ask,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny, 21C"}]},
    ]
    second = client.messages.create(model=CLAUDE, max_tokens=200, tools=[WEATHER], messages=turns)
    assert second.stop_reason == "end_turn"
    assert [block.type for block in second.content] == ["text"]


def test_streamed_tool_use_input_is_assembled(client: Anthropic) -> None:
    """A streamed tool call's input_json_delta pieces are assembled by the SDK into its input."""
    ask: list[Any] = [{"role": "user", "content": "Call get_weather for Paris"}]
    with client.messages.stream(model=CLAUDE, max_tokens=200, tools=[WEATHER], messages=ask) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    assert final.stop_reason == "tool_use"
    tool_use = final.content[-1]
    assert tool_use.type == "tool_use" and tool_use.input == {"city": "fox"}


def test_system_prompt_as_string_and_blocks(client: Anthropic, mock_upstream: ServerThread) -> None:
    """A system prompt, as a string or as text blocks, is accepted and reaches the deployment."""
    as_string = client.messages.create(model=CLAUDE, max_tokens=50, system="Be terse.", messages=HELLO)
    assert last_messages_request(mock_upstream).body["system"] == "Be terse."
    blocks: Any = [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Answer in French."}]
    as_blocks = client.messages.create(model=CLAUDE, max_tokens=50, system=blocks, messages=HELLO)
    assert last_messages_request(mock_upstream).body["system"] == blocks
    assert as_blocks.usage.input_tokens > as_string.usage.input_tokens  # the longer system counts


def test_system_prompt_reaches_an_openai_deployment(client: Anthropic, mock_upstream: ServerThread) -> None:
    """Translated for an OpenAI deployment, the system prompt becomes a system message."""
    blocks: Any = [{"type": "text", "text": "Be terse."}]
    message = client.messages.create(model=GPT, max_tokens=50, system=blocks, messages=HELLO)
    assert message.content[0].type == "text"
    sent = next(r for r in reversed(mock_upstream.app.state.recorded) if r.path == "/v1/chat/completions")
    assert sent.body["messages"][0]["role"] == "system" and "Be terse." in str(sent.body["messages"][0]["content"])


def test_an_image_block_is_accepted(client: Anthropic, mock_upstream: ServerThread) -> None:
    """A base64 image block is sent on as the client wrote it and answered."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    turns: Any = [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}]
    message = client.messages.create(model=CLAUDE, max_tokens=50, messages=turns)
    assert message.content[0].type == "text" and message.usage.input_tokens >= 85
    assert last_messages_request(mock_upstream).body["messages"][0]["content"][0] == image


def test_an_image_block_reaches_an_openai_deployment(client: Anthropic) -> None:
    """The same image to an OpenAI deployment is translated and answered."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    turns: Any = [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}]
    message = client.messages.create(model=GPT, max_tokens=50, messages=turns)
    assert message.content[0].type == "text" and message.usage.input_tokens > 0


def test_thinking_block_passes_through(client: Anthropic) -> None:
    """With thinking enabled, the anthropic deployment's thinking block comes first, streamed or not."""
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    message = client.messages.create(model=CLAUDE, max_tokens=2000, thinking=thinking, messages=HELLO)
    assert [block.type for block in message.content] == ["thinking", "text"]
    block = message.content[0]
    assert block.type == "thinking" and "step by step" in block.thinking and block.signature
    with client.messages.stream(model=CLAUDE, max_tokens=2000, thinking=thinking, messages=HELLO) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].thinking == block.thinking


# -- 3. what the anthropic deployment is sent ----------------------------------------------------


def test_version_and_beta_headers_and_model_reach_the_deployment(
    gw: RunningGateway, key: str, mock_upstream: ServerThread
) -> None:
    """The client's anthropic-version and anthropic-beta are sent on, with the deployment's key
    and model; the rest of the body is the client's."""
    client = Anthropic(
        base_url=gw.url,
        api_key=key,
        max_retries=0,
        default_headers={"anthropic-version": "2023-01-01", "anthropic-beta": "prompt-caching-2024-07-31"},
    )
    message = client.messages.create(model=CLAUDE, max_tokens=42, messages=HELLO, metadata={"user_id": "u-1"})
    sent = last_messages_request(mock_upstream)
    assert sent.headers["anthropic-version"] == "2023-01-01"
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert sent.headers["x-api-key"] == UPSTREAM_KEY and key not in str(sent.headers)
    assert sent.body == {"model": PROVIDER_MODEL, "max_tokens": 42, "messages": HELLO, "metadata": {"user_id": "u-1"}}
    assert message.model == PROVIDER_MODEL


def test_the_configured_version_is_sent_when_the_client_sends_none(
    gw: RunningGateway, key: str, mock_upstream: ServerThread
) -> None:
    """A client without anthropic-version (a plain HTTP client) gets the deployment's default."""
    response = httpx.post(
        gw.url + "/v1/messages",
        headers={"x-api-key": key},
        json={"model": CLAUDE, "max_tokens": 10, "messages": HELLO},
    )
    assert response.status_code == 200, response.text
    assert last_messages_request(mock_upstream).headers["anthropic-version"] == "2023-06-01"


def test_a_base_url_without_v1_still_reaches_v1_messages(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A deployment's base_url without /v1 is sent to {base_url}/v1/messages."""
    gateway = start_gateway(messages_config(sqlite_url, mock_upstream.url, base_url=mock_upstream.url))
    message = sdk(gateway, gateway.create_key()["key"]).messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    assert message.content[0].type == "text"
    assert mock_upstream.app.state.recorded[-1].path == "/v1/messages"


def test_beta_header_is_not_sent_to_an_openai_deployment(
    gw: RunningGateway, key: str, mock_upstream: ServerThread
) -> None:
    """anthropic-beta is for Anthropic: a translated request to an OpenAI deployment goes without it."""
    client = Anthropic(
        base_url=gw.url, api_key=key, max_retries=0, default_headers={"anthropic-beta": "prompt-caching-2024-07-31"}
    )
    client.messages.create(model=GPT, max_tokens=10, messages=HELLO)
    sent = mock_upstream.app.state.recorded[-1]
    assert sent.path == "/v1/chat/completions"
    assert "anthropic-beta" not in sent.headers and "anthropic-version" not in sent.headers


# -- 4. errors in Anthropic's shape --------------------------------------------------------------


def assert_anthropic_error(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]


def test_a_request_without_max_tokens_is_a_400(client: Anthropic) -> None:
    """max_tokens is required, as Anthropic requires it."""
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.post("/v1/messages", cast_to=httpx.Response, body={"model": CLAUDE, "messages": HELLO})
    assert_anthropic_error(refused.value.response, 400, "invalid_request_error")
    assert "max_tokens" in refused.value.message


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "robot", "content": "hi"}], [{"role": "user"}]],
    ids=["empty", "unknown-role", "no-content"],
)
def test_bad_messages_are_a_400(client: Anthropic, messages: Any) -> None:
    """No messages, a turn of an unknown role or without content, is invalid_request_error.
    (A "system" turn is let through on purpose: Claude Code sends one; see messages_to_chat.)"""
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=CLAUDE, max_tokens=10, messages=messages)
    assert_anthropic_error(refused.value.response, 400, "invalid_request_error")


def test_a_bad_key_is_a_401(gw: RunningGateway) -> None:
    """A key the gateway does not know is authentication_error."""
    with pytest.raises(anthropic.AuthenticationError) as refused:
        sdk(gw, "qg-not-a-key").messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    assert_anthropic_error(refused.value.response, 401, "authentication_error")


def test_an_unknown_model_is_a_404(client: Anthropic) -> None:
    """A model the gateway does not serve is not_found_error."""
    with pytest.raises(anthropic.NotFoundError) as refused:
        client.messages.create(model="claude-nothing", max_tokens=10, messages=HELLO)
    assert_anthropic_error(refused.value.response, 404, "not_found_error")


def test_a_model_the_key_may_not_use_is_a_403(gw: RunningGateway) -> None:
    """A key limited to other models gets permission_error."""
    limited = gw.create_key(models=[GPT])["key"]
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        sdk(gw, limited).messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    assert_anthropic_error(refused.value.response, 403, "permission_error")


def test_an_exhausted_rpm_is_a_429_with_anthropics_headers(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Past the tier's rpm: rate_limit_error, retry-after and anthropic-ratelimit-requests-* at 0."""
    gateway = start_gateway(messages_config(sqlite_url, mock_upstream.url, tiers={"free": {"rpm": 1}}))
    client = sdk(gateway, gateway.create_key()["key"])
    client.messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    response = refused.value.response
    assert_anthropic_error(response, 429, "rate_limit_error")
    assert float(response.headers["retry-after"]) > 0
    assert response.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.fromisoformat(response.headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None and reset.timestamp() > time.time() - 1


def test_an_upstream_529_reaches_the_client_as_overloaded(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """An anthropic deployment's 529 that no other deployment can serve is the client's 529
    overloaded_error."""
    overloaded = start_mock(rate_500=1.0)
    gateway = start_gateway(messages_config(sqlite_url, overloaded.url))
    with pytest.raises(anthropic.InternalServerError) as refused:
        sdk(gateway, gateway.create_key()["key"]).messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    assert refused.value.status_code == 529
    assert_anthropic_error(refused.value.response, 529, "overloaded_error")


@BOTH
def test_an_upstream_drop_midstream_is_an_error_event(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    model: str,
) -> None:
    """A provider that cuts the stream off gives the SDK an Anthropic error event, not a silent end."""
    dropping = start_mock(rate_drop=1.0, completion_tokens=20)
    gateway = start_gateway(messages_config(sqlite_url, dropping.url))
    client = sdk(gateway, gateway.create_key()["key"])
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as broken:  # noqa: PT012 (the error comes mid-iteration)
        for event in client.messages.create(model=model, max_tokens=100, messages=HELLO, stream=True):
            received.append(event.type)
    assert received and "message_stop" not in received
    body: Any = broken.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "broke off the stream" in body["error"]["message"]
    assert httpx.get(gateway.url + "/health").status_code == 200


# -- 5. limits and the ledger settle on Anthropic's usage ----------------------------------------


def quota_used(gateway: RunningGateway, key: str, name: str) -> int:
    quota = httpx.get(gateway.v1 + "/quota", headers={"Authorization": f"Bearer {key}"}).json()
    return int(next(entry["used"] for entry in quota["limits"] if entry["name"] == name))


@BOTH
def test_tokens_settle_exactly_on_the_usage_the_client_got(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    model: str,
) -> None:
    """The tier's TPD and the ledger count what the SDK's usage says, streamed or not."""
    gateway = start_gateway(messages_config(sqlite_url, mock_upstream.url, tiers={"free": {"tpd": 100000}}))
    key = gateway.create_key()["key"]
    client = sdk(gateway, key)
    message = client.messages.create(model=model, max_tokens=100, messages=HELLO)
    with client.messages.stream(model=model, max_tokens=7, messages=HELLO) as stream:
        streamed = stream.get_final_message()
    spent = [prompt_of(m.usage) + m.usage.output_tokens for m in (message, streamed)]
    assert quota_used(gateway, key, "tokens per day (TPD)") == sum(spent)
    rows = ledger(sqlite_url, 2)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["stream"]) for r in rows] == [
        (prompt_of(message.usage), message.usage.output_tokens, 0),
        (prompt_of(streamed.usage), streamed.usage.output_tokens, 1),
    ]
    assert [r["status"] for r in rows] == [200, 200]


def test_prompt_cache_reads_are_counted_as_cached(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Two requests with a cache_control block: the second reads the cache, and its ledger row's
    cached tokens are those reads; both rows' prompts count cache writes and reads."""
    mock = start_mock()
    gateway = start_gateway(messages_config(sqlite_url, mock.url, tiers={"free": {"tpd": 100000}}))
    key = gateway.create_key()["key"]
    client = sdk(gateway, key)
    document = "A long reference document. " * 200 + secrets.token_hex(8)
    system: Any = [{"type": "text", "text": document, "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(model=CLAUDE, max_tokens=20, system=system, messages=HELLO)
    second = client.messages.create(model=CLAUDE, max_tokens=20, system=system, messages=HELLO)
    assert (first.usage.cache_creation_input_tokens or 0) > 0 and not first.usage.cache_read_input_tokens
    assert (second.usage.cache_read_input_tokens or 0) > 0
    rows = ledger(sqlite_url, 2)
    assert [(r["prompt_tokens"], r["cached_tokens"]) for r in rows] == [
        (prompt_of(first.usage), 0),
        (prompt_of(second.usage), second.usage.cache_read_input_tokens),
    ]
    spent = sum(prompt_of(m.usage) + m.usage.output_tokens for m in (first, second))
    assert quota_used(gateway, key, "tokens per day (TPD)") == spent


def test_streamed_prompt_cache_reads_are_counted_as_cached(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """The same through streams: message_start's cache figures reach the ledger."""
    mock = start_mock()
    gateway = start_gateway(messages_config(sqlite_url, mock.url))
    client = sdk(gateway, gateway.create_key()["key"])
    document = "A long reference document. " * 200 + secrets.token_hex(8)
    system: Any = [{"type": "text", "text": document, "cache_control": {"type": "ephemeral"}}]
    finals = []
    for _ in range(2):
        with client.messages.stream(model=CLAUDE, max_tokens=20, system=system, messages=HELLO) as stream:
            finals.append(stream.get_final_message())
    assert (finals[1].usage.cache_read_input_tokens or 0) > 0
    rows = ledger(sqlite_url, 2)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"]) for r in rows] == [
        (prompt_of(finals[0].usage), finals[0].usage.output_tokens, 0),
        (prompt_of(finals[1].usage), finals[1].usage.output_tokens, finals[1].usage.cache_read_input_tokens),
    ]


# -- 6. a client that leaves mid-stream ----------------------------------------------------------


@BOTH
def test_a_client_disconnect_midstream_is_a_499_with_usage(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    model: str,
) -> None:
    """A client that hangs up after the first text leaves a 499 row charged its prompt and what
    was generated by then."""
    slow = start_mock(stream_chunk_delay_ms=100, completion_tokens=40)
    gateway = start_gateway(messages_config(sqlite_url, slow.url))
    key = gateway.create_key()["key"]
    body = {"model": model, "max_tokens": 100, "messages": HELLO, "stream": True}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", gateway.url + "/v1/messages", headers=headers, json=body, timeout=10) as response:
        assert response.status_code == 200
        deltas = 0
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                deltas += 1
                if deltas == 3:
                    break
    (row,) = ledger(sqlite_url, 1)
    assert row["status"] == 499 and row["stream"] == 1
    assert row["prompt_tokens"] > 0 and 0 < row["completion_tokens"] < 40


# -- 7. count_tokens -----------------------------------------------------------------------------


@BOTH
def test_count_tokens_grows_with_the_prompt(client: Anthropic, sqlite_url: str, model: str) -> None:
    """count_tokens answers a positive estimate, larger for a longer prompt, and is not charged."""
    short = client.messages.count_tokens(model=model, messages=HELLO)
    longer: Any = [{"role": "user", "content": "Say hello in a few words. " * 20}]
    long = client.messages.count_tokens(model=model, messages=longer, system="Be terse.")
    assert isinstance(short.input_tokens, int) and short.input_tokens > 0
    assert long.input_tokens > short.input_tokens
    time.sleep(0.2)
    assert ledger(sqlite_url, 0) == []


def test_count_tokens_needs_a_valid_key(gw: RunningGateway) -> None:
    """count_tokens with an unknown key is authentication_error."""
    with pytest.raises(anthropic.AuthenticationError) as refused:
        sdk(gw, "qg-not-a-key").messages.count_tokens(model=CLAUDE, messages=HELLO)
    assert_anthropic_error(refused.value.response, 401, "authentication_error")


def test_count_tokens_only_for_models_the_key_may_use(gw: RunningGateway, client: Anthropic) -> None:
    """count_tokens for a model the gateway does not serve is a 404, for one the key may not use a 403."""
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.count_tokens(model="claude-nothing", messages=HELLO)
    assert_anthropic_error(unknown.value.response, 404, "not_found_error")
    limited = sdk(gw, gw.create_key(models=[GPT])["key"])
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        limited.messages.count_tokens(model=CLAUDE, messages=HELLO)
    assert_anthropic_error(denied.value.response, 403, "permission_error")


# -- 8. the tenant's limits on a 200 -------------------------------------------------------------


@BOTH
def test_a_200_carries_anthropics_ratelimit_headers(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str, model: str
) -> None:
    """With a tier rpm, a successful answer says the tenant's requests limit, remaining and reset
    in Anthropic's headers (not OpenAI's x-ratelimit-*)."""
    config = messages_config(sqlite_url, mock_upstream.url, tiers={"free": {"rpm": 10, "tpm": 50000}})
    gateway = start_gateway(config)
    client = sdk(gateway, gateway.create_key()["key"])
    raw = client.messages.with_raw_response.create(model=model, max_tokens=10, messages=HELLO)
    assert raw.status_code == 200 and raw.parse().content
    headers = raw.headers
    assert headers["anthropic-ratelimit-requests-limit"] == "10"
    assert headers["anthropic-ratelimit-requests-remaining"] == "9"
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None and reset.timestamp() >= time.time() - 1
    assert headers["anthropic-ratelimit-tokens-limit"] == "50000"
    assert int(headers["anthropic-ratelimit-tokens-remaining"]) < 50000
    assert "x-ratelimit-remaining-requests" not in headers
    with client.messages.with_streaming_response.create(
        model=model, max_tokens=10, messages=HELLO, stream=True
    ) as streamed:
        assert streamed.headers["anthropic-ratelimit-requests-remaining"] == "8"
