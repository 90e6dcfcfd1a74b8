"""The proxy: one request through the stages, in DESIGN.md's order, each a unit of its own.

    surface in   Endpoint.parse               _validation: the OpenAI request, checked
    auth         Proxy.authenticate           auth/: the gateway key -> a principal
    policy       TenantCharge(...)            _tenant, policy/: which of the tenant's limits apply
    tokens       estimate_tokens              tokens/: prompt tokens + the most it may write
    limits       TenantCharge.admit           _tenant, limits/: one reservation over them all, or 429
    route        Router.exchange              router/: a deployment with room, retries, fallbacks
    upstream     UpstreamBodies, Transport    upstream/: the body each deployment is sent
    relay        relay_body, relay_stream     _relay: the answer to the client as it comes
    settle       Router.finish, .settle       the deployment's and the tenant's limits, exact
    account      Books.account                _books: the ledger row and metrics, once

Data flows forward: a later stage never calls back into an earlier one. The tenant's charge is
handed to the router as an object (``TenantCharge``) that a fallback to another model moves, and
the relay is handed what to do before the response's last byte (write the ledger row).
Requests go upstream as the client sent them, apart from what a deployment needs changed
(``UpstreamBodies``); streams are relayed event by event as they arrive, never buffered whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ..accounting import Price
from ..auth import Authenticator, Principal, extract_key
from ..errors import (
    GatewayError,
    NotFoundError,
    PermissionDeniedError,
)
from ..limits import Decision, Limiter, Usage
from ..policy import Policy
from ..router import Router, RouteRequest
from ..tokens import (
    ZERO,
    estimate_tokens,
)
from ..tokens._estimate import Kind
from ..upstream import ModelRoutes, Scrubber, UpstreamBodies
from ._asgi import (
    Receive,
    RequestHeaders,
    Scope,
    Send,
    read_body,
    request_id_headers,
)
from ._books import Books
from ._disconnect import DisconnectWatch, Watches
from ._ratelimit import rate_limit_error, ratelimit_headers
from ._record import RequestRecord, error_type
from ._relay import relay_body, relay_stream
from ._stream_usage import StreamUsage
from ._tenant import TenantCharge
from ._validation import ParsedRequest, parse_chat, parse_completion, parse_embedding


@dataclass(frozen=True, slots=True)
class Endpoint:
    upstream_path: str
    parse: Callable[[bytes], ParsedRequest]
    kind: Kind


CHAT = Endpoint("/chat/completions", parse_chat, "chat")
COMPLETIONS = Endpoint("/completions", parse_completion, "completion")
EMBEDDINGS = Endpoint("/embeddings", parse_embedding, "embedding")


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
        self._watches = Watches()
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
            refused = RequestRecord(request_id, headers.client_request_id, principal, model, stream, began)
            await self.books.account(refused, exc.status, error_type(exc))
            raise
        record = RequestRecord(request_id, headers.client_request_id, principal, request.model, request.stream, began)
        try:
            await self._handle(endpoint, receive, send, request, raw, principal, record)
        except GatewayError as exc:
            await self.books.account(record, exc.status, error_type(exc))
            raise
        except Exception:
            # A bug: the client gets a 500 (see _app), and the row says so rather than 499.
            await self.books.account(record, 500, "internal_error")
            raise
        finally:
            if not record.done:
                # The client left (or the task was cancelled): the row says so.
                await self.books.account(record, 499, "client_disconnected")

    async def _handle(
        self,
        endpoint: Endpoint,
        receive: Receive,
        send: Send,
        request: ParsedRequest,
        raw: bytes,
        principal: Principal,
        record: RequestRecord,
    ) -> None:
        books = self.books
        router = self.router
        model = request.model
        # policy: which of the tenant's limits apply to this model.
        tenant = record.tenant = TenantCharge(self.limiter, self.policy, principal, model, ZERO, self._price)
        applied = tenant.applied
        # tokens: estimated only where token or spend limits or a context window need it; the
        # ledger reads the provider's reported usage either way.
        needs_estimate = (applied is not None and applied.counts_tokens) or router.needs_estimate(model)
        estimate = ZERO
        if needs_estimate:
            estimate = tenant.estimate = estimate_tokens(
                endpoint.kind,
                request.body,
                model,
                self.expected_output_tokens,
                self.routes.models[model].context_window,
            )
        # limits: the estimate reserved on every applicable limit at once, or a 429.
        waited = time.perf_counter()
        reservation = await tenant.admit()
        if reservation is not None:
            books.metrics.wait.observe(time.perf_counter() - waited)
            self._note_decision(principal, reservation.decision)
            if not reservation.decision.allowed:
                raise rate_limit_error(reservation.decision, self._clock())

        # route and upstream: a deployment with room answers (retries, breakers, fallbacks).
        bodies = UpstreamBodies(
            request.body, raw, model, request.stream, counts_tokens=needs_estimate or books.ledger is not None
        )
        max_wait, priority = self.policy.shaping(principal) if self.policy is not None else (0.0, 0)
        route = RouteRequest(endpoint.upstream_path, bodies, request.stream, estimate, max_wait, priority, tenant)
        watch = record.watch = DisconnectWatch(receive, self._watches)
        try:
            try:
                exchange = await router.exchange(model, route)
                record.exchange = exchange
                record.upstream_answered = True
                served = exchange.target
                extra = request_id_headers(record.request_id, record.client_request_id)
                extra.append((b"x-quotagate-deployment", served.label_bytes))
                if tenant.reservation is not None:
                    extra.extend(ratelimit_headers(tenant.reservation.decision))
                # relay: the answer to the client as it comes (the ledger row is written before
                # its last byte: see _complete).
                outcome: bool | None = False
                try:
                    if exchange.streamed:
                        stream_usage = record.stream_usage = StreamUsage(
                            strip_usage_chunk=bodies.asked_for_usage(served)
                        )
                        outcome = await relay_stream(
                            exchange, send, extra, stream_usage, record, self._scrubber, self._complete
                        )
                    else:
                        await relay_body(exchange, send, extra, record, self._scrubber, self._complete)
                        outcome = True
                except asyncio.CancelledError:
                    # The client left: that says nothing about the deployment's health.
                    outcome = None
                    raise
                finally:
                    # settle (the deployment's side): its breaker's verdict and provider limits.
                    record.collect_stream_usage()
                    await router.finish(exchange, outcome, Usage(*record.actual()))
            except asyncio.CancelledError:
                if not watch.gone:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            # settle (the tenant's side): what the request used, however it ended.
            watch.stop()
            record.collect_stream_usage()
            if tenant.reservation is not None and self.limiter is not None:
                prompt, completion = record.actual()
                spent = self.books.cost(record, prompt, completion) if tenant.counts_spend else 0.0
                deltas = await tenant.settle(prompt, completion, spent)
                if books.alerts is not None:
                    # Quotas and budgets as the request left them, settled: what it used, not
                    # the most it could have used.
                    books.alerts.settled(principal, tenant.reservation.decision, deltas, self.limiter.status)

    async def _complete(self, record: RequestRecord, status: int, error_type: str | None) -> None:
        """The response's last message is next. From here on http.disconnect means the response
        is done, not that the client left: the watch must not cancel what follows (settling)."""
        if record.watch is not None:
            record.watch.stop()
        # The row is durable before the client has the whole response (see ledger).
        await self.books.account(record, status, error_type)

    def _note_decision(self, principal: Principal, decision: Decision) -> None:
        self.books.metrics.decision(decision.allowed, decision.denied_by.limit if decision.denied_by else None)
        if not decision.allowed and self.books.alerts is not None:
            self.books.alerts.refused(principal, decision)

    def _price(self, model: str) -> Price | None:
        names = [model, *(t.provider_model for t in self.routes.deployments(model))]
        return self.books.pricing.price_for(*names)
