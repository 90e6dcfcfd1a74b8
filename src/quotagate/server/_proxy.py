"""The OpenAI-compatible endpoints: authenticate, check, pick a deployment, relay.

Requests go upstream as the client sent them, apart from the model name when the deployment
calls the model something else. Responses come back as the provider sent them; streams are
relayed event by event as they arrive, never buffered whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from ..accounting import Alerts, Ledger, Metrics, Price, Pricing, UsageRow, cost_usd, micro_usd
from ..auth import Authenticator, Principal, extract_key
from ..errors import (
    GatewayError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UpstreamTimeoutError,
)
from ..limits import Calendar, Decision, Limit, Limiter, StoreUnavailableError, Unit
from ..limits._calendar import window_bounds
from ..policy import AppliedLimits, Policy
from ..router import Exchange, Router, RouteRequest
from ..tokens import (
    ZERO,
    Estimate,
    count_generated,
    estimate_tokens,
    generated_text,
    usage_details,
)
from ..tokens._estimate import Kind
from ..upstream import DeploymentTarget, ModelRoutes
from ._asgi import (
    JSON_CONTENT_TYPE,
    Receive,
    RequestHeaders,
    Scope,
    Send,
    read_body,
    request_id_headers,
    send_bytes,
)
from ._ratelimit import rate_limit_error, ratelimit_headers
from ._stream_usage import StreamUsage
from ._validation import ParsedRequest, parse_chat, parse_completion, parse_embedding

logger = logging.getLogger("quotagate.requests")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Tells nginx-style proxies in front of the gateway not to buffer the stream either.
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    upstream_path: str
    parse: Callable[[bytes], ParsedRequest]
    kind: Kind


CHAT = Endpoint("/chat/completions", parse_chat, "chat")
COMPLETIONS = Endpoint("/completions", parse_completion, "completion")
EMBEDDINGS = Endpoint("/embeddings", parse_embedding, "embedding")


# A client that hangs up is noticed by a task waiting for http.disconnect (uvicorn's send() drops
# writes to a closed connection without a word). Most requests are over before that could matter,
# so watchers are started only for requests that have lasted at least this long: one sweep of the
# requests in flight every so often, rather than a timer or a task for each request.
WATCH_AFTER_SECONDS = 0.02


class _DisconnectWatch:
    """Cancels the request's task when its client disconnects; started by _Watches once the request
    has lasted WATCH_AFTER_SECONDS, stopped before the response's last message (after which
    http.disconnect only means "done")."""

    __slots__ = ("_receive", "_registry", "_task", "_watcher", "gone", "since")

    def __init__(self, receive: Receive, registry: _Watches) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher: asyncio.Future[None] | None = None
        self._registry: _Watches | None = registry
        self.gone = False
        self.since = registry.add(self)

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        # The request is cancelled, which cancels the upstream call at once; what was used is
        # still settled and accounted.
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        if self._registry is not None:
            self._registry.discard(self)
            self._registry = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None


class _Watches:
    """The requests in flight, in arrival order; a sweep starts the watchers of those that have
    lasted WATCH_AFTER_SECONDS."""

    def __init__(self) -> None:
        self._waiting: dict[_DisconnectWatch, None] = {}  # insertion-ordered: oldest first
        self._sweeping = False

    def add(self, watch: _DisconnectWatch) -> float:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._waiting[watch] = None
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(WATCH_AFTER_SECONDS, self._sweep)
        return now

    def discard(self, watch: _DisconnectWatch) -> None:
        self._waiting.pop(watch, None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        started_before = loop.time() - WATCH_AFTER_SECONDS
        waiting = self._waiting
        while waiting:
            oldest = next(iter(waiting))
            if oldest.since > started_before:
                break
            del waiting[oldest]
            oldest.start()
        if waiting:
            loop.call_later(WATCH_AFTER_SECONDS / 2, self._sweep)
        else:
            self._sweeping = False


def _end_of_last_event(data: bytes) -> int:
    """Length of the prefix of ``data`` made of complete SSE events (0 if none)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _costs(limits: tuple[Limit, ...], estimate: Estimate, spend: int = 0) -> list[int]:
    """What the request is charged on each limit: 1 request, its estimated tokens, or at most
    ``spend`` micro-dollars."""
    costs = []
    for limit in limits:
        unit = limit.unit
        if unit is Unit.TOKENS:
            costs.append(estimate.prompt + estimate.output)
        elif unit is Unit.REQUESTS or unit is Unit.CONCURRENT:
            costs.append(1)
        elif unit is Unit.INPUT_TOKENS:
            costs.append(estimate.prompt)
        elif unit is Unit.OUTPUT_TOKENS:
            costs.append(estimate.output)
        else:
            costs.append(spend)
    return costs


