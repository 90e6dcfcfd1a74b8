"""Deployments of ``provider: anthropic``, as OpenAI SDK clients see them: chat completions served by
Anthropic's Messages API (translated both ways, streams and tool calls included), usage in the
ledger and the quota, fallbacks and retries across the two APIs, 529s, 429s and rate-limit headers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from quotagate.config import parse_config

from ..conftest import RunningGateway, ServerThread
from .test_errors import assert_openai_error
from .test_passthrough import ledger

KEY = "sk-upstream-test-key-123456"  # TEST_UPSTREAM_KEY, as upstream_env sets it
CLAUDE = "claude-sonnet-4-5"
ASKED = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_QUESTION = [{"role": "user", "content": "Use a tool: what is the weather in Paris?"}]


def anthropic_dep(mock: ServerThread, base_path: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "provider": "anthropic",
        "base_url": mock.url + base_path,
        "api_key": "env:TEST_UPSTREAM_KEY",
        "model": CLAUDE,
        **extra,
    }


def openai_dep(mock: ServerThread, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "base_url": mock.url + "/v1",
        "api_key": "env:TEST_UPSTREAM_KEY",
        "model": "gpt-4o-mini",
        **extra,
    }


def start(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, models: list[dict[str, Any]], **extra: Any
) -> tuple[RunningGateway, OpenAI]:
    config = parse_config(
        {
            "database": sqlite_url,
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {"tpd": 100000}},
            "models": models,
            **extra,
        }
    )
    gw = start_gateway(config)
    return gw, OpenAI(base_url=gw.v1, api_key=gw.create_key()["key"], max_retries=0)


def deployments(gw: RunningGateway) -> dict[str, dict[str, Any]]:
    with gw.admin() as admin:
        reply = admin.get("/admin/deployments").json()
    return {d["label"]: d for d in reply["data"]}


@pytest.fixture
def claude_mock(start_mock: Callable[..., ServerThread]) -> ServerThread:
    return start_mock(record=True, api_key=KEY)


@pytest.fixture
def claude(
    start_gateway: Callable[..., RunningGateway], claude_mock: ServerThread, sqlite_url: str
) -> tuple[RunningGateway, OpenAI]:
    """A gateway whose model "claude" is one Anthropic deployment at ``claude_mock``."""
    return start(start_gateway, sqlite_url, [{"name": "claude", "deployments": [anthropic_dep(claude_mock)]}])


# -- chat, translated --------------------------------------------------------------------------


def test_chat_is_sent_as_a_messages_request_and_answered_as_a_chat_completion(
    claude: tuple[RunningGateway, OpenAI], claude_mock: ServerThread
) -> None:
    """The provider gets a Messages body (system apart, max_tokens, its model name) on /v1/messages
    with its key in x-api-key; the client gets a chat.completion."""
    _, client = claude
    completion = client.chat.completions.create(model="claude", messages=ASKED)  # type: ignore[arg-type]
    assert completion.object == "chat.completion" and completion.model == CLAUDE
    assert completion.choices[0].message.role == "assistant"
    assert len((completion.choices[0].message.content or "").split()) == 16  # the mock's default length
    assert completion.choices[0].finish_reason == "stop"
    [sent] = claude_mock.app.state.recorded
    assert sent.path == "/v1/messages"
    assert sent.body["model"] == CLAUDE and sent.body["system"] == "Be brief."
    assert sent.body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert isinstance(sent.body["max_tokens"], int) and "stream" not in sent.body
    assert sent.headers["x-api-key"] == KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers  # the client's gateway key goes no further


def test_max_tokens_is_kept_and_a_cut_answer_finishes_with_length(
    claude: tuple[RunningGateway, OpenAI], claude_mock: ServerThread
) -> None:
    """The client's max_tokens is Anthropic's; stopping there is finish_reason "length"."""
    _, client = claude
    completion = client.chat.completions.create(model="claude", messages=ASKED, max_tokens=5)  # type: ignore[arg-type]
    assert claude_mock.app.state.recorded[-1].body["max_tokens"] == 5
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


@pytest.mark.parametrize(("base_path", "version"), [("", "2023-06-01"), ("/v1", "2024-10-22")])
def test_base_url_with_or_without_v1_reaches_v1_messages(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    base_path: str,
    version: str,
) -> None:
    """base_url http://host:port and http://host:port/v1 both send to /v1/messages, with the
    deployment's anthropic_version."""
    mock = start_mock(record=True, api_key=KEY)
    dep = anthropic_dep(mock, base_path, anthropic_version=version)
    _, client = start(start_gateway, sqlite_url, [{"name": "claude", "deployments": [dep]}])
    assert client.chat.completions.create(model="claude", messages=ASKED).choices[0].message.content  # type: ignore[arg-type]
    [sent] = mock.app.state.recorded
    assert sent.path == "/v1/messages" and sent.headers["anthropic-version"] == version


