"""The gateway as one ASGI application.

Routing is a dictionary lookup on (method, path): the proxy endpoints are hit thousands of times
a second and a framework's router would cost more than it gives. Every exception ends here as an
OpenAI-shaped response; an unexpected one is logged with its traceback and answered with a
generic 500, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .._logging import configure as configure_logging
from .._logging import request_id as request_id_var
from ..accounting import MICRO, Alerts, Ledger, Metrics, Price, Pricing, SqlWriter, StreamLedger
from ..accounting._quotas import DurableQuotas
from ..accounting.ledger import journal_path
from ..auth import Authenticator, Principal
from ..cache import CacheRules, CacheStore, MemoryCacheStore, RedisCacheStore, ResponseCache
from ..config import Config, ConfigError, resolve_secret
from ..config._reload import Reload, log_reload_failed, log_reloaded, one_line, prepare_reload
from ..console import Console
from ..errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ServiceUnavailableError,
)
from ..keys import AdminKeyStore, AuditLog, KeyStore
from ..limits import InProcessStore, Limiter, RedisStore, Store, StoreUnavailableError, Unit
from ..policy import Policy
from ..redis import RedisClient
from ..redis import connect as connect_redis
from ..router import DeploymentStates, MemoryStateStore, RedisStateStore, Router
from ..router._state import StateStore
from ..tiering import Downgrades, RoutePlanner
from ..tokens import encoding_for_model
from ..tracing import start_tracing
from ..upstream import HttpTransport, ModelRoutes, Transport
from ._admin import AdminAPI
from ._admin_auth import AdminAuth
from ._admin_ledger import LedgerViews
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
from ._azure import PREFIX as AZURE_PREFIX
from ._azure import azure_route
from ._books import Books
from ._messages import CountTokens, anthropic_errors
from ._openapi import openapi_json
from ._passthrough import Passthrough
from ._proxy import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, Proxy
from ._responses import ResponseHomes, Responses

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily

    from ..cache._embedder import Embedder

logger = logging.getLogger("quotagate")

_READY_TIMEOUT = 2.0
Handler = Callable[[Scope, Receive, Send, RequestHeaders, str], Awaitable[None]]


class Gateway:
    """``Gateway(config)`` is an ASGI app; uvicorn (or any ASGI server) runs it.

    With ``config_file``, ``reload()`` (SIGHUP, POST /admin/reload) serves that file as it is
    now. A worker of ``serve_workers`` names its ``supervisor`` (a process id) instead of
    reloading itself: the supervisor replaces the workers one by one.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: KeyStore | None = None,
        transport: Transport | None = None,
        config_file: str | os.PathLike[str] | None = None,
        supervisor: int | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        # Called once startup is done: `quotagate serve` tunes its process there (the garbage
        # collector); a program that embeds the gateway keeps its process as it is.
        self._on_started = on_started
        self.config_file = Path(config_file) if config_file is not None else None
        self._supervisor = supervisor
        self._reloading = asyncio.Lock()
        self.store = store or KeyStore.from_url(config.database)
        self.authenticator = Authenticator(self.store, ttl=config.auth_cache_seconds)
        self.routes = ModelRoutes(config)  # resolves the upstream keys: fails now if one is missing
        self.transport: Transport = transport or HttpTransport()
        self.redis: RedisClient | None = None
        # Without Redis the quotas live in this process; a copy in the database outlives it.
        self.quotas: DurableQuotas | None = None
        limit_store: Store
        if config.redis:
            # Every request's limit decision, the deployments' breakers and the alerts go over one
            # client (for one server, one pipelined connection: see quotagate.redis). A tight
            # deadline: the limiter decides what a slow or absent Redis means (fail closed or
            # open), and must learn it quickly.
            timeout = config.limiter.timeout_ms / 1000.0
            self.redis = connect_redis(config.redis, timeout=timeout, connect_timeout=timeout)
            limit_store = RedisStore(self.redis)
        else:
            memory = InProcessStore(durable_quotas=True)
            self.quotas = DurableQuotas(memory)
            limit_store = memory
        self.policy = Policy(config)
        self.limiter = Limiter(
            limit_store,
            timeout=config.limiter.timeout_ms / 1000.0,
            on_store_failure=config.limiter.on_store_failure,
            fallback_share=config.limiter.fallback_share,
            max_queue=config.limiter.max_queue,
        )
        state_store: StateStore = RedisStateStore(self.redis) if self.redis is not None else MemoryStateStore()
        self.router = self._make_router(config, self.routes, DeploymentStates(state_store, config.router.breaker))
        self.metrics = Metrics(per_key=config.metrics_per_key)
        resolve_secret(config.metrics.token, "metrics.token")  # a missing variable fails now, not at a scrape
        writer = SqlWriter(self.store.database, self.quotas)
        self.ledger: Ledger | None = None
        # What writes the quotas' state when no ledger does: a ledger that is given no rows.
        self._quota_writer: Ledger | None = None
        if config.ledger.enabled:
            settings = config.ledger
            if config.redis is not None:
                self.ledger = StreamLedger(
                    writer,
                    # On the request path: the store's deadline, like every Redis call there; a
                    # row not appended in time goes to the journal instead (see StreamLedger).
                    appender=connect_redis(
                        config.redis,
                        timeout=config.limiter.timeout_ms / 1000.0,
                        connect_timeout=config.limiter.timeout_ms / 1000.0,
                    ),
                    consumer=connect_redis(config.redis, timeout=settings.flush_seconds + 5.0, connect_timeout=2.0),
                    batch_size=settings.batch_size,
                    flush_seconds=settings.flush_seconds,
                    claim_after_seconds=settings.claim_after_seconds,
                    journal=journal_path(self.store.database),
                )
            else:
                self.ledger = Ledger(
                    writer, settings.batch_size, settings.flush_seconds, journal=journal_path(self.store.database)
                )
        elif self.quotas is not None:
            self._quota_writer = Ledger(writer, flush_seconds=config.ledger.flush_seconds)
        self.alerts = Alerts(config.alerts, self.redis)
        self.books = self._make_books(config)
        # The embedding model, shared by the semantic cache and the route classifier; made once
        # one of them needs it (at start, or at the reload that adds the first).
        self.embedder: Embedder | None = None
        self._started_embedder: Embedder | None = None
        self._make_embedder(config)
        self.cache = self._make_cache(config)
        self.planner = self._make_planner(config, None)
        # None unless tracing.enabled; read at start only (a reload keeps the running tracer).
        self.tracing = start_tracing(config.tracing)
        self.metrics.add_gauges(self._gauges)
        self.proxy = self._make_proxy(
            config, self.routes, self.authenticator, self.router, self.policy, self.books, self.planner
        )
        self.passthrough = Passthrough(self.proxy, config.passthrough.default_model)
        # Which deployment holds each stored response: kept across reloads (target ids are).
        self.response_homes = ResponseHomes(self.redis)
        self.responses = Responses(self.proxy, config.passthrough.default_model, self.response_homes)
        self.audit = AuditLog(self.store.database)
        self.admin = self._make_admin(config, self.authenticator, self.router)
        # The console signs in with the admin API's keys as they are after any reload.
        self.console = Console(lambda: self.admin.auth, self.audit.record)
        self._started = time.time()
        self._routes = self._route_table(self.proxy)
        self._openapi_json: bytes | None = None

    # -- what a configuration makes (at start, and again at each reload) --------------------------

    def _make_router(self, config: Config, routes: ModelRoutes, states: DeploymentStates) -> Router:
        # The router scrubs the configuration's secrets (upstream keys, master key, metrics token)
        # from whatever a provider answers.
        return Router(config, routes, self.transport, self.limiter, states)

    def _make_books(self, config: Config) -> Books:
        prices = {name: Price(p.input, p.output, p.cached_input, p.cache_write) for name, p in config.pricing.items()}
        return Books(
            pricing=Pricing(prices),
            ledger=self.ledger,
            metrics=self.metrics,
            alerts=self.alerts,
            timezone=config.timezone,
            log_requests=config.logging.requests,
            served_models=frozenset(model.name for model in config.models),
        )

    def _make_cache(self, config: Config) -> ResponseCache:
        """The response cache: its store lives as long as the process (a reload changes which tiers
        and models use it, not where answers are kept)."""
        settings = config.cache
        store: CacheStore
        if settings.store == "redis":
            assert self.redis is not None  # the configuration requires it
            store = RedisCacheStore(self.redis)
        else:
            store = MemoryCacheStore(max_entries=settings.max_entries, max_bytes=settings.max_bytes)
        cache = ResponseCache(store, store_kind=settings.store)
        self._make_semantic(cache, config)
        return cache

    def _make_embedder(self, config: Config) -> None:
        """The embedding model, once a semantic cache rule or a routed model's examples need it.
        Not before: numpy's import alone is 0.1 s of start-up, and the local model ~150 MB and a
        second to load."""
        if self.embedder is not None or not (CacheRules(config).semantic or RoutePlanner.uses_examples(config)):
            return
        if config.cache.embedding == "local":
            from ..cache._embedder import LocalEmbedder

            self.embedder = LocalEmbedder()
        else:
            from ._cache_embedding import RoutedEmbedder

            self.embedder = RoutedEmbedder(config.cache.embedding, lambda: self.proxy)

    async def _start_embedder(self) -> None:
        """Load the embedding model (once per model: a reload may bring the first)."""
        if self.embedder is None or self.embedder is self._started_embedder:
            return
        # numpy's BLAS (OpenBLAS) would spread the index's search and the model's forward pass
        # over every core; for vectors this small one thread is as fast, and on a busy machine
        # the extra threads' tails reached 150 ms (bench/NOTES.md). Process-wide: the cache and
        # the route classifier are the gateway's only users of numpy.
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
        self._started_embedder = self.embedder
        start = getattr(self.embedder, "start", None)
        if start is not None:
            await start()

    def _make_semantic(self, cache: ResponseCache, config: Config) -> None:
        """Give ``cache`` its semantic index and the embedding model once a rule of ``config`` is
        semantic (at start, or at the reload that adds one)."""
        if cache.index is not None or not CacheRules(config).semantic:
            return
        from ..cache._semantic import SemanticIndex
        from ..cache._shared_index import SharedSemanticIndex

        settings = config.cache
        cache.index = SemanticIndex(settings.semantic_entries)
        if self.redis is not None and settings.store == "redis":
            # The stream keeps a few times what an index holds: a node starting reads no further.
            cache.shared = SharedSemanticIndex(
                self.redis, cache.index, max_stream_entries=3 * settings.semantic_entries
            )
        cache.embedder = self.embedder

    def _make_planner(self, config: Config, earlier: RoutePlanner | None) -> RoutePlanner | None:
        """The routed models' classifier (None: the configuration routes no model); ``earlier``'s
        example vectors are reused (a reload embeds only the examples it adds)."""
        if not any(model.route is not None for model in config.models):
            return None
        return RoutePlanner(config, self.embedder, earlier)

    def _make_proxy(
        self,
        config: Config,
        routes: ModelRoutes,
        authenticator: Authenticator,
        router: Router,
        policy: Policy,
        books: Books,
        planner: RoutePlanner | None,
    ) -> Proxy:
        return Proxy(
            routes,
            authenticator,
            router,
            config.server.max_body_bytes,
            policy=policy,
            limiter=self.limiter,
            expected_output_tokens=config.limiter.expected_output_tokens,
            books=books,
            cache=self.cache,
            cache_rules=CacheRules(config),
            hits_charge=config.cache.hits_charge,
            planner=planner,
            downgrades=Downgrades(config),
            tracer=self.tracing,
        )

    def _make_admin(self, config: Config, authenticator: Authenticator, router: Router) -> AdminAPI:
        # Made again at each reload: a changed master key ends the console's sessions signed with it.
        auth = AdminAuth(resolve_secret(config.master_key, "master_key"), AdminKeyStore(self.store.database))
        return AdminAPI(
            config,
            self.store,
            authenticator,
            auth,
            self.audit,
            self.quota,
            router,
            reload=self._admin_reload,
            cache=lambda: self.cache,
            ledger=LedgerViews(
                self.store.database, self.ledger.flush if self.ledger is not None else None, config.currency
            ),
        )

    def _route_table(self, proxy: Proxy) -> dict[tuple[str, str], Handler]:
        routes: dict[tuple[str, str], Handler] = {}
        for prefix in ("/v1", ""):
            # The OpenAI SDK uses /v1/...; some clients are configured without the prefix.
            for path, endpoint in (
                ("/chat/completions", CHAT),
                ("/completions", COMPLETIONS),
                ("/embeddings", EMBEDDINGS),
            ):
                # The proxy's own coroutine, bound to the endpoint: no wrapper coroutine per
                # request. Bound to this proxy: a request keeps it (and its configuration) to the
                # end, whatever a reload swaps in meanwhile.
                routes[("POST", prefix + path)] = functools.partial(proxy.handle, endpoint)
            routes[("GET", prefix + "/models")] = self._list_models
            routes[("GET", prefix + "/quota")] = self._quota
        # Anthropic's Messages API (its SDK and Claude Code always use the /v1 prefix).
        routes[("POST", "/v1/messages")] = anthropic_errors(functools.partial(proxy.handle, MESSAGES))
        routes[("POST", "/v1/messages/count_tokens")] = anthropic_errors(CountTokens(proxy).handle)
        routes[("GET", "/health")] = self._health
        routes[("GET", "/metrics")] = self._metrics
        routes[("GET", "/ready")] = self._ready
        routes[("GET", "/openapi.json")] = self._openapi
        return routes

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
        if path == "/ui" or path.startswith("/ui/"):
            return self.console.handle
        if path.startswith(AZURE_PREFIX):
            # Azure OpenAI's clients: the deployment in the URL is the gateway's model.
            azure = azure_route(method, path, self._routes)
            if azure is not None:
                return azure
        if path.startswith("/v1/models/") or path.startswith("/models/"):
            if method != "GET":
                raise MethodNotAllowedError(f"{method} is not allowed on {path}.", headers={"Allow": "GET"})
            return self._retrieve_model
        allowed = sorted(m for (m, p) in self._routes if p == path)
        if allowed:
            raise MethodNotAllowedError(f"{method} is not allowed on {path}.", headers={"Allow": ", ".join(allowed)})
        if path == "/v1/responses" or path.startswith("/v1/responses/"):
            # The Responses API: the passthrough's path, with its estimate and sticky deployments.
            return self.responses.handle
        if path.startswith("/v1/"):
            # Every other OpenAI endpoint (images, audio, files, batches, ...): relayed to a
            # deployment as it came. Bound to this passthrough's proxy, as the table's handlers.
            return self.passthrough.handle
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
        if self.quotas is not None:
            # Before the first request: the quotas and budgets used so far in their windows.
            loaded = await self.quotas.load(self.store.database)
            if loaded:
                logger.info("loaded the kept state of %d calendar quotas and budgets", loaded)
        # Loading a tokenizer takes ~0.15 s; done now, it does not stall the first requests.
        for model in self.routes.models:
            if self.policy.counts_tokens or self.router.needs_estimate(model):
                encoding_for_model(model)
        if self.redis is not None:
            # Connects (on a Cluster, learns the slot map) before the first request, and says at
            # once what is wrong with a Redis that cannot serve: a down Redis is not fatal (the
            # limiter's on_store_failure decides meanwhile), but the operator should know.
            try:
                await self.redis.check()
            except Exception as exc:
                logger.warning("Redis is not ready: %s: %s", type(exc).__name__, exc)
        for model in self.planner.tokenizer_models if self.planner is not None else ():
            encoding_for_model(model)  # the tokenizer of the rules' prompt_tokens
        await self._start_embedder()
        await self.cache.start()
        if self.planner is not None:
            await self.planner.start()  # the routed models' examples, embedded
        if self.ledger is not None:
            await self.ledger.start()
        if self._quota_writer is not None:
            await self._quota_writer.start()
        if self._on_started is not None:
            self._on_started()

    async def shutdown(self) -> None:
        await self.cache.aclose()
        close = getattr(self.embedder, "aclose", None)
        if close is not None:
            await close()
        # The ledger's last write stores the quotas' last changes: before the limiter closes.
        if self.ledger is not None:
            await self.ledger.aclose()
        if self._quota_writer is not None:
            await self._quota_writer.aclose()
        await self.alerts.aclose()
        await self.limiter.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.transport.aclose()
        await self.store.close()
        if self.tracing is not None:
            # Last: a collector that is down holds this up to tracing.timeout_seconds.
            await self.tracing.aclose()

    # -- reloading the configuration ----------------------------------------------------------

    async def reload(self) -> Reload:
        """Serve the configuration file as it is now (SIGHUP, POST /admin/reload).

        The file is read, validated and its secrets resolved before anything changes: a problem
        is logged and raised as ConfigError, and the running configuration goes on serving.
        Requests in flight keep the routes, policy, router and prices they started with (they
        hold the proxy that took them); new ones get the new set. The limit store, breakers,
        ledger, metrics and connections stay: a limit whose definition did not change keeps its
        key, and so its count.
        """
        async with self._reloading:
            try:
                reload = await self._reload()
            except ConfigError as exc:
                log_reload_failed(exc, self.config_file)
                raise
            except Exception as exc:
                # Nothing was swapped yet: the running configuration still serves.
                error = ConfigError(f"{type(exc).__name__}: {exc}")
                log_reload_failed(error, self.config_file)
                raise error from exc
            if self._supervisor is None and self.config_file is not None:
                log_reloaded(reload, self.config_file)
            return reload

    async def _reload(self) -> Reload:
        if self.config_file is None:
            raise ConfigError("the gateway was started without a configuration file: there is nothing to reload")
        reload, _ = await asyncio.to_thread(prepare_reload, self.config_file, self.config)
        if self._supervisor is not None:
            self._ask_supervisor()
            return reload
        config = reload.config
        routes = ModelRoutes(config)
        policy = Policy(config)
        states = self.router.states
        router = self._make_router(config, routes, states)
        for target_id, stats in self.router.stats.items():
            # What this node has seen of a deployment (in flight, latency) goes on counting while
            # it is the same one (its id is where it sends and as whom): the old router's requests
            # settle into it too.
            if target_id in routes.by_id:
                router.stats[target_id] = stats
        for model in routes.models:
            if policy.counts_tokens or router.needs_estimate(model):
                await asyncio.to_thread(encoding_for_model, model)  # ~0.15 s for a new tokenizer
        authenticator = self.authenticator
        if config.auth_cache_seconds != self.config.auth_cache_seconds:
            authenticator = Authenticator(self.store, ttl=config.auth_cache_seconds)
        books = self._make_books(config)
        self._make_embedder(config)
        await self._start_embedder()  # the first that needs it: loads the embedding model off the loop
        self._make_semantic(self.cache, config)
        await self.cache.start()
        planner = self._make_planner(config, self.planner)
        if planner is not None:
            for model in planner.tokenizer_models:
                await asyncio.to_thread(encoding_for_model, model)  # the rules' tokenizer
            await planner.start()  # the examples embedded (those it adds) before it serves
        proxy = self._make_proxy(config, routes, authenticator, router, policy, books, planner)
        passthrough = Passthrough(proxy, config.passthrough.default_model)
        responses = Responses(proxy, config.passthrough.default_model, self.response_homes)
        admin = self._make_admin(config, authenticator, router)
        # From here on no await: a request sees the old set or the new one, never a mix.
        if (config.logging.format, config.logging.level) != (self.config.logging.format, self.config.logging.level):
            configure_logging(config.logging.format, config.logging.level)
        states.settings = config.router.breaker
        self.alerts.settings = config.alerts
        self.config, self.routes, self.policy, self.router = config, routes, policy, router
        self.authenticator, self.books, self.proxy, self.admin = authenticator, books, proxy, admin
        self.passthrough, self.responses = passthrough, responses
        self.planner = planner
        self._routes = self._route_table(proxy)
        return reload

    def _ask_supervisor(self) -> None:
        # A worker's parent is its supervisor, until the supervisor dies; the orphan's new parent
        # must not get the signal.
        if self._supervisor is None or os.getppid() != self._supervisor:
            raise ServiceUnavailableError(
                "This worker's supervisor is gone: the configuration cannot be reloaded.", code="supervisor_gone"
            )
        os.kill(self._supervisor, signal.SIGHUP)
        logger.info(
            "configuration file %s checked; the supervisor replaces the workers with it one by one",
            self.config_file,
        )

    async def _admin_reload(self) -> dict[str, Any]:
        try:
            reload = await self.reload()
        except ConfigError as exc:
            raise InvalidRequestError(
                f"The configuration was not reloaded: {one_line(str(exc))}", code="invalid_configuration"
            ) from None
        return {
            "object": "reload",
            "file": str(self.config_file),
            # A worker's supervisor replaces the workers after this answer; this process is one of them.
            "applied": "replacing workers" if self._supervisor is not None else "applied",
            **reload.to_dict(),
        }

    # -- handlers ---------------------------------------------------------------------------

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
            "team": principal.team,
            "tier": principal.tier,
            "model": model,
            "limits": entries,
        }

    async def _metrics(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        # Read at each scrape (a few a minute), so a reloaded configuration applies at once.
        settings = self.config.metrics
        if not settings.enabled:
            # As any unknown route: a public listener does not say that metrics exist.
            raise NotFoundError(f"Unknown route: GET {scope['path']}.", code="unknown_url")
        token = resolve_secret(settings.token, "metrics.token")
        if token is not None:
            scheme, _, given = (headers.authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise AuthenticationError(
                    "GET /metrics needs the metrics token: send 'Authorization: Bearer TOKEN'.",
                    code="invalid_metrics_token",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        text, content_type = self.metrics.exposition()
        await send_bytes(send, 200, text, [(b"content-type", content_type.encode())])

    def _gauges(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily  # imported at the first scrape

        queue = GaugeMetricFamily("quotagate_queue_depth", "Requests waiting for capacity on this node")
        queue.add_metric([], self.limiter.queue.waiting)
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

    async def _health(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        await send_json(send, 200, {"status": "ok"})

    async def _openapi(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        if self._openapi_json is None:
            self._openapi_json = openapi_json()  # built at the first ask: most gateways are never asked
        await send_bytes(send, 200, self._openapi_json, [JSON_CONTENT_TYPE])

    async def _ready(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        checks: dict[str, str] = {}
        checks["database"] = await _check(self.store.ping())
        if self.redis is not None:
            checks["redis"] = await _check(self.redis.check())
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