def _deltas(
    limits: tuple[Limit, ...],
    estimate: Estimate,
    prompt: int,
    completion: int,
    spent: int = 0,
    reserved: int = 0,
) -> list[int]:
    """What was used minus what was charged, per limit."""
    deltas = []
    for limit in limits:
        unit = limit.unit
        if unit is Unit.TOKENS:
            deltas.append(prompt + completion - estimate.prompt - estimate.output)
        elif unit is Unit.REQUESTS or unit is Unit.CONCURRENT:
            deltas.append(0)
        elif unit is Unit.INPUT_TOKENS:
            deltas.append(prompt - estimate.prompt)
        elif unit is Unit.OUTPUT_TOKENS:
            deltas.append(completion - estimate.output)
        else:
            deltas.append(spent - reserved)
    return deltas


@dataclass(slots=True)
class _Charged:
    """The tenant limits a request is charged to: those of the model that serves it."""

    applied: AppliedLimits | None
    decision: Decision | None
    model: str


@dataclass(slots=True)
class _Usage:
    """What the request actually used, as learnt from the response (None: nothing yet)."""

    reported: tuple[int, int] | None = None
    cached: int = 0
    generated: str = ""
    upstream_answered: bool = False


@dataclass
class Books:
    """What the proxy records about each request: prices, the ledger, metrics and alerts."""

    pricing: Pricing = field(default_factory=Pricing)
    ledger: Ledger | None = None
    metrics: Metrics = field(default_factory=Metrics)
    alerts: Alerts | None = None
    timezone: str = "UTC"
    log_requests: bool = False
    # (start, end, name) of the day the last row fell in: the name is worked out once a day.
    _day: tuple[float, float, str] = (0.0, 0.0, "")

    def day(self, when: float) -> str:
        """The calendar day of ``when`` in the configured time zone, as YYYY-MM-DD."""
        start, end, name = self._day
        if start <= when < end:
            return name
        start, end, _ = window_bounds(when, Calendar.DAY, self.timezone)
        name = datetime.fromtimestamp(start, ZoneInfo(self.timezone)).date().isoformat()
        self._day = (start, end, name)
        return name


@dataclass(slots=True)
class _Record:
    """One request as the ledger will see it."""

    request_id: str
    client_request_id: str | None
    principal: Principal
    model: str
    stream: bool
    began: float
    estimate: Estimate = ZERO
    reserved: int = 0
    usage: _Usage = field(default_factory=lambda: _Usage())
    charged: _Charged | None = None
    exchange: Exchange | None = None
    stream_usage: StreamUsage | None = None
    done: bool = False

    def collect_stream_usage(self) -> None:
        if self.stream_usage is not None and self.usage.reported is None:
            self.usage.reported = self.stream_usage.usage
            self.usage.cached = self.stream_usage.cached
            self.usage.generated = "".join(self.stream_usage.pieces)


