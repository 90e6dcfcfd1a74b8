"""The provider's key never leaves the gateway: an upstream that echoes it in every field of its
errors and in every header leaves no trace of it in the client's responses, the ledger, the logs
or /metrics (issue 18, defect 7); nor does one that answers 200 and writes the key (or the master
key) into its stream."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from ..conftest import MASTER_KEY, RunningGateway, ServerThread, gateway_config

# Looks like no known key format, so only the gateway's knowledge of its own key can catch it.
SECRET = "prov-7f3a9c2e1b5d4a6f8e0c"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class EchoingUpstream:
    """An OpenAI-style upstream that answers ``status`` (from the request's ``user`` field) and
    writes the key it was sent into every field of its error and every header it can."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        key = dict(scope["headers"])[b"authorization"].decode().removeprefix("Bearer ")
        status = int(orjson.loads(body).get("user", "200"))
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)  # the key in JSON escapes
        if status == 200:
            payload: Any = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        else:
            payload = {
                "error": {
                    "message": f"bad key {key}",
                    "type": key,
                    "param": f"param-{key}",
                    "code": key,
                    key: {"nested": [key, {"deeper": f"x{key}x"}]},
                    "escaped": "@@ESCAPED@@",
                }
            }
        raw = orjson.dumps(payload).replace(b"@@ESCAPED@@", escaped.encode())
        headers = [
            (b"content-type", f"application/json; echo={key}".encode()),
            (b"retry-after", key.encode()),
            (b"retry-after-ms", key.encode()),
            (b"x-request-id", key.encode()),
            (b"x-echo", key.encode()),
            (b"x-ratelimit-remaining-requests", b"5"),
            (b"x-ratelimit-reset-requests", key.encode()),
            (b"content-length", str(len(raw)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})


@pytest.fixture
def echoing(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningGateway]:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", SECRET)
    upstream = ServerThread(EchoingUpstream()).start()
    try:
        config = gateway_config(sqlite_url, upstream.url, logging={"requests": True, "level": "debug"})
        # No retries: each status is answered once, as it came.
        data = config.model_dump()
        data["router"] = {**data.get("router", {}), "max_attempts": 1}
        yield start_gateway(type(config).model_validate(data))
    finally:
        upstream.stop()


def _leaks(text: str) -> bool:
    return SECRET in text or SECRET[5:] in text


@pytest.mark.parametrize("status", [200, 400, 404, 422, 429, 401, 403, 500, 503])
def test_an_echoed_key_reaches_no_client_no_row_no_log_and_no_metric(
    echoing: RunningGateway, sqlite_url: str, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """Whatever the status, the key echoed in error fields and headers is nowhere the gateway writes."""
    caplog.set_level(logging.DEBUG)
    key = echoing.create_key(tier="paid")["key"]
    response = httpx.post(
        echoing.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**CHAT, "user": str(status)},
        timeout=30,
    )
    assert response.status_code == (status if status < 500 and status not in (401, 403) else 502)
    assert not _leaks(response.text), response.text
    for name, value in response.headers.items():
        assert not _leaks(name) and not _leaks(value), (name, value)
    if status != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    if status in (400, 404, 422, 429):
        # The fields are relayed, scrubbed, rather than dropped.
        assert "[redacted]" in error["message"] and error["type"] == "[redacted]"
        assert error["param"] == "param-[redacted]"
        assert "retry-after" not in response.headers  # not a number of seconds: not relayed

    metrics = httpx.get(echoing.url + "/metrics", timeout=10).text
    assert not _leaks(metrics)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert not _leaks(logged)
    rows = _ledger_rows(sqlite_url)
    assert rows and not any(_leaks(repr(row)) for row in rows)
    if status != 200:
        # error_type is a short code of the gateway's, never the provider's text.
        assert rows[-1]["error_type"] in {"upstream_error", "upstream_auth_error", "upstream_server_error"}


def _ledger_rows(sqlite_url: str) -> list[dict[str, Any]]:
    """Every ledger row, waiting briefly for the row of the request just answered."""
    path = sqlite_url.removeprefix("sqlite:///")
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(path) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(row) for row in db.execute("SELECT * FROM qg_usage ORDER BY ts")]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


