"""The OpenAI-compatible endpoints: authenticate, check, pick a deployment, relay.

Requests go upstream as the client sent them, apart from the model name when the deployment
calls the model something else. Responses come back as the provider sent them; streams are
relayed event by event as they arrive, never buffered whole.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
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
    UpstreamError,
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
from ..upstream import DeploymentTarget, ModelRoutes, Scrubber
from ..upstream._errors import scrub
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
# requests in flight every so often, rather than a timer or a task for each request. A tenth of a
# second is nothing beside a model's answer (what the watch saves is the rest of a long call) but
# above a busy gateway's typical latency: at 64 connections requests took 20-40 ms, and at 20 ms
# most of them started a watcher task of their own.
WATCH_AFTER_SECONDS = 0.1


class _DisconnectWatch:
    """Cancels the request's task when its client disconnects; started by _Watches once the request
    has lasted WATCH_AFTER_SECONDS, stopped before the response's last message (after which
    http.disconnect only means "done")."""

    __slots__ = ("_receive", "_registry", "_task", "_watcher", "gone", "since")

    def __init__(self, receive: Receive, registry: _Watches) -> None:
        # Asked once: in Python 3.11 every lookup of the running loop is a getpid() system call.
        loop = asyncio.get_running_loop()
        self._receive = receive
        self._task = asyncio.current_task(loop)
        self._watcher: asyncio.Future[None] | None = None
        self._registry: _Watches | None = registry
        self.gone = False
        self.since = registry.add(self, loop)

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

    def add(self, watch: _DisconnectWatch, loop: asyncio.AbstractEventLoop) -> float:
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


# The most of one SSE event held while waiting for its end (a streamed image's partial frames are
# a few MiB of base64).
MAX_STREAM_EVENT_BYTES = 32 * 1024 * 1024


def _end_of_last_event(data: bytearray, searched: int = 0) -> int:
    """Length of the prefix of ``data`` made of complete SSE events (0 if none); the first
    ``searched`` bytes are known to hold no event's end (an end may straddle their last three)."""
    start = max(0, searched - 3)
    lf = data.rfind(b"\n\n", start)
    crlf = data.rfind(b"\r\n\r\n", start)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


# Enum members as module globals: `Unit.TOKENS` is a lookup through the enum's class, 80 ns
# against 12 ns for a global here, and these are compared for every limit of every request.
_TOKENS, _REQUESTS, _CONCURRENT = Unit.TOKENS, Unit.REQUESTS, Unit.CONCURRENT
_INPUT_TOKENS, _OUTPUT_TOKENS = Unit.INPUT_TOKENS, Unit.OUTPUT_TOKENS


def _costs(limits: tuple[Limit, ...], estimate: Estimate, spend: int = 0) -> list[int]:
    """What the request is charged on each limit: 1 request, its estimated tokens, or at most
    ``spend`` micro-dollars."""
    costs = []
    for limit in limits:
        unit = limit.unit
        if unit is _TOKENS:
            costs.append(estimate.prompt + estimate.output)
        elif unit is _REQUESTS or unit is _CONCURRENT:
            costs.append(1)
        elif unit is _INPUT_TOKENS:
            costs.append(estimate.prompt)
        elif unit is _OUTPUT_TOKENS:
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
        if unit is _TOKENS:
            deltas.append(prompt + completion - estimate.prompt - estimate.output)
        elif unit is _REQUESTS or unit is _CONCURRENT:
            deltas.append(0)
        elif unit is _INPUT_TOKENS:
            deltas.append(prompt - estimate.prompt)
        elif unit is _OUTPUT_TOKENS:
            deltas.append(completion - estimate.output)
        else:
            deltas.append(spent - reserved)
    return deltas


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