class Proxy:
    def __init__(
        self,
        routes: ModelRoutes,
        authenticator: Authenticator,
        router: Router,
        max_body_bytes: int,
        policy: Policy | None = None,
        limiter: Limiter | None = None,
        expected_output_tokens: int = 512,
        clock: Callable[[], float] = time.time,
        books: Books | None = None,
    ) -> None:
        self.books = books or Books()
        self.routes = routes
        self.authenticator = authenticator
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.policy = policy
        self.limiter = limiter
        self.expected_output_tokens = expected_output_tokens
        self._clock = clock
        self._watches = _Watches()

    async def authenticate(self, headers: RequestHeaders) -> Principal:
        return await self.authenticator.authenticate(extract_key(headers.authorization, headers.x_api_key))

    def check_model(self, principal: Principal, model: str) -> None:
        # An unknown model and a model the key may not use get different answers, as on OpenAI:
        # 404 says "no such model here", 403 says "not for you".
        if model not in self.routes.models:
            raise NotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        if not principal.may_use(model):
            raise PermissionDeniedError(
                f"This API key is not allowed to use the model `{model}`.",
                param="model",
                code="model_not_allowed",
            )

    async def _decide(self, applied: AppliedLimits, estimate: Estimate, wait: bool, spend: int = 0) -> Decision:
        assert self.limiter is not None
        try:
            return await self.limiter.acquire(
                applied.limits,
                _costs(applied.limits, estimate, spend),
                max_wait=applied.max_wait if wait else 0.0,
                priority=applied.priority,
            )
        except StoreUnavailableError:
            raise ServiceUnavailableError(
                "The rate limit store is unavailable, and this gateway is set to refuse requests "
                "it cannot count. Try again shortly.",
                code="limit_store_unavailable",
            ) from None

    async def handle(
        self,
        endpoint: Endpoint,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: RequestHeaders,
        request_id: str,
    ) -> None:
        began = time.perf_counter()
        # Authenticate before reading the body: an anonymous client cannot make the gateway
        # buffer up to max_body_bytes.
        principal = await self.authenticate(headers)
        raw = await read_body(receive, headers.content_length, self.max_body_bytes)
        request = endpoint.parse(raw)
        self.check_model(principal, request.model)
        record = _Record(request_id, headers.client_request_id, principal, request.model, request.stream, began)
        try:
            await self._handle(endpoint, receive, send, request, raw, principal, record)
        except GatewayError as exc:
            await self._account(record, exc.status, exc.code or exc.type)
            raise
        finally:
            if not record.done:
                # The client left (or the task was cancelled): the row says so.
                await self._account(record, 499, "client_disconnected")

    async def _handle(
        self,
        endpoint: Endpoint,
        receive: Receive,
        send: Send,
        request: ParsedRequest,
        raw: bytes,
        principal: Principal,
        record: _Record,
    ) -> None:
        body = request.body
        books = self.books
        limited = self.policy is not None and self.policy.enabled and self.limiter is not None
        applied = self.policy.limits_for(principal, request.model) if limited and self.policy else None
        # Estimating (the tokenizer) is needed only by token/spend limits and context windows; the
        # ledger needs the provider's reported usage, which is read either way.
        needs_estimate = bool(applied and applied.counts_tokens) or self.router.needs_estimate(request.model)
        counts_tokens = needs_estimate or books.ledger is not None
        estimate = ZERO
        if needs_estimate:
            model_config = self.routes.models[request.model]
            estimate = estimate_tokens(
                endpoint.kind, body, request.model, self.expected_output_tokens, model_config.context_window
            )
        record.estimate = estimate
        reserved = 0
        if applied and applied.counts_spend:
            reserved = micro_usd(cost_usd(self._price(request.model), estimate.prompt, estimate.output))
        record.reserved = reserved
        decision: Decision | None = None
        if applied:
            waited = time.perf_counter()
            decision = await self._decide(applied, estimate, wait=True, spend=reserved)
            books.metrics.wait.observe(time.perf_counter() - waited)
            self._note_decision(principal, decision)
            if not decision.allowed:
                raise rate_limit_error(decision, self._clock())

        options = body.get("stream_options")
        client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        bodies: dict[str, bytes] = {}
        asked_usage: dict[str, bool] = {}

        def body_for(target: DeploymentTarget) -> bytes:
            cached = bodies.get(target.id)
            if cached is not None:
                return cached
            changes: dict[str, Any] = {}
            if target.provider_model != request.model:
                changes["model"] = target.provider_model
            ask = request.stream and counts_tokens and target.stream_usage and not client_wants_usage
            if ask:
                # Settling needs the provider's count; the client will not see the extra chunk.
                changes["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
            asked_usage[target.id] = ask
            bodies[target.id] = orjson.dumps({**body, **changes}) if changes else raw
            return bodies[target.id]

        current = _Charged(applied, decision, request.model)
        record.charged = current

        async def switch_model(model: str) -> bool:
            # The tenant's limits are charged for the model that actually serves.
            if model == current.model or not limited or self.policy is None:
                current.model = model
                return True
            new_applied = self.policy.limits_for(principal, model)
            if current.applied is not None and new_applied.limits == current.applied.limits:
                current.model = model
                return True
            new_decision = await self._decide(new_applied, estimate, wait=False, spend=reserved)
            if not new_decision.allowed:
                return False
            await self._undo(current.decision, current.applied)
            current.applied, current.decision, current.model = new_applied, new_decision, model
            return True

        max_wait, priority = self.policy.shaping(principal) if self.policy is not None else (0.0, 0)
        watch = _DisconnectWatch(receive, self._watches)
        usage = record.usage

        async def before_complete(status: int, error_type: str | None) -> None:
            # The response's last message is next. From here on http.disconnect means the response
            # is done, not that the client left: the watch must not cancel what follows (settling).
            watch.stop()
            # The row is durable before the client has the whole response (see ledger).
            await self._account(record, status, error_type)

        try:
            try:
                exchange = await self.router.exchange(
                    request.model,
                    RouteRequest(
                        endpoint.upstream_path,
                        body_for,
                        request.stream,
                        estimate,
                        max_wait,
                        priority,
                        switch_model,
                    ),
                )
                record.exchange = exchange
                usage.upstream_answered = True
                served = exchange.target
                extra = request_id_headers(record.request_id, record.client_request_id)
                extra.append((b"x-quotagate-deployment", served.label_bytes))
                if current.decision is not None:
                    extra.extend(ratelimit_headers(current.decision))
                stream_usage = (
                    StreamUsage(strip_usage_chunk=asked_usage.get(served.id, False)) if request.stream else None
                )
                record.stream_usage = stream_usage
                outcome: bool | None = False
                try:
                    if request.stream and exchange.response.headers.get("content-type", "").startswith(
                        "text/event-stream"
                    ):
                        outcome = await self._relay_stream(exchange, send, extra, stream_usage, before_complete)
                    else:
                        await self._relay_body(exchange, send, extra, usage, before_complete)
                        outcome = True
                except asyncio.CancelledError:
                    # The client left: that says nothing about the deployment's health.
                    outcome = None
                    raise
                finally:
                    record.collect_stream_usage()
                    prompt, completion = self._actual(usage, estimate, current.model)
                    await self.router.finish(exchange, outcome, prompt + completion)
            except asyncio.CancelledError:
                if not watch.gone:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            watch.stop()
            record.collect_stream_usage()
            if current.decision is not None and current.applied is not None and self.limiter is not None:
                if current.applied.counts_tokens:
                    prompt, completion = self._actual(usage, estimate, current.model)
                    spent = micro_usd(self._cost(record, prompt, completion)) if reserved else 0
                    deltas = _deltas(current.applied.limits, estimate, prompt, completion, spent, reserved)
                    await self.limiter.settle(current.decision, current.applied.limits, deltas)
                await self.limiter.release(current.decision, current.applied.limits)

    def _note_decision(self, principal: Principal, decision: Decision) -> None:
        self.books.metrics.decision(decision.allowed, decision.denied_by.limit if decision.denied_by else None)
        if self.books.alerts is not None:
            self.books.alerts.check(principal, decision)

    def _price(self, model: str) -> Price | None:
        names = [model, *(t.provider_model for t in self.routes.deployments(model))]
        return self.books.pricing.price_for(*names)

    def _cost(self, record: _Record, prompt: int, completion: int) -> float:
        served = record.exchange.target if record.exchange is not None else None
        model = record.charged.model if record.charged is not None else record.model
        names = [served.provider_model, model] if served is not None else [model]
        return cost_usd(self.books.pricing.price_for(*names), prompt, completion, record.usage.cached)

    async def _account(self, record: _Record, status: int, error_type: str | None) -> None:
        """The request's ledger row and metrics; once per request."""
        if record.done:
            return
        record.done = True
        record.collect_stream_usage()
        books = self.books
        now = time.perf_counter()
        model = record.charged.model if record.charged is not None else record.model
        prompt, completion = self._actual(record.usage, record.estimate, model)
        exchange = record.exchange
        latency = (now - record.began) * 1000.0
        upstream = (time.monotonic() - exchange.started) * 1000.0 if exchange is not None else None
        wall = time.time()
        row = UsageRow(
            request_id=record.request_id,
            ts=wall,
            day=books.day(wall),
            key_id=record.principal.key_id,
            user_id=record.principal.user,
            tier=record.principal.tier,
            model_requested=record.model,
            model_served=exchange.target.model if exchange is not None else None,
            deployment=exchange.target.label if exchange is not None else None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=record.usage.cached,
            cost_usd=self._cost(record, prompt, completion),
            latency_ms=latency,
            upstream_ms=upstream,
            overhead_ms=latency - (upstream or 0.0),
            status=status,
            error_type=error_type,
            stream=record.stream,
            client_request_id=record.client_request_id,
        )
        books.metrics.observe(row)
        if books.log_requests:
            logger.info(
                "request",
                extra={
                    "request_id": row.request_id,
                    "client_request_id": row.client_request_id,
                    "status": status,
                    "model": model,
                    "ms": round(latency, 2),
                },
            )
        if books.ledger is not None:
            await books.ledger.commit(row)

    @staticmethod
    def _actual(usage: _Usage, estimate: Estimate, model: str) -> tuple[int, int]:
        if usage.reported is not None:
            return usage.reported
        if usage.upstream_answered:
            return estimate.prompt, count_generated(usage.generated, model)
        return 0, 0  # the provider never took the request

    async def _undo(self, decision: Decision | None, applied: AppliedLimits | None) -> None:
        if decision is None or applied is None or self.limiter is None:
            return
        costs = decision.costs or tuple(0 for _ in applied.limits)
        await self.limiter.settle(
            decision,
            applied.limits,
            [-c if lim.unit is not Unit.CONCURRENT else 0 for lim, c in zip(applied.limits, costs, strict=True)],
        )
        await self.limiter.release(decision, applied.limits)

    async def _relay_body(
        self,
        exchange: Exchange,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        usage: _Usage,
        before_complete: Callable[[int, str | None], Awaitable[None]],
    ) -> None:
        response = exchange.response
        total = exchange.target.total_timeout
        try:
            if total is not None:
                async with asyncio.timeout(max(0.001, exchange.started + total - time.monotonic())):
                    body = await response.read()
            else:
                body = await response.read()
        except TimeoutError:
            response.close()
            raise UpstreamTimeoutError(
                f"Upstream {exchange.target.label} exceeded its total timeout of {total:g}s."
            ) from None
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        details = usage_details(payload)
        if details is not None:
            usage.reported, usage.cached = (details[0], details[1]), details[2]
        else:
            usage.generated = generated_text(payload)
        content_type = response.headers.get("content-type", "")
        type_header = (b"content-type", content_type.encode("latin-1")) if content_type else JSON_CONTENT_TYPE
        await before_complete(response.status, None)
        await send_bytes(send, response.status, body, [type_header, *extra])

    async def _relay_stream(
        self,
        exchange: Exchange,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        stream_usage: StreamUsage | None,
        before_complete: Callable[[int, str | None], Awaitable[None]],
    ) -> bool:
        """Relay SSE event by event; True when the stream ended as the provider meant it to."""
        response = exchange.response
        total = exchange.target.total_timeout
        deadline = exchange.started + total if total is not None else None
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *extra]})
        try:
            try:
                pending = exchange.first_chunk
                chunks = response.iter_chunks().__aiter__()
                while True:
                    # Forward whole events only, so that a failure mid-event can still be
                    # followed by a well-formed error event the SDK understands.
                    cut = _end_of_last_event(pending)
                    if cut:
                        events = pending[:cut]
                        pending = pending[cut:]
                        if stream_usage is not None:
                            events = stream_usage.feed(events)
                        await send({"type": "http.response.body", "body": events, "more_body": True})
                    if deadline is not None and time.monotonic() > deadline:
                        raise UpstreamTimeoutError(
                            f"Upstream {exchange.target.label} exceeded its total timeout of {total:g}s."
                        )
                    chunk = await anext(chunks, b"")
                    if not chunk:
                        if pending:
                            if stream_usage is not None:
                                pending = stream_usage.feed(pending)
                            await send({"type": "http.response.body", "body": pending, "more_body": True})
                        break
                    pending += chunk
                await before_complete(200, None)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
            except GatewayError as exc:
                # The status line has gone; an error event is the only way left to tell the
                # client. The OpenAI SDKs raise it as an APIError. The row says the stream broke.
                await before_complete(200, exc.code or exc.type)
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + exc.body() + b"\n\n",
                        "more_body": True,
                    }
                )
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return False
        finally:
            response.close()
