"""The gateway as one ASGI application.

Routing is a dictionary lookup on (method, path): the proxy endpoints are hit thousands of times
a second and a framework's router would cost more than it gives. Every exception ends here as an
OpenAI-shaped response; an unexpected one is logged with its traceback and answered with a
generic 500, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

from .._logging import request_id as request_id_var
from ..accounting import MICRO, Alerts, Ledger, Metrics, Price, Pricing, SqlWriter, StreamLedger, usage_report
from ..accounting._reports import GroupBy
from ..auth import Authenticator, Principal
from ..config import Config, resolve_secret
from ..errors import GatewayError, MethodNotAllowedError, NotFoundError, ServiceUnavailableError
from ..keys import KeyStore
from ..limits import InProcessStore, Limiter, RedisConnection, RedisStore, Store, StoreUnavailableError, Unit
from ..policy import Policy
from ..router import DeploymentStates, MemoryStateStore, RedisStateStore, Router
from ..router._state import StateStore
from ..tokens import encoding_for_model
from ..upstream import HttpTransport, ModelRoutes, Transport
from ._admin import AdminAPI
from ._asgi import (
    JSON_CONTENT_TYPE,
    Receive,
    RequestHeaders,
    Scope,
    Send,
    new_request_id,
    request_id_headers,
    send_bytes,
    send_json,
)
from ._proxy import CHAT, COMPLETIONS, EMBEDDINGS, Books, Endpoint, Proxy

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger("quotagate")

YOUNG_GC_THRESHOLD = 10_000

_READY_TIMEOUT = 2.0
Handler = Callable[[Scope, Receive, Send, RequestHeaders, str], Awaitable[None]]


class Gateway:
    """``Gateway(config)`` is an ASGI app; uvicorn (or any ASGI server) runs it."""

    def __init__(
        self,
        config: Config,
        *,
        store: KeyStore | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.store = store or KeyStore.from_url(config.database)
        self.authenticator = Authenticator(self.store, ttl=config.auth_cache_seconds)
        self.routes = ModelRoutes(config)  # resolves the upstream keys: fails now if one is missing
        self.transport: Transport = transport or HttpTransport()
        self.redis: RedisConnection | None = None
        limit_store: Store
        if config.redis:
            # Every request's limit decision, the deployments' breakers and the alerts go over one
            # pipelined connection (redis-py costs several times the CPU per command: see
            # limits/_connection). A tight deadline and no retries: the limiter decides what a
            # slow or absent Redis means (fail closed or open), and must learn it quickly.
            timeout = config.limiter.timeout_ms / 1000.0
            self.redis = RedisConnection(config.redis, timeout=timeout, connect_timeout=timeout)
            limit_store = RedisStore(self.redis)
        else:
            limit_store = InProcessStore()
        self.policy = Policy(config)
        self.limiter = Limiter(
            limit_store,
            timeout=config.limiter.timeout_ms / 1000.0,
            on_store_failure=config.limiter.on_store_failure,
            fallback_share=config.limiter.fallback_share,
            max_queue=config.limiter.max_queue,
        )
        upstream_secrets = tuple(
            str(t.headers.get("Authorization", "")).removeprefix("Bearer ")
            for name in self.routes.models
            for t in self.routes.deployments(name)
        )
        state_store: StateStore = RedisStateStore(self.redis) if self.redis is not None else MemoryStateStore()
        self.router = Router(
            config,
            self.routes,
            self.transport,
            self.limiter,
            DeploymentStates(state_store, config.router.breaker),
            secrets=tuple(s for s in upstream_secrets if s),
        )
        self.metrics = Metrics(per_key=config.metrics_per_key)
        writer = SqlWriter(self.store.database)
        self.ledger: Ledger | None = None
        if config.ledger.enabled:
            settings = config.ledger
            if config.redis is not None:
                self.ledger = StreamLedger(
                    writer,
                    appender=RedisConnection(config.redis, timeout=2.0, connect_timeout=2.0),
                    consumer=RedisConnection(config.redis, timeout=settings.flush_seconds + 5.0, connect_timeout=2.0),
                    batch_size=settings.batch_size,
                    flush_seconds=settings.flush_seconds,
                    claim_after_seconds=settings.claim_after_seconds,
                )
            else:
                self.ledger = Ledger(writer, settings.batch_size, settings.flush_seconds)
        self.alerts = Alerts(config.alerts, self.redis)
        prices = {name: Price(p.input, p.output, p.cached_input) for name, p in config.pricing.items()}
        self.books = Books(
            pricing=Pricing(prices),
            ledger=self.ledger,
            metrics=self.metrics,
            alerts=self.alerts,
            timezone=config.timezone,
            log_requests=config.logging.requests,
        )
        self.metrics.add_gauges(self._gauges)
        self.proxy = Proxy(
            self.routes,
            self.authenticator,
            self.router,
            config.server.max_body_bytes,
            policy=self.policy,
            limiter=self.limiter,
            expected_output_tokens=config.limiter.expected_output_tokens,
            books=self.books,
        )
        self.admin = AdminAPI(
            config,
            self.store,
            self.authenticator,
            resolve_secret(config.master_key, "master_key"),
            self.quota,
            self.router.describe,
            self.usage,
        )
        self._started = time.time()
        self._routes: dict[tuple[str, str], Handler] = {}
        for prefix in ("/v1", ""):
            # The OpenAI SDK uses /v1/...; some clients are configured without the prefix.
            for path, endpoint in (
                ("/chat/completions", CHAT),
                ("/completions", COMPLETIONS),
                ("/embeddings", EMBEDDINGS),
            ):
                self._routes[("POST", prefix + path)] = self._proxy_handler(endpoint)
            self._routes[("GET", prefix + "/models")] = self._list_models
            self._routes[("GET", prefix + "/quota")] = self._quota
        self._routes[("GET", "/health")] = self._health
        self._routes[("GET", "/metrics")] = self._metrics
        self._routes[("GET", "/ready")] = self._ready

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websocket: not served; returning closes it.

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        client_request_id: str | None = None
        try:
            headers = RequestHeaders(scope["headers"])
            client_request_id = headers.client_request_id
            request_id_var.set(request_id)
            handler = self._route(scope["method"], scope["path"])
            await handler(scope, receive, send, headers, request_id)
        except GatewayError as exc:
            extra = [(k.encode(), v.encode()) for k, v in exc.headers.items()]
            extra.extend(request_id_headers(request_id, client_request_id))
            await send_bytes(send, exc.status, exc.body(), [JSON_CONTENT_TYPE, *extra])
        except Exception:
            # A bug, not a client error. The traceback goes to the log, never to the client.
            logger.exception("unhandled error in request %s", request_id)
            error = GatewayError("The gateway hit an internal error; it has been logged.", code="internal_error")
            await send_bytes(
                send, 500, error.body(), [JSON_CONTENT_TYPE, *request_id_headers(request_id, client_request_id)]
            )

    def _route(self, method: str, path: str) -> Handler:
        handler = self._routes.get((method, path))
        if handler is not None:
            return handler
        if path == "/admin" or path.startswith("/admin/"):
            return self._admin
        if path.startswith("/v1/models/") or path.startswith("/models/"):
            if method != "GET":
                raise MethodNotAllowedError(f"{method} is not allowed on {path}.")
            return self._retrieve_model
        if any(p == path for (_, p) in self._routes):
            raise MethodNotAllowedError(f"{method} is not allowed on {path}.")
        raise NotFoundError(f"Unknown route: {method} {path}.", code="unknown_url")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": _startup_problem(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        await self.store.create_schema()
        # Loading a tokenizer takes ~0.15 s; done now, it does not stall the first requests.
        for model in self.routes.models:
            if self.policy.counts_tokens or self.router.needs_estimate(model):
                encoding_for_model(model)
        if self.ledger is not None:
            await self.ledger.start()
        # Everything alive now (config, modules, pools) lives as long as the process: moving it
        # out of the collector's generations keeps full collections short under load.
        gc.collect()
        gc.freeze()
        # Requests leave no reference cycles behind (gc.collect() found none after 7,000 requests,
        # streams and errors included), so a young-generation collection under load only re-scans
        # the requests in flight: at the default threshold of 700 that took 6 % of the gateway's
        # CPU at 64 connections (thread time in gc.callbacks). Cycles that do appear are still
        # collected, after at most this many net allocations.
        gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
        # `quotagate serve` turns collection off while it imports and builds the gateway.
        gc.enable()

    async def shutdown(self) -> None:
        if self.ledger is not None:
            await self.ledger.aclose()
        await self.alerts.aclose()
        await self.limiter.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.transport.aclose()
        await self.store.close()

    # -- handlers ---------------------------------------------------------------------------

    def _proxy_handler(self, endpoint: Endpoint) -> Handler:
        # The proxy's own coroutine, bound to the endpoint: no wrapper coroutine per request.
        return functools.partial(self.proxy.handle, endpoint)

    async def _admin(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        await self.admin.handle(scope, receive, send, headers)

    def _model_entry(self, name: str) -> dict[str, Any]:
        targets = self.routes.deployments(name)
        return {
            "id": name,
            "object": "model",
            "created": int(self._started),
            "owned_by": targets[0].provider if targets else "quotagate",
        }

    async def _list_models(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        principal = await self.proxy.authenticate(headers)
        data = [self._model_entry(name) for name in self.routes.models if principal.may_use(name)]
        await send_json(send, 200, {"object": "list", "data": data})

    async def _retrieve_model(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        principal = await self.proxy.authenticate(headers)
        name = scope["path"].split("/models/", 1)[1]
        self.proxy.check_model(principal, name)
        await send_json(send, 200, self._model_entry(name))

    async def _quota(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        principal = await self.proxy.authenticate(headers)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        model = query.get("model", [None])[0]
        if model is not None:
            self.proxy.check_model(principal, model)
        await send_json(send, 200, await self.quota(principal, model))

    async def quota(self, principal: Principal, model: str | None) -> dict[str, Any]:
        """A principal's limits with their usage, remaining and reset times."""
        applied = self.policy.limits_for(principal, model)
        try:
            statuses = await self.limiter.status(applied.limits) if applied.limits else ()
        except StoreUnavailableError:
            raise ServiceUnavailableError(
                "The rate limit store is unavailable.", code="limit_store_unavailable"
            ) from None
        now = time.time()
        currency = self.config.currency
        entries = []
        for s in statuses:
            entry: dict[str, Any] = {
                "name": s.limit.label,
                "scope": s.limit.scope,
                "unit": s.limit.unit.value,
                "algorithm": s.limit.algorithm.value,
                "limit": s.limit.capacity,
                "used": s.used,
                "remaining": s.remaining,
                "reset_in_seconds": round(s.reset_after, 3),
                "resets_at": datetime.fromtimestamp(now + s.reset_after, UTC).isoformat(timespec="seconds"),
            }
            if s.limit.unit is Unit.SPEND:
                # Budgets are kept in micro-dollars; show dollars, and the display currency.
                for name, value in (("limit", s.limit.capacity), ("used", s.used), ("remaining", s.remaining)):
                    entry[f"{name}_usd"] = round(value / MICRO, 6)
                    if currency.display != "USD":
                        entry[f"{name}_{currency.display.lower()}"] = round(value / MICRO * currency.rate, 6)
            entries.append(entry)
        return {
            "object": "quota",
            "key_id": principal.key_id,
            "user": principal.user,
            "tier": principal.tier,
            "model": model,
            "limits": entries,
        }

    async def _metrics(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        text, content_type = self.metrics.exposition()
        await send_bytes(send, 200, text, [(b"content-type", content_type.encode())])

    def _gauges(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily  # imported at the first scrape

        queue = GaugeMetricFamily("quotagate_queue_depth", "Requests waiting for capacity on this node")
        queue.add_metric([], self.limiter._waiting)
        yield queue
        breakers = GaugeMetricFamily(
            "quotagate_breaker_state",
            "Circuit breaker per deployment (0 closed, 1 open, 2 half-open)",
            labels=["deployment"],
        )
        for target_id, target in self.routes.by_id.items():
            breakers.add_metric([target.label], self.router.states.cached(target_id).state)
        yield breakers
        errors = GaugeMetricFamily("quotagate_store_errors", "Failed calls to the shared store", labels=["store"])
        errors.add_metric(["limits"], self.limiter.stats.store_errors)
        errors.add_metric(["deployment_state"], self.router.states.store_errors)
        yield errors
        if self.ledger is not None:
            ledger = GaugeMetricFamily("quotagate_ledger_rows_written", "Usage rows written to the database")
            ledger.add_metric([], self.ledger.written)
            yield ledger

    async def usage(self, by: str, since: datetime | None, until: datetime | None) -> dict[str, Any]:
        if self.ledger is not None:
            await self.ledger.flush()  # a report includes what this node has not written yet
        group = cast(GroupBy, by)
        currency = self.config.currency
        report = await usage_report(self.store.database, group, since, until, currency.display, currency.rate)
        return report.to_dict()

    async def _health(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        await send_json(send, 200, {"status": "ok"})

    async def _ready(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        checks: dict[str, str] = {}
        checks["database"] = await _check(self.store.ping())
        if self.redis is not None:
            checks["redis"] = await _check(self.redis.execute("PING"))
        ready = all(v == "ok" for v in checks.values())
        await send_json(send, 200 if ready else 503, {"status": "ready" if ready else "not ready", "checks": checks})


async def _check(probe: Awaitable[Any]) -> str:
    try:
        await asyncio.wait_for(probe, _READY_TIMEOUT)
    except TimeoutError:
        return f"timed out after {_READY_TIMEOUT:g}s"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


def _startup_problem(exc: BaseException) -> str:
    return f"quotagate could not start: {type(exc).__name__}: {exc}"