class StreamingEchoUpstream:
    """An upstream that answers 200 and then writes the key it was sent, and the gateway's master
    key, into what follows: a stream's content and its error event (raw and in JSON escapes), or a
    non-streamed error body. With ``"user": "split"`` the stream is sent in pieces cut through the
    middle of every secret, each piece a chunk of its own."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body)
        key = dict(scope["headers"])[b"authorization"].decode().removeprefix("Bearer ")
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        error = {
            "error": {
                "message": f"stream failed for {key} (admin {MASTER_KEY})",
                "type": key,
                "param": None,
                "code": key,
                "escaped": "@@ESCAPED@@",
            }
        }
        raw_error = orjson.dumps(error).replace(b"@@ESCAPED@@", escaped.encode())
        if not request.get("stream"):
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": raw_error})
            return
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "delta": {"content": f"your key is {key}, mine {MASTER_KEY}"}, "finish_reason": None}
            ],
        }
        stream = b"data: " + orjson.dumps(chunk) + b"\n\n" + b"data: " + raw_error + b"\n\n"
        pieces = [stream]
        if request.get("user") == "split":
            cuts = sorted(
                at + len(secret) // 2
                for secret in (key.encode(), MASTER_KEY.encode())
                for at in _occurrences(stream, secret)
            )
            pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            await asyncio.sleep(0.05)  # each piece reaches the gateway as a chunk of its own
        await send({"type": "http.response.body", "body": b""})


def _occurrences(data: bytes, part: bytes) -> list[int]:
    found, at = [], data.find(part)
    while at >= 0:
        found.append(at)
        at = data.find(part, at + 1)
    return found


@pytest.fixture
def streaming_echo(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningGateway]:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", SECRET)
    upstream = ServerThread(StreamingEchoUpstream()).start()
    try:
        yield start_gateway(gateway_config(sqlite_url, upstream.url))
    finally:
        upstream.stop()


def _leaks_any(text: str) -> bool:
    return _leaks(text) or MASTER_KEY in text


@pytest.mark.parametrize("user", ["whole", "split"])
def test_secrets_echoed_in_a_stream_reach_neither_the_client_nor_the_row(
    streaming_echo: RunningGateway, sqlite_url: str, user: str
) -> None:
    """A 200 stream that carries the provider's key and the master key, in content and in an error
    event, raw or JSON-escaped, whole or cut across chunks, reaches the client without them."""
    key = streaming_echo.create_key(tier="paid")["key"]
    with httpx.stream(
        "POST",
        streaming_echo.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**CHAT, "stream": True, "user": user},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert not _leaks_any(text), text
    events = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    # Still events a client can parse, the key decoded from its escapes included.
    assert len(events) == 2 and not _leaks_any(orjson.dumps(events).decode())
    assert events[0]["choices"][0]["delta"]["content"] == "your key is [redacted], mine [redacted]"
    error = events[1]["error"]
    assert error["message"] == "stream failed for [redacted] (admin [redacted])"
    assert error["type"] == error["code"] == "[redacted]"

    rows = _ledger_rows(sqlite_url)
    assert rows and not any(_leaks_any(repr(row)) for row in rows)
    # The row says the provider ended the stream with an error, without the code that echoed the key.
    assert rows[-1]["status"] == 200 and rows[-1]["error_type"] == "upstream_error"


def test_secrets_echoed_in_a_non_streamed_200_do_not_reach_the_client(streaming_echo: RunningGateway) -> None:
    """An error body sent with status 200 is scrubbed as an error response would be."""
    key = streaming_echo.create_key(tier="paid")["key"]
    response = httpx.post(
        streaming_echo.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT, timeout=30
    )
    assert response.status_code == 200
    assert not _leaks_any(response.text) and not _leaks_any(orjson.dumps(response.json()).decode())
    assert response.json()["error"]["escaped"] == "[redacted]"
