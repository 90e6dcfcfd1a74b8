"""The spans, over OpenTelemetry's SDK: imported only when tracing is enabled (see start_tracing).

A request the proxy serves is one span (SERVER: the gateway answers it), named as the GenAI
conventions name a model call (``chat gpt-4o-mini``), with these children:

    quotagate.cache       the cache lookup: hit or miss, exact or semantic
    quotagate.limits      the tenant's limit decision: allowed, refused or downgraded, the wait
    chat gpt-4o-mini      each upstream attempt (CLIENT, the provider's model name): its
                          deployment, provider, server, HTTP status and number; it ends when the
                          answer has been relayed (a stream, when it ended), or when it failed

The request's span ends once the request has settled (a stream, once it has ended), with the
status, tokens and cost its ledger row records. Spans go to the collector in batches, from the
SDK's own thread: the request path only records them.

Tracing never breaks a request: each method the proxy and the router call is ``_guarded``, so a
failure in it (a bug here, or in the SDK) is logged, at most once every few seconds, and the
request goes on as if that part of its trace had not been asked for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, get_current_span, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .._logging import EveryFewSeconds
from ..server._record import error_type
from ._conventions import (
    OPERATIONS,
    provider_name,
    request_parameters,
    response_attributes,
    server_attributes,
    without_none,
)

if TYPE_CHECKING:
    from ..cache import CacheHit, CacheTicket
    from ..config._models import TracingSettings
    from ..errors import GatewayError
    from ..limits import Decision
    from ..server._books import Books
    from ..server._record import RequestRecord
    from ..upstream import DeploymentTarget

    Complete = Callable[[RequestRecord, int, str | None], Awaitable[None]]

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = (b"traceparent", b"tracestate")

logger = logging.getLogger("quotagate.tracing")
_log_failure = EveryFewSeconds(logger)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(method: Callable[_P, _R]) -> Callable[_P, _R | None]:
    """``method``, which never raises: a failure is logged (once every few seconds: it may fail
    for every request) and is None, and the request goes on with that much less of its trace."""

    @functools.wraps(method)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        try:
            return method(*args, **kwargs)
        except Exception:
            _log_failure.warning(
                "tracing failed in %s; the request goes on without it: %s", method.__qualname__, traceback.format_exc()
            )
            return None

    return guarded


class Tracing:
    """The gateway's tracer: a TracerProvider of its own (the process's global one is left to
    whatever program embeds the gateway), exporting in batches over OTLP/HTTP."""

    def __init__(self, settings: TracingSettings, headers: Mapping[str, str], version: str) -> None:
        exporter = OTLPSpanExporter(endpoint=settings.endpoint, headers=dict(headers), timeout=settings.timeout_seconds)
        self._provider = TracerProvider(
            # A client's valid traceparent decides for its request (sampled or not); sample_ratio
            # decides for the others, in request() (see there), so what reaches the SDK is sampled.
            sampler=ParentBased(ALWAYS_ON),
            resource=Resource.create({SERVICE_NAME: settings.service_name, SERVICE_VERSION: version}),
            shutdown_on_exit=False,  # Gateway.shutdown flushes it, within the server's own shutdown
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self._provider.get_tracer("quotagate", version)
        self._propagate = settings.propagate
        self._ratio = settings.sample_ratio
        # Each deployment's attributes on its attempts' spans, made at its first attempt.
        self._targets: dict[tuple[str, str], dict[str, Any]] = {}

    @_guarded
    def request(
        self,
        kind: str,
        scope: Mapping[str, Any],
        record: RequestRecord,
        body: Mapping[str, Any],
        complete: Complete,
    ) -> RequestTrace | None:
        """The span of the request ``record`` is about, from when it arrived; None when it is
        not sampled (and nothing more is recorded of it)."""
        # The client's trace, which decides whether the request is sampled.
        parent = self._client_trace(scope.get("headers", ())) if self._propagate else None
        if parent is None:
            if self._ratio < 1.0 and random.random() >= self._ratio:
                # Not sampled, decided before the SDK is asked: a span it does not record still
                # costs it ids, a context and a span object, more than the whole of this
                # (bench/NOTES.md).
                return None
            if not self._propagate:
                parent = Context()  # a trace of its own, whatever the context
            # else the current context: an embedding program's trace, or none
        operation = OPERATIONS.get(kind, kind)
        # The proxy's clock (perf_counter's seconds) on the wall clock's nanoseconds the SDK takes.
        offset = time.time_ns() - int(time.perf_counter() * 1e9)
        span = self.tracer.start_span(
            f"{operation} {record.model}", parent, SpanKind.SERVER, start_time=offset + int(record.began * 1e9)
        )
        if not span.is_recording():
            return None  # the client's traceparent said not sampled
        # Only for a span that records: the SDK checks each attribute it is given (µs apiece).
        principal = record.principal
        client = scope.get("client")
        attributes = without_none(
            {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": record.model,
                "gen_ai.request.stream": record.stream or None,
                "http.request.method": scope.get("method"),
                "url.path": scope.get("path"),
                "client.address": client[0] if client else None,
                "quotagate.request_id": record.request_id,
                "quotagate.client_request_id": record.client_request_id,
                "quotagate.key_id": principal.key_id,
                "quotagate.user": principal.user,
                "quotagate.team": principal.team,
                "quotagate.tier": principal.tier,
            }
        )
        request_parameters(body, attributes)
        span.set_attributes(attributes)
        return RequestTrace(self, span, operation, offset, complete)

    @staticmethod
    def _client_trace(headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
        """The client's trace, from its W3C trace context headers (traceparent, tracestate); None
        when it sent none that names a span (a tracestate alone, a malformed traceparent): such a
        request is sampled by sample_ratio like any other, whatever its headers say."""
        carrier = {name.decode(): value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS}
        if not carrier:
            return None
        context = _PROPAGATOR.extract(carrier)
        span = get_current_span(context).get_span_context()
        return context if span.is_valid and span.is_remote else None

    def target_attributes(self, target: DeploymentTarget) -> dict[str, Any]:
        key = (target.id, target.label)
        made = self._targets.get(key)
        if made is None:
            made = self._targets[key] = {
                "gen_ai.provider.name": provider_name(target.provider),
                "gen_ai.request.model": target.provider_model,
                **server_attributes(target.base_url),
                "quotagate.deployment": target.label,  # which names the gateway's model too
            }
        return made

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        return self._provider.force_flush(timeout_millis)

    async def aclose(self) -> None:
        """Export what is left and stop the exporter's thread (off the loop: it waits on the
        collector, up to the export timeout)."""
        await asyncio.to_thread(self._provider.shutdown)


class RequestTrace:
    """One request's span and its children (see the module's docstring)."""

    __slots__ = ("_attempt", "_complete", "_context", "_offset", "_operation", "_span", "_status", "_tracing")

    def __init__(self, tracing: Tracing, span: Span, operation: str, offset: int, complete: Complete) -> None:
        self._tracing = tracing
        self._span = span
        self._context = set_span_in_context(span)
        self._operation = operation
        self._offset = offset
        self._complete = complete
        # The status and error type the request ended with, as its ledger row has them.
        self._status: tuple[int, str | None] | None = None
        self._attempt: AttemptSpan | None = None  # the latest upstream attempt

    def _child(self, name: str, since: float, attributes: dict[str, Any]) -> None:
        """A finished stage's span: from ``since`` (the proxy's perf_counter) until now."""
        span = self._tracing.tracer.start_span(
            name, self._context, SpanKind.INTERNAL, attributes, start_time=self._offset + int(since * 1e9)
        )
        span.end()

    @_guarded
    def cache(self, since: float, ticket: CacheTicket, hit: CacheHit | None) -> None:
        """The cache lookup that began at ``since``."""
        attributes: dict[str, Any] = {"quotagate.cache.hit": hit is not None, "quotagate.cache.mode": ticket.rule.mode}
        if not ticket.controls.lookup:
            attributes["quotagate.cache.lookup"] = False  # the request said no-cache
        if hit is not None:
            attributes["quotagate.cache.kind"] = "semantic" if hit.kind == "semantic-hit" else "exact"
            if hit.similarity is not None:
                attributes["quotagate.cache.similarity"] = hit.similarity
        self._child("quotagate.cache", since, attributes)

    @_guarded
    def limits(self, since: float, decision: Decision, record: RequestRecord) -> None:
        """The tenant's limit decision that began at ``since`` (a downgrade's included)."""
        downgraded = record.downgraded_from is not None
        attributes: dict[str, Any] = {
            "quotagate.limits.outcome": "downgraded" if downgraded else "allowed" if decision.allowed else "refused",
            "quotagate.limits.wait_ms": round((time.perf_counter() - since) * 1000.0, 3),
        }
        if decision.denied_by is not None:
            attributes["quotagate.limits.denied_by"] = decision.denied_by.limit.label
            if not math.isinf(decision.retry_after):
                attributes["quotagate.limits.retry_after_s"] = round(decision.retry_after, 3)
        if downgraded:
            attributes["quotagate.downgraded_from"] = record.downgraded_from
            attributes["quotagate.downgrade_reason"] = record.downgrade_reason
        if decision.fallback:
            attributes["quotagate.limits.fallback"] = True  # this node's share decided: the store was down
        self._child("quotagate.limits", since, attributes)

    @_guarded
    def attempt(self, target: DeploymentTarget, number: int) -> AttemptSpan:
        """The span of the ``number``th attempt at an upstream, now beginning at ``target``."""
        attributes = {
            **self._tracing.target_attributes(target),
            "gen_ai.operation.name": self._operation,
            "quotagate.attempt": number,
        }
        span = self._tracing.tracer.start_span(
            f"{self._operation} {target.provider_model}", self._context, SpanKind.CLIENT, attributes
        )
        self._attempt = AttemptSpan(span)
        return self._attempt

    async def complete(self, record: RequestRecord, status: int, error: str | None) -> None:
        """The proxy's ``complete`` (the request's ledger row), noting how the request ended,
        and ending the span of the attempt under way: the relay has had the whole answer."""
        if not record.done:  # the first ending is the request's, as its ledger row has it
            self._status = (status, error)
        await self._complete(record, status, error)
        if self._attempt is not None:
            self._attempt.answered(record, error)  # once: a later ending finds it ended

    @_guarded
    def end(self, record: RequestRecord, books: Books) -> None:
        """The request's span, once it has settled: its status, tokens and cost."""
        status, error = self._status if self._status is not None else (200, None)
        if self._attempt is not None:
            self._attempt.answered(record, error)
        exchange, hit = record.exchange, record.cache_hit
        attributes: dict[str, Any] = {
            "http.response.status_code": status,
            "quotagate.cache_hit": hit is not None,
        }
        if exchange is not None or hit is not None:
            prompt, completion = record.actual()
            attributes["gen_ai.usage.input_tokens"] = prompt
            attributes["gen_ai.usage.output_tokens"] = completion
            if record.cached:
                attributes["gen_ai.usage.cache_read.input_tokens"] = record.cached
            if record.cache_written:
                attributes["gen_ai.usage.cache_creation.input_tokens"] = record.cache_written
            attributes["quotagate.cost_usd"] = books.cost(record, prompt, completion) if prompt or completion else 0.0
            if record.charged_model != record.model:  # a routed model's class, a downgrade, a fallback
                attributes["quotagate.model"] = record.charged_model
            response_attributes(record.answer if hit is None else hit.response, attributes)
        if exchange is not None:
            target = exchange.target
            attributes["gen_ai.provider.name"] = provider_name(target.provider)
            attributes.setdefault("gen_ai.response.model", target.provider_model)
            attributes["quotagate.deployment"] = target.label
            attributes["quotagate.attempts"] = exchange.attempts
        if hit is not None:
            attributes["quotagate.cache_saved_usd"] = record.cache_saved_usd
        if record.route is not None:
            attributes["quotagate.route_class"] = record.route.route_class
        if record.downgraded_from is not None:
            attributes["quotagate.downgraded_from"] = record.downgraded_from
        span = self._span
        if error is not None or status >= 400:
            # A refused or failed request is a failed model call (the GenAI conventions' view),
            # the gateway's own 429s and 4xx included, not only a 5xx as for an HTTP server span.
            attributes["error.type"] = error or str(status)
            span.set_status(Status(StatusCode.ERROR, error))
        span.set_attributes(attributes)
        span.end()