def test_a_stream_without_include_usage_shows_no_usage_but_the_ledger_has_it(
    claude: tuple[RunningGateway, OpenAI], claude_mock: ServerThread, sqlite_url: str
) -> None:
    """A streamed chat comes back as chat.completion.chunks whose text is the whole answer; no usage
    chunk reaches a client that did not ask for one, yet the ledger has the usage."""
    _, client = claude
    whole = client.chat.completions.create(model="claude", messages=ASKED)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model="claude", messages=ASKED, stream=True))  # type: ignore[arg-type]
    assert claude_mock.app.state.recorded[-1].body["stream"] is True
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert whole.usage is not None
    _, streamed = ledger(sqlite_url, 2)
    assert (streamed["stream"], streamed["status"]) == (1, 200)
    assert (streamed["prompt_tokens"], streamed["completion_tokens"]) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )


def test_a_stream_with_include_usage_ends_with_the_usage(claude: tuple[RunningGateway, OpenAI]) -> None:
    """With stream_options.include_usage the last chunk has no choices and the answer's usage."""
    _, client = claude
    whole = client.chat.completions.create(model="claude", messages=ASKED)  # type: ignore[arg-type]
    chunks = list(
        client.chat.completions.create(
            model="claude",
            messages=ASKED,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *text, last = chunks
    assert last.choices == [] and last.usage is not None and whole.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
        whole.usage.total_tokens,
    )
    assert all(c.usage is None for c in text)
    assert "".join(c.choices[0].delta.content or "" for c in text) == whole.choices[0].message.content


# -- tool calls --------------------------------------------------------------------------------


def test_tool_calls_come_back_with_json_arguments(
    claude: tuple[RunningGateway, OpenAI], claude_mock: ServerThread
) -> None:
    """A request with tools gets tool_calls whose arguments are JSON, and finish_reason tool_calls;
    the provider was sent the tools in Anthropic's form."""
    _, client = claude
    completion = client.chat.completions.create(model="claude", messages=TOOL_QUESTION, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "fox"}
    [tool] = claude_mock.app.state.recorded[-1].body["tools"]
    assert tool["name"] == "get_weather" and tool["input_schema"] == WEATHER["function"]["parameters"]  # type: ignore[index]


def test_streamed_tool_call_arguments_assemble_into_json(claude: tuple[RunningGateway, OpenAI]) -> None:
    """Streamed, the tool call's id and name come first and its argument pieces join into JSON."""
    _, client = claude
    stream = client.chat.completions.create(model="claude", messages=TOOL_QUESTION, tools=[WEATHER], stream=True)  # type: ignore[arg-type,list-item]
    calls: dict[int, dict[str, str]] = {}
    finish = []
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
        if chunk.choices[0].finish_reason:
            finish.append(chunk.choices[0].finish_reason)
    assert finish == ["tool_calls"]
    [call] = calls.values()
    assert call["id"] and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "fox"}


