"""Tracing as an operator turns it on: a real gateway exporting over OTLP/HTTP to a collector in
the test process, which decodes what arrives with opentelemetry-proto."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from quotagate.config import Config

from ..conftest import MASTER_KEY, RunningGateway, ServerThread, closed_port, gateway_config
from .collector import Collector, ExportedSpan

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Which courier do you ship with?"}]}


def traced_config(sqlite_url: str, upstream: str, endpoint: str, **overrides: Any) -> Config:
    tracing = {"enabled": True, "endpoint": endpoint, **overrides.pop("tracing", {})}
    return gateway_config(sqlite_url, upstream, tracing=tracing, **overrides)


def post(gw: RunningGateway, key: str, body: dict[str, Any] = CHAT, **headers: str) -> httpx.Response:
    return httpx.post(
        gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}", **headers}, json=body, timeout=30
    )


def trace_of(gw: RunningGateway, collector: Collector, response: httpx.Response) -> ExportedSpan:
    """The request span of ``response``'s request, with its children, exported now rather than
    at the batch's next scheduled export."""
    tracing = gw.gateway.tracing
    assert tracing is not None
    tracing.force_flush()
    return collector.trace_of(response.headers["x-request-id"])


def children(span: ExportedSpan, name: str) -> list[ExportedSpan]:
    return sorted((child for child in span.children if child.name == name), key=lambda s: s.start_ns)


def test_a_chat_request_is_one_span_with_genai_attributes_and_its_stages_as_children(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """A chat completion is one SERVER span named as the GenAI conventions name it, with the model,
    provider, tokens, cost and tenant, and children for its cache lookup, limit decision and
    upstream attempt, all in one trace."""
    app, endpoint = collector
    tiers = {"free": {"rpm": 60, "tpd": 100000, "cache": {"mode": "exact"}}}
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, tiers=tiers))
    key = gw.create_key(user="alice", tier="free")
    response = post(gw, key["key"], {**CHAT, "max_tokens": 50, "temperature": 0.2})
    assert response.status_code == 200
    usage = response.json()["usage"]
    span = trace_of(gw, app, response)
    print(span.tree())  # what a trace looks like, for whoever reads the test's output
    assert (span.name, span.kind, span.status, span.parent_id) == ("chat gpt-4o-mini", "server", "unset", "")
    assert span.resource["service.name"] == "quotagate"
    attributes = span.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == response.json()["model"]
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.request.temperature"] == 0.2
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["quotagate.cost_usd"] > 0
    assert attributes["http.response.status_code"] == 200
    assert "error.type" not in attributes
    assert (attributes["quotagate.key_id"], attributes["quotagate.user"], attributes["quotagate.tier"]) == (
        key["id"],
        "alice",
        "free",
    )
    assert attributes["quotagate.cache_hit"] is False
    assert attributes["quotagate.deployment"] == response.headers["x-quotagate-deployment"]
    assert [child.name for child in sorted(span.children, key=lambda s: s.start_ns)] == [
        "quotagate.cache",
        "quotagate.limits",
        "chat gpt-4o-mini",
    ]
    assert all(child.trace_id == span.trace_id for child in span.children)
    [cache] = children(span, "quotagate.cache")
    assert cache.attributes["quotagate.cache.hit"] is False
    assert cache.attributes["quotagate.cache.mode"] == "exact"
    [limits] = children(span, "quotagate.limits")
    assert limits.attributes["quotagate.limits.outcome"] == "allowed"
    assert limits.attributes["quotagate.limits.wait_ms"] >= 0
    [attempt] = children(span, "chat gpt-4o-mini")
    assert attempt.kind == "client" and attempt.status == "unset"
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["server.port"] == mock_upstream.port
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["quotagate.attempt"] == 1
    assert attempt.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    # Each stage within its request.
    assert all(span.start_ns <= child.start_ns <= child.end_ns <= span.end_ns for child in span.children)


