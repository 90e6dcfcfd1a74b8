"""Streams are relayed event by event as they arrive, and failures on either side end cleanly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import httpx
import openai
import pytest
from openai import OpenAI

from quotagate.config import Config

from ..conftest import RunningGateway, ServerThread, gateway_config

STREAM_CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def test_first_chunk_arrives_before_the_stream_ends(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """No buffering: the client reads the first event while the provider is still generating."""
    slow = start_mock(stream_chunk_delay_ms=150, completion_tokens=8)  # ~1.6 s of stream
    gw = start_gateway(gateway_config(sqlite_url, slow.url))
    key = gw.create_key()["key"]
    started = time.monotonic()
    arrivals: list[float] = []
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=STREAM_CHAT,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 11  # role, 8 tokens, finish, [DONE]
    # The stream takes >= 10 x 150 ms; the first event must not wait for the rest.
    assert arrivals[-1] >= 1.4
    assert arrivals[0] < arrivals[-1] - 1.0


def test_upstream_drop_midstream_reaches_the_sdk_as_an_error(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A provider that cuts the stream off gives the client an error event, not a silent end."""
    dropping = start_mock(rate_drop=1.0, completion_tokens=10)
    gw = start_gateway(gateway_config(sqlite_url, dropping.url))
    client = OpenAI(base_url=gw.v1, api_key=gw.create_key()["key"], max_retries=0)
    received: list[str] = []
    stream = client.chat.completions.create(**STREAM_CHAT)  # type: ignore[call-overload]

    def read_all() -> None:
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="broke off the stream"):
        read_all()
    assert 0 < len(received) < 11  # what came before the drop was delivered
    # The gateway is unharmed.
    assert httpx.get(gw.url + "/health").status_code == 200


async def test_client_disconnect_midstream_frees_the_gateway(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A client that leaves mid-stream does not break or stall the gateway."""
    slow = start_mock(stream_chunk_delay_ms=200, completion_tokens=20)
    gw = start_gateway(gateway_config(sqlite_url, slow.url))
    key = gw.create_key()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            response = await session.post(gw.v1 + "/chat/completions", json=STREAM_CHAT, headers=headers)
            first = await response.content.readline()
            assert first.startswith(b"data: ")
            response.close()  # hang up after the first event
        await asyncio.sleep(0.3)
        # The gateway serves new requests at once.
        async with session.post(
            gw.v1 + "/chat/completions", json={**STREAM_CHAT, "stream": False}, headers=headers
        ) as ok:
            assert ok.status == 200
            assert (await ok.json())["usage"]["completion_tokens"] == 20


def timed_config(sqlite_url: str, mock_url: str, **timeouts: float) -> Config:
    deployment = {"provider": "openai-compatible", "base_url": mock_url + "/v1", "model": "gpt-4o-mini", **timeouts}
    return gateway_config(sqlite_url, mock_url, models=[{"name": "gpt-4o-mini", "deployments": [deployment]}])


def test_gaps_in_a_stream_are_held_to_the_chunk_timeout(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Once a stream has begun, the first-byte timeout no longer applies: the chunk timeout does."""
    slow = start_mock(stream_chunk_delay_ms=400, completion_tokens=3)  # a 0.4 s gap after every event

    # Gaps longer than the first-byte timeout, shorter than the chunk timeout: the stream completes.
    patient = start_gateway(timed_config(sqlite_url, slow.url, first_byte_timeout=0.2, chunk_timeout=3))
    client = OpenAI(base_url=patient.v1, api_key=patient.create_key()["key"], max_retries=0)
    stream = client.chat.completions.create(**STREAM_CHAT)  # type: ignore[call-overload]
    words = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(words) == 3

    # Gaps longer than the chunk timeout: the client gets an error event soon after the first gap.
    other_database = sqlite_url.replace("quotagate.db", "strict.db")
    strict = start_gateway(timed_config(other_database, slow.url, first_byte_timeout=5, chunk_timeout=0.15))
    client = OpenAI(base_url=strict.v1, api_key=strict.create_key()["key"], max_retries=0)
    started = time.monotonic()
    stream = client.chat.completions.create(**STREAM_CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.APIError, match=r"stalled mid-stream: nothing for 0\.15s"):
        for _ in stream:
            pass
    assert time.monotonic() - started < 2.0
