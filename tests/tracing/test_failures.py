"""Tracing never breaks a request: when recording a span fails (a bug in the tracing module, or
in OpenTelemetry's SDK), requests get the answers they would have got untraced, their ledger rows
are written and their limits settled, and the failure is logged."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import Span

from quotagate._logging import EveryFewSeconds
from quotagate.tracing import _otel

from ..conftest import RunningGateway, ServerThread
from .collector import Collector
from .test_export import post, traced_config


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("method", ["set_attributes", "set_status", "end"])
def test_a_tracer_that_fails_leaves_requests_answers_rows_and_limits_as_they_were(
    method: str,
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every span's ``method`` raises (set_attributes: each request's span cannot be made; end:
    no span, the cache's, the limits' or an attempt's, can end; set_status: a failed request's
    cannot end). A cache miss, a cache hit and a stream are answered 200, the request over the
    limit gets its 429 (not a 500), each has its ledger row with that status, the tokens used are
    what was settled (not the reservations' estimates), and the failure is logged."""
    _, endpoint = collector

    def fails(self: Span, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{method} failed")

    monkeypatch.setattr(Span, method, fails)
    log = _Lines()
    logging.getLogger("quotagate.tracing").addHandler(log)
    # A logger of the test's own: another test's failure must not hold this one's line back.
    failures = EveryFewSeconds(logging.getLogger("quotagate.tracing"))
    monkeypatch.setattr(_otel, "_log_failure", failures, raising=False)
    tiers = {"free": {"rpm": 3, "tpd": 100000, "cache": {"mode": "exact"}}}
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, tiers=tiers))
    key = gw.create_key()["key"]
    try:
        missed = post(gw, key)
        assert missed.status_code == 200, missed.text
        time.sleep(0.2)  # its answer is stored in the background, after the client has it
        hit = post(gw, key)
        assert (hit.status_code, hit.headers["x-quotagate-cache"]) == (200, "hit")
        stream = {
            "model": "gpt-4o-mini",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "And where is my parcel?"}],
        }
        with httpx.stream(
            "POST", gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=stream
        ) as streamed:
            assert streamed.status_code == 200
            text = streamed.read().decode()
        assert text.rstrip().endswith("data: [DONE]")
        refused = post(gw, key)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    finally:
        logging.getLogger("quotagate.tracing").removeHandler(log)
    requests = [missed, hit, streamed, refused]
    with gw.admin() as admin:
        rows = admin.get("/admin/ledger", params={"limit": 10}).json()["data"]
    statuses = {row["request_id"]: row["status"] for row in rows}
    assert [statuses.get(r.headers["x-request-id"]) for r in requests] == [200, 200, 200, 429]
    # Settled: the miss's and the stream's tokens as the provider reported them (the hit is
    # charged as a request only); an unsettled reservation would count its estimate instead.
    streamed_usage = [line for line in text.splitlines() if '"usage":{' in line]
    assert streamed_usage
    reported = missed.json()["usage"]["total_tokens"] + json.loads(streamed_usage[-1][6:])["usage"]["total_tokens"]
    quota = httpx.get(gw.v1 + "/quota", headers={"Authorization": f"Bearer {key}"}).json()
    used = {entry["name"]: entry["used"] for entry in quota["limits"]}
    assert used["tokens per day (TPD)"] == reported
    assert used["requests per minute (RPM)"] == 3
    assert log.lines and all("tracing failed in" in line for line in log.lines)
    assert f"{method} failed" in log.lines[0]