class _Record:
    """One request on its way through: what it is charged where, what it used, and what the
    ledger will see. One object rather than three: it is made for every request."""

    __slots__ = (
        "applied",
        "began",
        "cached",
        "charged_model",
        "client_request_id",
        "counted",
        "counted_text",
        "decision",
        "done",
        "estimate",
        "exchange",
        "generated",
        "model",
        "principal",
        "reported",
        "request_id",
        "reserved",
        "stream",
        "stream_usage",
        "upstream_answered",
        "watch",
    )

    def __init__(
        self,
        request_id: str,
        client_request_id: str | None,
        principal: Principal,
        model: str | None,
        stream: bool,
        began: float,
    ) -> None:
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.principal = principal
        self.model = model  # None: the request was refused before it named a model
        self.stream = stream
        self.began = began
        self.estimate = ZERO
        self.reserved = 0
        # The tenant limits the request is charged to: those of the model that serves it.
        self.applied: AppliedLimits | None = None
        self.decision: Decision | None = None
        self.charged_model = model or ""
        # What the request actually used, as learnt from the response (None: nothing yet).
        self.reported: tuple[int, int] | None = None
        self.cached = 0
        self.generated = ""
        # The tokens of ``counted_text`` as last counted: actual() is asked up to three times.
        self.counted = 0
        self.counted_text = ""
        self.upstream_answered = False
        self.exchange: Exchange | None = None
        self.stream_usage: StreamUsage | None = None
        self.watch: _DisconnectWatch | None = None
        self.done = False

    def collect_stream_usage(self) -> None:
        if self.stream_usage is not None and self.reported is None:
            self.reported = self.stream_usage.usage
            self.cached = self.stream_usage.cached
            self.generated = "".join(self.stream_usage.pieces)

    def actual(self) -> tuple[int, int]:
        """(prompt, completion) tokens used: as reported, else counted, else none."""
        if self.reported is not None:
            return self.reported
        if self.upstream_answered:
            if self.generated != self.counted_text:
                self.counted = count_generated(self.generated, self.charged_model)
                self.counted_text = self.generated
            return self.estimate.prompt, self.counted
        return 0, 0  # the provider never took the request


# The ledger's error_type is a short code (``invalid_api_key``, ``upstream_timeout``, the provider's
# ``context_length_exceeded``): never a provider's free text, which once stored the provider's key
# when it echoed it in ``code`` (issue 18). Anything else is recorded as what kind of error it was.
_ERROR_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _error_type(exc: GatewayError) -> str:
    kind = exc.code or exc.type
    return kind if _ERROR_TYPE.fullmatch(kind) else exc.__class__.type


def _stream_error_type(error: dict[str, Any]) -> str:
    """The row's error_type for a stream the provider ended with an error event: its code or type
    when that is a short code (``error`` is scrubbed, so it is no secret), else upstream_error."""
    for kind in (error.get("code"), error.get("type")):
        if isinstance(kind, str | int) and not isinstance(kind, bool) and _ERROR_TYPE.fullmatch(str(kind)):
            return str(kind)
    return "upstream_error"


# The provider's Content-Type, relayed as one of a known few: a header is the provider's text, and
# one echoing the key must not carry it to the client (issue 18). Parameters are dropped: these
# bodies are UTF-8.
_CONTENT_TYPES = {
    "application/json": JSON_CONTENT_TYPE,
    "text/event-stream": (b"content-type", b"text/event-stream; charset=utf-8"),
    "text/plain": (b"content-type", b"text/plain; charset=utf-8"),
    "application/x-ndjson": (b"content-type", b"application/x-ndjson"),
}
_OTHER_CONTENT = (b"content-type", b"application/octet-stream")


def _content_type(value: str) -> tuple[bytes, bytes]:
    known = _CONTENT_TYPES.get(value)
    if known is not None:
        return known
    if not value:
        return JSON_CONTENT_TYPE
    return _CONTENT_TYPES.get(value.partition(";")[0].strip().lower(), _OTHER_CONTENT)


# qg_usage.model_requested is VARCHAR(200): PostgreSQL refuses a longer value, and with it the
# whole batch of rows it came in. The name a client asks for is the client's to choose.
_MODEL_CHARS = 200