def test_a_tool_result_gets_a_text_answer(claude: tuple[RunningGateway, OpenAI], claude_mock: ServerThread) -> None:
    """The follow-up carrying the tool's result (role tool) is sent as a tool_result and answered in text."""
    _, client = claude
    first = client.chat.completions.create(model="claude", messages=TOOL_QUESTION, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    asked = first.choices[0].message
    [call] = asked.tool_calls or []
    follow_up = [
        *TOOL_QUESTION,
        asked.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    answer = client.chat.completions.create(model="claude", messages=follow_up, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls
    sent = claude_mock.app.state.recorded[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert any(b.get("type") == "tool_use" and b["id"] == call.id for b in sent[1]["content"])
    [result] = sent[2]["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == call.id


# -- usage, ledger, quota ----------------------------------------------------------------------


def test_the_ledger_and_the_quota_settle_on_the_translated_usage(
    claude: tuple[RunningGateway, OpenAI], claude_mock: ServerThread, sqlite_url: str
) -> None:
    """The ledger row's tokens are the usage the client was shown, and the tier's daily token
    quota is charged exactly that."""
    gw, client = claude
    completion = client.chat.completions.create(model="claude", messages=ASKED)  # type: ignore[arg-type]
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens == 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.total_tokens == claude_mock.app.state.tokens_served  # the provider's own count
    (row,) = ledger(sqlite_url, 1)
    assert (row["model_requested"], row["model_served"], row["status"]) == ("claude", "claude", 200)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        0,
    )
    quota = httpx.get(gw.v1 + "/quota", headers={"Authorization": f"Bearer {client.api_key}"}).json()
    by_name = {entry["name"]: entry for entry in quota["limits"]}
    assert by_name["tokens per day (TPD)"]["used"] == usage.total_tokens


# -- fallbacks and retries across the two APIs -------------------------------------------------


def test_an_anthropic_model_falls_back_to_an_openai_one(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """When the Anthropic deployment is overloaded, the OpenAI model in the fallback chain serves."""
    overloaded, healthy = start_mock(rate_500=1.0), start_mock()
    _, client = start(
        start_gateway,
        sqlite_url,
        [
            {"name": "claude", "deployments": [anthropic_dep(overloaded)], "fallbacks": ["gpt"]},
            {"name": "gpt", "deployments": [openai_dep(healthy)]},
        ],
        router={"max_attempts": 4},
    )
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=ASKED)  # type: ignore[arg-type]
    assert raw.headers["x-quotagate-deployment"] == "gpt#0 (openai/gpt-4o-mini)"
    completion = raw.parse()
    assert completion.model == "gpt-4o-mini" and completion.choices[0].message.content
    assert overloaded.app.state.requests_served >= 1 and healthy.app.state.requests_served == 1


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_model_falls_back_to_an_anthropic_one(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    stream: bool,
) -> None:
    """When the OpenAI deployment fails, the Anthropic model in the fallback chain serves, its
    answer (or stream) translated to chat completions."""
    failing, healthy = start_mock(rate_500=1.0), start_mock(api_key=KEY)
    _, client = start(
        start_gateway,
        sqlite_url,
        [
            {"name": "gpt", "deployments": [openai_dep(failing)], "fallbacks": ["claude"]},
            {"name": "claude", "deployments": [anthropic_dep(healthy)]},
        ],
        router={"max_attempts": 4},
    )
    raw = client.chat.completions.with_raw_response.create(model="gpt", messages=ASKED, stream=stream)  # type: ignore[arg-type]
    assert raw.headers["x-quotagate-deployment"] == f"claude#0 (anthropic/{CLAUDE})"
    if stream:
        chunks = list(raw.parse())  # type: ignore[call-overload]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert {c.model for c in chunks} == {CLAUDE}
    else:
        completion = raw.parse()
        assert completion.model == CLAUDE
        text = completion.choices[0].message.content or ""
    assert len(text.split()) == 16
    assert healthy.app.state.requests_served == 1


def test_an_overloaded_deployment_is_routed_around_and_its_breaker_opens(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """With one of two Anthropic deployments always answering 529, every request succeeds on the
    other, and the overloaded one's breaker opens after the configured failures."""
    overloaded, healthy = start_mock(rate_500=1.0), start_mock()
    gw, client = start(
        start_gateway,
        sqlite_url,
        [{"name": "claude", "deployments": [anthropic_dep(overloaded), anthropic_dep(healthy)]}],
        router={"breaker": {"failures": 3, "cooldown_seconds": 60}},
    )
    served = [
        client.chat.completions.with_raw_response.create(model="claude", messages=ASKED, max_tokens=3)  # type: ignore[arg-type]
        for _ in range(12)
    ]
    assert {r.headers["x-quotagate-deployment"] for r in served} == {f"claude#1 (anthropic/{CLAUDE})"}
    state = deployments(gw)
    assert state[f"claude#0 (anthropic/{CLAUDE})"]["breaker"] == "open"
    assert state[f"claude#1 (anthropic/{CLAUDE})"]["breaker"] == "closed"
    assert overloaded.app.state.requests_served == 3  # then it was left alone


def test_when_nothing_serves_the_client_gets_the_529(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """An overloaded Anthropic deployment with nothing to fall back to is a 529, upstream_overloaded."""
    overloaded = start_mock(rate_500=1.0)
    _, client = start(start_gateway, sqlite_url, [{"name": "claude", "deployments": [anthropic_dep(overloaded)]}])
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="claude", messages=ASKED)  # type: ignore[arg-type]
    assert_openai_error(failed.value.response, 529, "upstream_overloaded")


def test_an_anthropic_429_is_waited_out_and_retried(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """With a single Anthropic deployment, its 429 with retry-after is waited out and the retry succeeds."""
    limited = start_mock(fail_first=1, retry_after=0.5)
    _, client = start(start_gateway, sqlite_url, [{"name": "claude", "deployments": [anthropic_dep(limited)]}])
    started = time.monotonic()
    completion = client.chat.completions.create(model="claude", messages=ASKED)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
    assert 0.5 <= time.monotonic() - started < 3.0
    assert limited.app.state.requests_served == 2


def test_an_anthropic_429_cools_its_deployment_down(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """An Anthropic 429 cools its deployment for the retry-after it named; an OpenAI deployment of
    the same model serves meanwhile."""
    limited, spare = start_mock(rate_429=1.0, retry_after=7), start_mock()
    gw, client = start(
        start_gateway,
        sqlite_url,
        [{"name": "chat", "deployments": [anthropic_dep(limited, priority=0), openai_dep(spare, priority=1)]}],
    )
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=ASKED)  # type: ignore[arg-type]
        assert raw.headers["x-quotagate-deployment"] == "chat#1 (openai/gpt-4o-mini)"
    cooling = deployments(gw)[f"chat#0 (anthropic/{CLAUDE})"]
    assert 5.0 < cooling["cooldown_seconds_left"] <= 7.0
    assert limited.app.state.requests_served == 1  # not asked again while cooling down


def test_an_exhausted_anthropic_request_limit_cools_the_deployment_until_its_reset(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """anthropic-ratelimit-requests-remaining: 0 cools the deployment until the reset time it names,
    before the provider has to refuse anything."""
    limited, spare = start_mock(rpm=1), start_mock()  # the mock's window is a minute
    gw, client = start(
        start_gateway,
        sqlite_url,
        [{"name": "claude", "deployments": [anthropic_dep(limited, priority=0), anthropic_dep(spare, priority=1)]}],
    )
    labels = [
        client.chat.completions.with_raw_response.create(model="claude", messages=ASKED).headers[  # type: ignore[arg-type]
            "x-quotagate-deployment"
        ]
        for _ in range(3)
    ]
    assert labels == [f"claude#0 (anthropic/{CLAUDE})"] + [f"claude#1 (anthropic/{CLAUDE})"] * 2
    assert limited.app.state.rate_limited == 0  # never refused: the gateway knew to stay away
    assert deployments(gw)[f"claude#0 (anthropic/{CLAUDE})"]["cooldown_seconds_left"] > 30


# -- what the Messages API has no endpoint for -------------------------------------------------


def test_embeddings_and_completions_of_an_anthropic_model_are_a_400(claude: tuple[RunningGateway, OpenAI]) -> None:
    """Embeddings and legacy completions asked of a model served by the Messages API are OpenAI's 400."""
    _, client = claude
    with pytest.raises(openai.BadRequestError) as embeddings:
        client.embeddings.create(model="claude", input="hello")
    error = assert_openai_error(embeddings.value.response, 400)
    assert "Messages API" in error["message"]
    with pytest.raises(openai.BadRequestError) as completions:
        client.completions.create(model="claude", prompt="Once upon")
    assert_openai_error(completions.value.response, 400)


def test_a_chat_client_leaving_a_translated_stream_is_a_499_charged_what_was_sent(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """An OpenAI client that hangs up mid-stream of an Anthropic-served answer: its row is a 499
    charged the prompt as Anthropic's message_start reported it (not the gateway's estimate) and
    the text that reached it, and the tenant's token quota is settled with the same figures."""
    slow = start_mock(stream_chunk_delay_ms=100, completion_tokens=40, api_key=KEY)
    gw, client = start(start_gateway, sqlite_url, [{"name": "claude", "deployments": [anthropic_dep(slow)]}])
    whole = client.chat.completions.create(model="claude", messages=ASKED)  # type: ignore[arg-type]
    assert whole.usage is not None
    body = {"model": "claude", "messages": ASKED, "stream": True}
    headers = {"Authorization": f"Bearer {client.api_key}"}
    with httpx.stream("POST", gw.v1 + "/chat/completions", headers=headers, json=body) as response:
        assert response.status_code == 200
        pieces = 0
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                pieces += 1
                if pieces == 3:
                    break
    rows = ledger(sqlite_url, 2)
    (left,) = [row for row in rows if row["status"] == 499]
    assert left["stream"] == 1
    assert left["prompt_tokens"] == whole.usage.prompt_tokens
    assert 0 < left["completion_tokens"] < 40
    quota = httpx.get(gw.v1 + "/quota", headers=headers).json()
    (tpd,) = [limit for limit in quota["limits"] if limit["unit"] == "tokens"]
    assert tpd["used"] == sum(row["prompt_tokens"] + row["completion_tokens"] for row in rows)