class AttemptSpan:
    """One upstream attempt's span: ended by the router when the attempt failed (dropped when
    none was made), else by the request's trace once the answer has been relayed."""

    __slots__ = ("_ended", "_span")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._ended = False

    def passed_over(self) -> None:
        """No attempt was made after all: the deployment's API cannot take the request, and it
        was never sent. The span is dropped (never ended, it is never exported)."""
        self._ended = True

    @_guarded
    def failed(self, error: GatewayError, retryable: bool, status: int | None) -> None:
        """The attempt did not serve the request: ``error`` (what the client gets if nothing else
        serves it); ``status``: the provider's HTTP status (None: it never answered)."""
        if self._ended:
            return
        self._ended = True
        kind = error_type(error)
        attributes: dict[str, Any] = {"error.type": kind, "quotagate.retryable": retryable}
        if status is not None:
            attributes["http.response.status_code"] = status
        self._span.set_attributes(attributes)
        self._span.set_status(Status(StatusCode.ERROR, kind))
        self._span.end()

    @_guarded
    def answered(self, record: RequestRecord, error: str | None) -> None:
        """The attempt's answer has been relayed (``error``: how it broke off, if it did), or the
        request ended while it was under way (no exchange, then)."""
        if self._ended:
            return
        self._ended = True
        exchange = record.exchange
        attributes: dict[str, Any] = {}
        if exchange is not None:
            # What the answer says of itself (its id, model, finish reasons) is on the request's span.
            prompt, completion = record.actual()
            attributes["http.response.status_code"] = exchange.response.status
            attributes["gen_ai.usage.input_tokens"] = prompt
            attributes["gen_ai.usage.output_tokens"] = completion
        if error is not None:
            attributes["error.type"] = error
            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.set_attributes(attributes)
        self._span.end()