def _asked_for(raw: bytes) -> tuple[str | None, bool]:
    """The model and stream flag of a body the endpoint refused, as far as it names them: the
    refused request's row is then grouped under the model it asked for."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, False
    if not isinstance(body, dict):
        return None, False
    model = body.get("model")
    return (model if isinstance(model, str) and model else None), body.get("stream") is True


def _upstream_body(
    request: ParsedRequest, raw: bytes, target: DeploymentTarget, counts_tokens: bool
) -> tuple[bytes, bool]:
    """The body for ``target``, and whether it asks the stream for a usage chunk the client did
    not ask for (and will not see). Unchanged bytes unless the deployment needs changes."""
    changes: dict[str, Any] = {}
    if target.provider_model != request.model:
        changes["model"] = target.provider_model
    ask = False
    if request.stream and counts_tokens and target.stream_usage:
        options = request.body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            # Settling needs the provider's count; the client will not see the extra chunk.
            ask = True
            changes["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return (orjson.dumps({**request.body, **changes}) if changes else raw), ask


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
        # The secrets of the router's configuration, kept out of what is relayed with a 2xx
        # (errors are scrubbed where they are made, in the router).
        self._scrubber = Scrubber(router.secrets)

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
        # From here on the request is a tenant's, and every way it ends leaves its ledger row.
        raw = b""
        request: ParsedRequest | None = None
        try:
            raw = await read_body(receive, headers.content_length, self.max_body_bytes, scope)
            request = endpoint.parse(raw)
            self.check_model(principal, request.model)
        except GatewayError as exc:
            model, stream = (request.model, request.stream) if request is not None else _asked_for(raw)
            if model is not None:
                model = model[:_MODEL_CHARS]
            refused = _Record(request_id, headers.client_request_id, principal, model, stream, began)
            await self._account(refused, exc.status, _error_type(exc))
            raise
        record = _Record(request_id, headers.client_request_id, principal, request.model, request.stream, began)
        try:
            await self._handle(endpoint, receive, send, request, raw, principal, record)
        except GatewayError as exc:
            await self._account(record, exc.status, _error_type(exc))
            raise
        except Exception:
            # A bug: the client gets a 500 (see _app), and the row says so rather than 499.
            await self._account(record, 500, "internal_error")
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
        books = self.books
        router = self.router
        model = request.model
        policy = self.policy
        limited = policy is not None and policy.enabled and self.limiter is not None
        applied = policy.limits_for(principal, model) if limited and policy is not None else None
        # Estimating (the tokenizer) is needed only by token/spend limits and context windows; the
        # ledger needs the provider's reported usage, which is read either way.
        needs_estimate = (applied is not None and applied.counts_tokens) or router.needs_estimate(model)
        estimate = ZERO
        if needs_estimate:
            estimate = estimate_tokens(
                endpoint.kind,
                request.body,
                model,
                self.expected_output_tokens,
                self.routes.models[model].context_window,
            )
            record.estimate = estimate
        reserved = 0
        if applied is not None and applied.limits:
            if applied.counts_spend:
                reserved = micro_usd(cost_usd(self._price(model), estimate.prompt, estimate.output))
                record.reserved = reserved
            waited = time.perf_counter()
            decision = await self._decide(applied, estimate, wait=True, spend=reserved)
            books.metrics.wait.observe(time.perf_counter() - waited)
            self._note_decision(principal, decision)
            if not decision.allowed:
                raise rate_limit_error(decision, self._clock())
            record.decision = decision
        record.applied = applied

        counts_tokens = needs_estimate or books.ledger is not None
        bodies: dict[str, tuple[bytes, bool]] = {}

        def body_for(target: DeploymentTarget) -> bytes:
            made = bodies.get(target.id)
            if made is None:
                made = bodies[target.id] = _upstream_body(request, raw, target, counts_tokens)
            return made[0]

        async def switch_model(name: str) -> bool:
            return await self._switch_model(record, name, limited)

        max_wait, priority = policy.shaping(principal) if policy is not None else (0.0, 0)
        watch = record.watch = _DisconnectWatch(receive, self._watches)
        try:
            try:
                exchange = await router.exchange(
                    model,
                    RouteRequest(
                        endpoint.upstream_path, body_for, request.stream, estimate, max_wait, priority, switch_model
                    ),
                )
                record.exchange = exchange
                record.upstream_answered = True
                served = exchange.target
                extra = request_id_headers(record.request_id, record.client_request_id)
                extra.append((b"x-quotagate-deployment", served.label_bytes))
                if record.decision is not None:
                    extra.extend(ratelimit_headers(record.decision))
                outcome: bool | None = False
                try:
                    if exchange.streamed:
                        made = bodies.get(served.id)
                        stream_usage = record.stream_usage = StreamUsage(strip_usage_chunk=made is not None and made[1])
                        outcome = await self._relay_stream(exchange, send, extra, stream_usage, record)
                    else:
                        await self._relay_body(exchange, send, extra, record)
                        outcome = True
                except asyncio.CancelledError:
                    # The client left: that says nothing about the deployment's health.
                    outcome = None
                    raise
                finally:
                    record.collect_stream_usage()
                    prompt, completion = record.actual()
                    await router.finish(exchange, outcome, prompt + completion)
            except asyncio.CancelledError:
                if not watch.gone:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            watch.stop()
            record.collect_stream_usage()
            charged, applied = record.decision, record.applied
            if charged is not None and applied is not None and self.limiter is not None:
                deltas = None
                if applied.counts_tokens:
                    prompt, completion = record.actual()
                    spent = micro_usd(self._cost(record, prompt, completion)) if reserved else 0
                    deltas = _deltas(applied.limits, estimate, prompt, completion, spent, reserved)
                    await self.limiter.settle(charged, applied.limits, deltas)
                if charged.lease is not None:
                    await self.limiter.release(charged, applied.limits)
                if books.alerts is not None:
                    # Quotas and budgets as the request left them, settled: what it used, not
                    # the most it could have used.
                    books.alerts.settled(principal, charged, deltas, self.limiter.status)

    async def _switch_model(self, record: _Record, model: str, limited: bool) -> bool:
        """Charge the tenant's limits to ``model`` (a fallback the router moves on to) instead of
        the one charged so far; False when ``model``'s limits refuse the request."""
        if model == record.charged_model or not limited or self.policy is None:
            record.charged_model = model
            return True
        new_applied = self.policy.limits_for(record.principal, model)
        if new_applied.limits == (record.applied.limits if record.applied is not None else ()):
            record.charged_model = model
            return True
        new_decision = await self._decide(new_applied, record.estimate, wait=False, spend=record.reserved)
        if not new_decision.allowed:
            return False
        await self._undo(record.decision, record.applied)
        record.applied, record.decision, record.charged_model = new_applied, new_decision, model
        return True

    async def _complete(self, record: _Record, status: int, error_type: str | None) -> None:
        """The response's last message is next. From here on http.disconnect means the response
        is done, not that the client left: the watch must not cancel what follows (settling)."""
        if record.watch is not None:
            record.watch.stop()
        # The row is durable before the client has the whole response (see ledger).
        await self._account(record, status, error_type)

    def _note_decision(self, principal: Principal, decision: Decision) -> None:
        self.books.metrics.decision(decision.allowed, decision.denied_by.limit if decision.denied_by else None)
        if not decision.allowed and self.books.alerts is not None:
            self.books.alerts.refused(principal, decision)

    def _price(self, model: str) -> Price | None:
        names = [model, *(t.provider_model for t in self.routes.deployments(model))]
        return self.books.pricing.price_for(*names)

    def _cost(self, record: _Record, prompt: int, completion: int) -> float:
        model = record.charged_model
        if record.exchange is not None:
            price = self.books.pricing.price_for(record.exchange.target.provider_model, model)
        else:
            price = self.books.pricing.price_for(model)
        return cost_usd(price, prompt, completion, record.cached)

    async def _account(self, record: _Record, status: int, error_type: str | None) -> None:
        """The request's ledger row and metrics; once per request."""
        if record.done:
            return
        record.done = True
        record.collect_stream_usage()
        books = self.books
        now = time.perf_counter()
        model = record.charged_model
        prompt, completion = record.actual()
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
            cached_tokens=record.cached,
            # Nothing used costs nothing: a refused request's model (any name a client sends)
            # is never looked up in, and so never cached by, the price list.
            cost_usd=self._cost(record, prompt, completion) if prompt or completion else 0.0,
            latency_ms=latency,
            upstream_ms=upstream,
            overhead_ms=latency - (upstream or 0.0),
            status=status,
            error_type=error_type,
            stream=record.stream,
            client_request_id=record.client_request_id,
        )
        # A name the gateway does not serve is the client's choice: never a metrics label.
        books.metrics.observe(row, row.model_served or (model if model in self.routes.models else ""))
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
        record: _Record,
    ) -> None:
        response = exchange.response
        # Whole already: the router read it within the deployment's timeouts, so that an answer
        # breaking off midway could still be retried elsewhere.
        body = await response.read()
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        details = usage_details(payload)
        if details is not None:
            record.reported, record.cached = (details[0], details[1]), details[2]
        else:
            record.generated = generated_text(payload)
        if isinstance(payload, dict) and payload.get("error"):
            # An error with a 2xx status, scrubbed as error responses are (keys in JSON escapes too).
            body = orjson.dumps(scrub(payload, self._scrubber.secrets))
        body = self._scrubber.body(body)
        type_header = _content_type(response.headers.get("content-type", ""))
        await self._complete(record, response.status, None)
        await send_bytes(send, response.status, body, [type_header, *extra])

    async def _relay_stream(
        self,
        exchange: Exchange,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        stream_usage: StreamUsage,
        record: _Record,
    ) -> bool:
        """Relay SSE event by event; True when the stream ended as the provider meant it to."""
        response = exchange.response
        total = exchange.target.total_timeout
        deadline = exchange.started + total if total is not None else None
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *extra]})
        scrubber = self._scrubber
        # The first error event the provider sent, if any: the row records that the stream failed.
        failed: dict[str, Any] | None = None
        try:
            try:
                # What has arrived of events not yet whole, and how much of it has been searched
                # for an event's end: each byte is searched once, however long an event.
                pending = bytearray(exchange.first_chunk)
                searched = 0
                chunks = response.iter_chunks().__aiter__()
                while True:
                    # Forward whole events only, so that a failure mid-event can still be
                    # followed by a well-formed error event the SDK understands.
                    cut = _end_of_last_event(pending, searched)
                    if cut:
                        events, error = scrubber.events(stream_usage.feed(bytes(pending[:cut])))
                        del pending[:cut]
                        failed = error if failed is None else failed
                        await send({"type": "http.response.body", "body": events, "more_body": True})
                    if len(pending) > MAX_STREAM_EVENT_BYTES:
                        # A provider that never ends an event would otherwise grow this for as
                        # long as it sends: one event is a piece of an answer, never this big.
                        raise UpstreamError(
                            f"Upstream {exchange.target.label} sent a stream event larger than the gateway's "
                            f"limit of {MAX_STREAM_EVENT_BYTES} bytes.",
                            code="stream_event_too_large",
                        )
                    searched = len(pending)
                    if deadline is not None and time.monotonic() > deadline:
                        raise UpstreamTimeoutError(
                            f"Upstream {exchange.target.label} exceeded its total timeout of {total:g}s."
                        )
                    chunk = await anext(chunks, b"")
                    if not chunk:
                        if pending:
                            rest, error = scrubber.events(stream_usage.feed(bytes(pending)))
                            failed = error if failed is None else failed
                            await send({"type": "http.response.body", "body": rest, "more_body": True})
                        break
                    pending += chunk
                await self._complete(record, 200, _stream_error_type(failed) if failed is not None else None)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
            except GatewayError as exc:
                # The status line has gone; an error event is the only way left to tell the
                # client. The OpenAI SDKs raise it as an APIError. The row says the stream broke.
                await self._complete(record, 200, _error_type(exc))
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
