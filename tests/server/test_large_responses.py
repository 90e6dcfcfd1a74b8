"""Answers far over the upstream client's back-pressure mark (256 KiB) reach the client whole and
at once, through the gateway, from a real upstream on loopback (issue 18, defect 4)."""

from __future__ import annotations

import asyncio
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


class EndlessEvent:
    """An upstream that answers a stream with one event that never ends: ``data: xxxx...`` with
    no blank line, for as long as anyone reads it."""

    def __init__(self) -> None:
        self.sent = 0
        self.stopped = False

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        piece = b"data: " + b"x" * (256 * 1024)
        # uvicorn drops writes to a closed connection without a word: the disconnect says when
        # the reader (the gateway) hung up.
        gone = asyncio.ensure_future(receive())
        try:
            while self.sent < 1024 * 1024 * 1024 and not gone.done():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                self.sent += len(piece)
                # A send to a closed connection returns at once: let the disconnect be seen.
                await asyncio.sleep(0)
        finally:
            gone.cancel()
            self.stopped = True


def test_a_stream_event_that_never_ends_is_cut_off_with_an_error(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str
) -> None:
    """The gateway holds at most 32 MiB of one event: past that the client gets an error event
    instead of a gateway whose memory grows until a timeout (10 minutes by default)."""
    upstream = EndlessEvent()
    server = ServerThread(upstream).start()
    try:
        _, client = _gateway(start_gateway, server, sqlite_url)
        began = time.monotonic()
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        try:
            for _ in stream:
                pass
            raised = None
        except Exception as exc:  # the SDK raises the error event as an APIError
            raised = exc
        assert raised is not None and "stream_event_too_large" in repr(getattr(raised, "body", raised)) + str(raised)
        assert time.monotonic() - began < CHUNK_TIMEOUT
        # It stopped reading there: not the whole gigabyte the upstream would have sent.
        deadline = time.monotonic() + 5
        while not upstream.stopped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.stopped and upstream.sent < 256 * 1024 * 1024
    finally:
        server.stop()
