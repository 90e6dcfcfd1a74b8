"""The provider's key never leaves the gateway: an upstream that echoes it in every field of its
errors and in every header leaves no trace of it in the client's responses, the ledger, the logs
or /metrics (issue 18, defect 7)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from ..conftest import RunningGateway, ServerThread, gateway_config

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
