"""The OpenAI SDK wrapped by quotagate.client.limited, against the mock provider over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from quotagate.client import RateLimiter, RateLimitTimeout, limited
from quotagate.tokens import count_chat_tokens, get_encoding

from ..conftest import ServerThread
from ..limits.conftest import FakeClock

MESSAGES = [{"role": "user", "content": "Say hello."}]


def fake_sleep(clock: FakeClock):  # type: ignore[no-untyped-def]
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    return sleep


def test_no_window_holds_more_than_the_rpm(start_mock: Callable[..., ServerThread]) -> None:
    """With RPM 60, no 60-second window ever holds more than 60 requests (injected clock)."""
    mock = start_mock()
    clock = FakeClock()
    sent_at: list[float] = []
    http = openai.DefaultHttpxClient(event_hooks={"request": [lambda request: sent_at.append(clock.now)]})
    limiter = RateLimiter(rpm=60, clock=clock, sleep=fake_sleep(clock), max_wait=3600)
    client = limited(OpenAI(base_url=mock.url + "/v1", api_key="sk-test", http_client=http), limiter=limiter)
    for _ in range(150):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert len(sent_at) == 150
    worst = max(sum(1 for t in sent_at if start <= t < start + 60.0) for start in sent_at)
    assert worst == 60
    assert sent_at[-1] - sent_at[0] == pytest.approx(149.0)  # paced at one a second, no faster


def test_waiting_is_bounded_with_a_clear_error(start_mock: Callable[..., ServerThread]) -> None:
    """Past max_wait the call fails with RateLimitTimeout naming the limit, before reaching the provider."""
    mock = start_mock()
    client = limited(OpenAI(base_url=mock.url + "/v1", api_key="sk-test"), rpm=1, max_wait=0.2)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(RateLimitTimeout, match=r"RPM has no capacity within 0.2s") as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.retry_after > 50


def test_retry_after_is_honoured(start_mock: Callable[..., ServerThread]) -> None:
    """The provider's 429 with Retry-After is waited out, then the call succeeds."""
    mock = start_mock(fail_first=2, retry_after=0.5)
    client = limited(OpenAI(base_url=mock.url + "/v1", api_key="sk-test"), rpm=1000)
    started = time.monotonic()
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
    assert time.monotonic() - started >= 1.0  # two waits of 0.5 s
    assert mock.app.state.requests_served == 3


def test_retries_give_up_after_max_retries(start_mock: Callable[..., ServerThread]) -> None:
    """A provider that keeps failing surfaces the SDK's own error after max_retries."""
    mock = start_mock(rate_500=1.0)
    client = limited(OpenAI(base_url=mock.url + "/v1", api_key="sk-test"), rpm=1000, max_retries=2)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert mock.app.state.requests_served == 3


def _prompt(messages: list[dict[str, str]]) -> int:
    return count_chat_tokens({"messages": messages}, get_encoding("o200k_base"))


def test_sync_settlement_matches_usage(start_mock: Callable[..., ServerThread]) -> None:
    """After plain and streamed calls the token quota holds exactly the tokens the provider reported."""
    mock = start_mock(completion_tokens=12)
    limiter = RateLimiter(tpd=1_000_000, rpm=10_000)
    client = limited(OpenAI(base_url=mock.url + "/v1", api_key="sk-test"), limiter=limiter)
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
    assert plain.usage is not None
    expected = plain.usage.total_tokens
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    assert all(chunk.choices for chunk in chunks)  # the usage chunk we asked for is hidden
    expected += _prompt(MESSAGES) + 12
    asked = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )  # type: ignore[arg-type]
    assert asked[-1].usage is not None and asked[-1].choices == []  # asked for: kept
    expected += asked[-1].usage.total_tokens
    used = {r.name: r.used for r in limiter.remaining()}
    assert used["TPD"] == expected


async def test_async_client_settlement_and_types(start_mock: Callable[..., ServerThread]) -> None:
    """The async client keeps the SDK's types; streamed and plain calls settle to reported usage."""
    mock = start_mock(completion_tokens=7)
    limiter = RateLimiter(tpd=1_000_000)
    client = limited(AsyncOpenAI(base_url=mock.url + "/v1", api_key="sk-test"), limiter=limiter)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert type(completion).__name__ == "ChatCompletion" and completion.usage is not None
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert isinstance(stream, openai.AsyncStream)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert len(text.split()) == 7
    embedded = await client.embeddings.create(model="text-embedding-3-small", input="hello world")
    used = {r.name: r.used for r in await limiter.aremaining()}
    assert used["TPD"] == completion.usage.total_tokens + _prompt(MESSAGES) + 7 + embedded.usage.total_tokens
