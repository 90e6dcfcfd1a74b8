"""Answers far over the upstream client's back-pressure mark (256 KiB) reach the client whole and
at once, through the gateway, from a real upstream on loopback (issue 18, defect 4)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from openai import OpenAI

from ..conftest import RunningGateway, ServerThread, gateway_config

# Below the time the old deadlock took to end (the chunk timeout), far above an honest answer's.
CHUNK_TIMEOUT = 20.0


def _gateway(
    start_gateway: Callable[..., RunningGateway], upstream: ServerThread, sqlite_url: str
) -> tuple[RunningGateway, OpenAI]:
    config = gateway_config(sqlite_url, upstream.url)
    data: dict[str, Any] = config.model_dump()
    for model in data["models"]:
        model["deployments"][0]["chunk_timeout"] = CHUNK_TIMEOUT
    gw = start_gateway(type(config).model_validate(data))
    client = OpenAI(api_key=gw.create_key(tier="paid")["key"], base_url=gw.v1, max_retries=0, timeout=60)
    return gw, client


def test_a_multi_megabyte_chat_completion_arrives_whole(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A non-streamed chat answer of about 2.8 MB is relayed whole, without waiting for a timeout."""
    upstream = start_mock(completion_tokens=600_000)
    _, client = _gateway(start_gateway, upstream, sqlite_url)
    began = time.monotonic()
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a long answer, please"}]
    )
    assert time.monotonic() - began < CHUNK_TIMEOUT / 2
    content = completion.choices[0].message.content
    assert content is not None and len(content) > 2 * 1024 * 1024
    assert completion.usage is not None and completion.usage.completion_tokens == 600_000


def test_embeddings_for_many_inputs_arrive_whole(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Embeddings of many inputs (6.5 MB of floats, 8 MB of base64) are relayed whole."""
    upstream = start_mock()
    _, client = _gateway(start_gateway, upstream, sqlite_url)
    for encoding_format, count in (("float", 200), ("base64", 1000)):
        began = time.monotonic()
        answer = client.embeddings.create(
            model="text-embedding-3-small",
            input=[f"input number {i}" for i in range(count)],
            encoding_format=encoding_format,  # type: ignore[arg-type]
        )
        assert time.monotonic() - began < CHUNK_TIMEOUT / 2
        assert [item.index for item in answer.data] == list(range(count))