def test_a_retried_request_has_a_span_for_each_attempt(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """A provider's 429 and the retry that served: two attempt spans, the first failed with the
    provider's status and marked retryable, the second the one that answered."""
    app, endpoint = collector
    limited = start_mock(fail_first=1, retry_after=0.05)
    gw = start_gateway(traced_config(sqlite_url, limited.url, endpoint))
    response = post(gw, gw.create_key()["key"])
    assert response.status_code == 200
    span = trace_of(gw, app, response)
    first, second = children(span, "chat gpt-4o-mini")
    assert (first.status, first.attributes["http.response.status_code"]) == ("error", 429)
    assert first.attributes["error.type"] and first.attributes["quotagate.retryable"] is True
    assert (second.status, second.attributes["http.response.status_code"]) == ("unset", 200)
    assert [first.attributes["quotagate.attempt"], second.attributes["quotagate.attempt"]] == [1, 2]
    assert first.end_ns <= second.start_ns
    assert span.attributes["quotagate.attempts"] == 2 and span.status == "unset"


def test_a_streamed_request_span_ends_with_the_stream_and_its_settled_tokens(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """A stream's request and attempt spans end after its last event, with the tokens its usage
    chunk reported (the ones its limits were settled with)."""
    app, endpoint = collector
    slow = start_mock(stream_chunk_delay_ms=30, completion_tokens=6)
    gw = start_gateway(traced_config(sqlite_url, slow.url, endpoint))
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    usage: dict[str, int] = {}
    with httpx.stream(
        "POST", gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {gw.create_key()['key']}"}, json=body
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    span = trace_of(gw, app, response)
    [attempt] = children(span, "chat gpt-4o-mini")
    assert span.attributes["gen_ai.request.stream"] is True
    assert usage and span.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 6
    assert span.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attempt.attributes["gen_ai.usage.output_tokens"] == 6
    # Six tokens 30 ms apart: both spans last the stream, and the request's outlasts its attempt's.
    assert attempt.end_ns - attempt.start_ns >= 150_000_000
    assert attempt.end_ns <= span.end_ns


def test_a_request_refused_by_its_limits_is_an_error_span_with_the_decision(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """The gateway's own 429: the request span is an error (error.type rate_limit_exceeded, status
    429), its limits child says which limit refused it, and no attempt went upstream."""
    app, endpoint = collector
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, tiers={"free": {"rpm": 1}}))
    key = gw.create_key()["key"]
    assert post(gw, key).status_code == 200
    refused = post(gw, key)
    assert refused.status_code == 429
    span = trace_of(gw, app, refused)
    assert span.status == "error"
    assert span.attributes["error.type"] == "rate_limit_exceeded"
    assert span.attributes["http.response.status_code"] == 429
    assert [child.name for child in span.children] == ["quotagate.limits"]
    [limits] = span.children
    assert limits.attributes["quotagate.limits.outcome"] == "refused"
    assert "RPM" in limits.attributes["quotagate.limits.denied_by"]
    assert 0 < limits.attributes["quotagate.limits.retry_after_s"] <= 60


def test_a_cache_hit_has_a_cache_span_and_no_upstream_attempt(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """A request answered from the cache: its cache child says hit (exact), its limits child is
    there, and nothing went upstream."""
    app, endpoint = collector
    tiers = {"free": {"rpm": 60, "cache": {"mode": "exact"}}}
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, tiers=tiers))
    key = gw.create_key()["key"]
    trace_of(gw, app, post(gw, key))  # the first request, ended
    time.sleep(0.2)  # its answer is stored in the background, after the client has it
    second = post(gw, key)
    assert second.headers["x-quotagate-cache"] == "hit"
    span = trace_of(gw, app, second)
    assert sorted(child.name for child in span.children) == ["quotagate.cache", "quotagate.limits"]
    [cache] = children(span, "quotagate.cache")
    assert cache.attributes["quotagate.cache.hit"] is True
    assert cache.attributes["quotagate.cache.kind"] == "exact"
    assert span.attributes["quotagate.cache_hit"] is True
    assert span.attributes["quotagate.cache_saved_usd"] > 0
    assert span.attributes["http.response.status_code"] == 200 and span.status == "unset"
    assert span.attributes["gen_ai.response.model"] == second.json()["model"]


def test_an_upstream_failure_is_an_error_span_with_each_failed_attempt(
    start_gateway: Callable[..., RunningGateway],
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """A deployment nobody answers at: the request span is an error with the gateway's status, and
    each attempt's span says why it failed (no HTTP status: none came)."""
    app, endpoint = collector
    nowhere = f"http://127.0.0.1:{closed_port()}"
    gw = start_gateway(traced_config(sqlite_url, nowhere, endpoint, router={"max_attempts": 2, "backoff_base": 0.01}))
    response = post(gw, gw.create_key()["key"])
    assert response.status_code == 502
    span = trace_of(gw, app, response)
    assert (span.status, span.attributes["http.response.status_code"]) == ("error", 502)
    attempts = children(span, "chat gpt-4o-mini")
    assert len(attempts) == 2
    assert all(a.status == "error" and "http.response.status_code" not in a.attributes for a in attempts)


def test_a_messages_request_is_traced_with_anthropics_names(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """Anthropic's Messages API to an anthropic deployment: a chat span whose provider is
    anthropic, whose attempt names the provider's model, and whose finish reason is the answer's
    stop_reason."""
    app, endpoint = collector
    claude = {
        "name": "claude-house",
        "deployments": [
            {
                "provider": "anthropic",
                "base_url": mock_upstream.url + "/v1",
                "api_key": "env:TEST_UPSTREAM_KEY",
                "model": "claude-sonnet-4-5",
            }
        ],
    }
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, models=[claude]))
    response = httpx.post(
        gw.url + "/v1/messages",
        headers={"x-api-key": gw.create_key()["key"], "anthropic-version": "2023-06-01"},
        json={"model": "claude-house", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    span = trace_of(gw, app, response)
    assert span.name == "chat claude-house"
    assert span.attributes["gen_ai.provider.name"] == "anthropic"
    assert span.attributes["gen_ai.request.max_tokens"] == 64
    assert span.attributes["gen_ai.response.finish_reasons"] == [answer["stop_reason"]]
    assert span.attributes["gen_ai.usage.output_tokens"] == answer["usage"]["output_tokens"]
    [attempt] = children(span, "chat claude-sonnet-4-5")
    assert attempt.attributes["gen_ai.provider.name"] == "anthropic"


def test_a_client_traceparent_makes_the_request_span_part_of_its_trace(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """With a W3C traceparent the request's span is a child of the client's span, in its trace."""
    app, endpoint = collector
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = post(gw, gw.create_key()["key"], traceparent=f"00-{trace_id}-{parent}-01")
    span = trace_of(gw, app, response)
    assert (span.trace_id, span.parent_id) == (trace_id, parent)
    assert all(child.trace_id == trace_id for child in span.children)


def test_with_propagate_off_a_client_traceparent_is_ignored(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """tracing.propagate: false: each request starts a trace of its own, whatever the client sent."""
    app, endpoint = collector
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, tracing={"propagate": False}))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = post(gw, gw.create_key()["key"], traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
    span = trace_of(gw, app, response)
    assert span.trace_id != trace_id and span.parent_id == ""


def test_exports_carry_the_configured_headers_with_their_secrets_resolved(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tracing.headers go with every export, an env:NAME value as the variable's value, and the
    resource is named by service_name."""
    app, endpoint = collector
    monkeypatch.setenv("TEST_OTLP_TOKEN", "otlp-secret-123")
    tracing = {"headers": {"Authorization": "env:TEST_OTLP_TOKEN", "x-tenant": "shop"}, "service_name": "edge-gw"}
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, tracing=tracing))
    span = trace_of(gw, app, post(gw, gw.create_key()["key"]))
    assert span.resource["service.name"] == "edge-gw"
    assert app.exports and all(e["authorization"] == "otlp-secret-123" and e["x-tenant"] == "shop" for e in app.exports)


def test_a_sample_ratio_of_zero_exports_nothing(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """sample_ratio 0: requests are served as ever, and no span is exported."""
    app, endpoint = collector
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, tracing={"sample_ratio": 0}))
    key = gw.create_key()["key"]
    assert all(post(gw, key).status_code == 200 for _ in range(3))
    assert gw.gateway.tracing is not None and gw.gateway.tracing.force_flush()
    assert app.spans == []


def test_a_clients_sampling_decision_overrides_the_sample_ratio(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """A traceparent the client sampled is traced at sample_ratio 0; one it did not sample is not."""
    app, endpoint = collector
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, tracing={"sample_ratio": 0}))
    key = gw.create_key()["key"]
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    skipped = post(gw, key, traceparent=f"00-{'1' * 32}-00f067aa0ba902b7-00")
    sampled = post(gw, key, traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
    assert trace_of(gw, app, sampled).trace_id == trace_id
    assert {span.trace_id for span in app.spans} == {trace_id}
    assert not any(span.attributes.get("quotagate.request_id") == skipped.headers["x-request-id"] for span in app.spans)


def test_trace_headers_that_name_no_span_do_not_bypass_the_sample_ratio(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """At sample_ratio 0, a malformed traceparent, or a tracestate without one, is a request like
    any other (not sampled), while a valid sampled traceparent is still traced: a client cannot
    have every request traced by sending a header that names no trace."""
    app, endpoint = collector
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, tracing={"sample_ratio": 0}))
    key = gw.create_key()["key"]
    assert post(gw, key, traceparent="00-not-a-trace-01").status_code == 200
    assert post(gw, key, traceparent=f"00-{'0' * 32}-00f067aa0ba902b7-01").status_code == 200  # invalid id
    assert post(gw, key, tracestate="vendor=value").status_code == 200
    assert gw.gateway.tracing is not None and gw.gateway.tracing.force_flush()
    assert app.spans == []
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    sampled = post(gw, key, traceparent=f"00-{trace_id}-00f067aa0ba902b7-01", tracestate="vendor=value")
    assert trace_of(gw, app, sampled).trace_id == trace_id
    assert {span.trace_id for span in app.spans} == {trace_id}


def test_a_deployment_passed_over_unsent_has_no_attempt_span(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    collector: tuple[Collector, str],
) -> None:
    """Embeddings of a model whose first deployment speaks only Anthropic's Messages API: that one
    is passed over without a request being sent, which is no attempt; the one that served is the
    only attempt span, number 1, and no error."""
    app, endpoint = collector
    deployments = [
        {"provider": "anthropic", "base_url": mock_upstream.url, "priority": 0},
        {"provider": "openai", "base_url": mock_upstream.url + "/v1", "priority": 1},
    ]
    mix = {
        "name": "mix",
        "deployments": [{**d, "api_key": "env:TEST_UPSTREAM_KEY", "model": "m"} for d in deployments],
    }
    gw = start_gateway(traced_config(sqlite_url, mock_upstream.url, endpoint, models=[mix]))
    response = httpx.post(
        gw.v1 + "/embeddings",
        headers={"Authorization": f"Bearer {gw.create_key()['key']}"},
        json={"model": "mix", "input": "hello"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-quotagate-deployment"].endswith("(openai/m)")
    span = trace_of(gw, app, response)
    assert span.status == "unset" and span.attributes["quotagate.attempts"] == 1
    [attempt] = children(span, "embeddings m")
    assert (attempt.status, attempt.attributes["quotagate.attempt"]) == ("unset", 1)
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert all(exported.attributes.get("gen_ai.provider.name") != "anthropic" for exported in app.spans)


# Run in a process of its own: the test process has imported OpenTelemetry for its collector.
_OFF = """
import asyncio, sys
import httpx
from tests.conftest import ServerThread, gateway_config
from quotagate.server import Gateway

config = gateway_config(sys.argv[1], sys.argv[2], tracing={"endpoint": sys.argv[3]})
server = ServerThread(Gateway(config)).start()
headers = {"Authorization": "Bearer " + sys.argv[4]}
key = httpx.post(server.url + "/admin/keys", json={"user": "u", "tier": "free"}, headers=headers).json()["key"]
for body in ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
             {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}):
    answer = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer " + key})
    assert answer.status_code == 200, answer.text
server.stop()
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""


def test_with_tracing_off_nothing_is_sent_and_opentelemetry_is_never_imported(
    mock_upstream: ServerThread, sqlite_url: str, collector: tuple[Collector, str], upstream_env: None
) -> None:
    """The default (tracing off), with an endpoint configured: requests are served, no export
    reaches the collector, and no opentelemetry module was imported by the gateway."""
    app, endpoint = collector
    result = subprocess.run(
        [sys.executable, "-c", _OFF, sqlite_url, mock_upstream.url, endpoint, MASTER_KEY],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],  # where `tests` is a package
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert app.exports == []
