"""The proxy: one request through the stages, in DESIGN.md's order, each a unit of its own.

    surface in   Endpoint.parse               _validation: the OpenAI (or Anthropic) request, checked
    auth         Proxy.authenticate           auth/: the gateway key -> a principal
    route plan   RoutePlanner.plan            tiering/: a routed model's request -> a class, a model
    policy       TenantCharge(...)            _tenant, policy/: which of the tenant's limits apply
    tokens       estimate_tokens              tokens/: prompt tokens + the most it may write
    cache        ResponseCache.lookup         cache/: an earlier answer to the same question
    limits       TenantCharge.admit           _tenant, limits/: one reservation over them all, or 429
    downgrade    Proxy._downgrade             tiering/: a cheaper model where a limit refuses (on_limit)
    route        Router.exchange              router/: a deployment with room, retries, fallbacks
    upstream     UpstreamBodies, Transport    upstream/: the body each deployment is sent
    relay        relay_body, relay_stream     _relay: the answer to the client as it comes
                 read_answer, stream_reader   _answers: usage read, translated to the client's API
    settle       Router.finish, .settle       the deployment's and the tenant's limits, exact
    account      Books.account                _books: the ledger row and metrics, once
    cache        ResponseCache.keep           cache/: the answer stored, after the client has it

A cache hit skips route, upstream and relay (``_answer_from_cache``): it is admitted and settled
on the tenant's request limits (and, as ``cache.hits_charge`` says, its tokens), answered from the
cache, and accounted with what it saved.

With tracing on (``tracer``), the request's ``RequestTrace`` records its span and, where the
cache, the limits and each upstream attempt have done their part, a child span of each (see
quotagate.tracing); off, ``trace`` is None and nothing is asked of it.

Data flows forward: a later stage never calls back into an earlier one. The tenant's charge is
handed to the router as an object (``TenantCharge``) that a fallback to another model moves, and
the relay is handed what to do before the response's last byte (write the ledger row).
Requests go upstream as the client sent them, apart from what a deployment needs changed
(``UpstreamBodies``); streams are relayed event by event as they arrive, never buffered whole.

Anthropic's Messages API (``MESSAGES``, served by ``_messages``) takes the same stages: the request
is checked as Anthropic's and read in its chat form by the stages that count and route, a
deployment that speaks the Messages API is sent the client's bytes and one that speaks OpenAI's
the chat form (``MessagesBodies``), and the answer comes back in Anthropic's form (``_answers``).
Likewise a chat request to a deployment that speaks the Messages API is translated both ways.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..accounting import Price
from ..auth import Authenticator, Principal, extract_key
from ..cache import (
    CacheHit,
    CacheRules,
    CacheTicket,
    ResponseCache,
    assemble_stream,
    read_controls,
    replay_as_stream,
    replayable,
)
from ..errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from ..limits import Decision, Limiter, Usage
from ..policy import Policy
from ..router import Router, RouteRequest
from ..tiering import Downgrades, RoutePlanner
from ..tokens import (
    ZERO,
    Estimate,
    estimate_tokens,
    usage_details,
)
from ..tokens._estimate import Kind
from ..upstream import DeploymentTarget, MessagesBodies, ModelRoutes, Scrubber, UpstreamBodies
from ._answers import ANTHROPIC, OPENAI, stream_reader
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
from ._azure import with_model
from ._books import Books
from ._disconnect import DisconnectWatch, Watches
from ._ratelimit import anthropic_ratelimit_headers, rate_limit_error, ratelimit_headers
from ._record import RequestRecord, error_type
from ._relay import SSE_HEADERS, Complete, relay_body, relay_stream
from ._tenant import TenantCharge
from ._validation import ParsedRequest, parse_chat, parse_completion, parse_embedding, parse_messages

if TYPE_CHECKING:
    from ..tracing._otel import RequestTrace, Tracing


@dataclass(frozen=True, slots=True)
class Endpoint:
    upstream_path: str
    parse: Callable[[bytes], ParsedRequest]
    kind: Kind
    api: str = OPENAI  # the API the client speaks: its errors, headers and answers are in its form


CHAT = Endpoint("/chat/completions", parse_chat, "chat")
COMPLETIONS = Endpoint("/completions", parse_completion, "completion")
EMBEDDINGS = Endpoint("/embeddings", parse_embedding, "embedding")
MESSAGES = Endpoint("/messages", parse_messages, "chat", ANTHROPIC)


logger = logging.getLogger("quotagate.cache")

# qg_usage.model_requested is VARCHAR(200): PostgreSQL refuses a longer value, and with it the
# whole batch of rows it came in. The name a client asks for is the client's to choose.
_MODEL_CHARS = 200


# x-quotagate-downgrade's values: off (the 429, never a cheaper model), on (the default).
_DOWNGRADE_HEADER = {
    "off": False,
    "false": False,
    "no": False,
    "0": False,
    "on": True,
    "true": True,
    "yes": True,
    "1": True,
}


def _downgrades_allowed(value: str | None) -> bool:
    if value is None:
        return True
    allowed = _DOWNGRADE_HEADER.get(value)
    if allowed is None:
        raise InvalidRequestError("The x-quotagate-downgrade header must be on or off.", param="x-quotagate-downgrade")
    return allowed


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
        cache: ResponseCache | None = None,
        cache_rules: CacheRules | None = None,
        hits_charge: str = "requests",
        planner: RoutePlanner | None = None,
        downgrades: Downgrades | None = None,
        tracer: Tracing | None = None,
    ) -> None:
        self.books = books or Books()
        # None: tracing is off, and no stage asks anything of it (see quotagate.tracing).
        self.tracer = tracer
        self.planner = planner
        self.downgrades = downgrades if downgrades is not None and downgrades.configured else None
        self.cache = cache
        self.cache_rules = cache_rules
        # "tokens": a hit is charged its answer's tokens and cost on the tenant's limits too.
        self.hits_charge_tokens = hits_charge == "tokens"
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
        *,
        model: str | None = None,
    ) -> None:
        """One request for ``endpoint``; ``model``: the model its URL names (Azure's clients' path
        names the deployment), which the body is made to name too."""
        began = time.perf_counter()
        # Authenticate before reading the body: an anonymous client cannot make the gateway
        # buffer up to max_body_bytes.
        principal = await self.authenticate(headers)
        # From here on the request is a tenant's, and every way it ends leaves its ledger row.
        raw = b""
        request: ParsedRequest | None = None
        try:
            raw = await read_body(receive, headers.content_length, self.max_body_bytes, scope)
            if model is not None:
                raw = with_model(raw, model)
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
        # Tracing's calls never raise (see quotagate.tracing): a failure there is logged, and the
        # request is served and accounted as ever.
        trace = None
        if self.tracer is not None:
            trace = self.tracer.request(endpoint.kind, scope, record, request.body, self.complete)
        # However the request ends, complete writes its row (once), and a trace notes it too.
        complete = self.complete if trace is None else trace.complete
        try:
            await self._handle(endpoint, receive, send, headers, request, raw, principal, record, complete, trace)
        except GatewayError as exc:
            await complete(record, exc.status, error_type(exc))
            raise
        except Exception:
            # A bug: the client gets a 500 (see _app), and the row says so rather than 499.
            await complete(record, 500, "internal_error")
            raise
        finally:
            try:
                if not record.done:
                    # The client left (or the task was cancelled): the row says so.
                    await complete(record, 499, "client_disconnected")
            finally:
                if trace is not None:  # its span ends however the row's writing went
                    trace.end(record, self.books)

    async def _handle(
        self,
        endpoint: Endpoint,
        receive: Receive,
        send: Send,
        headers: RequestHeaders,
        request: ParsedRequest,
        raw: bytes,
        principal: Principal,
        record: RequestRecord,
        complete: Complete,
        trace: RequestTrace | None,
    ) -> None:
        books = self.books
        router = self.router
        model = request.model
        # The cheaper models this request may be served by instead of a 429 (None: none).
        downgrades = self.downgrades if _downgrades_allowed(headers.downgrade) else None
        chat = endpoint.kind == "chat"
        # route plan: a routed model's request gets a class, and is charged to its model.
        plan = None
        if self.planner is not None and self.planner.routes(model):
            if not chat:
                raise InvalidRequestError(
                    f"`{model}` is a routed model: it serves chat completions only.", param="model"
                )
            plan = record.route = await self.planner.plan(model, request.body, principal)
            model = plan.model
            record.baseline_price = self.price_of(plan.strongest)
        # policy: which of the tenant's limits apply to this model.
        tenant = record.tenant = TenantCharge(self.limiter, self.policy, principal, model, ZERO, self.price_of)
        applied = tenant.applied
        # tokens: estimated only where token or spend limits or a context window need it; the
        # ledger reads the provider's reported usage either way.
        # A request that may be downgraded is estimated too: the cheaper model's limits may count
        # tokens where the asked one's do not.
        # A routed request, or one that may be downgraded, is estimated too: a stronger class's or
        # a cheaper model's limits may count tokens where this model's do not. Its output is not
        # capped at this model's context window: whether the request fits is what moves it up.
        needs_estimate = (
            plan is not None
            or (applied is not None and applied.counts_tokens)
            or router.needs_estimate(model)
            or (downgrades is not None and downgrades.first(principal.tier, model, chat) is not None)
        )
        estimate = ZERO
        if needs_estimate:
            estimate = tenant.estimate = estimate_tokens(
                endpoint.kind,
                request.body,
                model,
                self.expected_output_tokens,
                self.routes.models[model].context_window if plan is None else None,
            )
        body = request.body
        if "cache" in body and request.messages is None:
            # The cache's controls as LiteLLM clients send them: the gateway's, not the provider's.
            body = {name: value for name, value in body.items() if name != "cache"}
            raw = orjson.dumps(body)
        # cache: an earlier answer to the same question, before anything is charged.
        ticket = self._cache_ticket(endpoint, headers, request, principal, model)
        if ticket is not None:
            assert self.cache is not None
            if plan is not None and plan.vector is not None and plan.text == ticket.question:
                ticket.vector = plan.vector  # the classifier embedded the same question: once is enough
            looked = time.perf_counter() if trace is not None else 0.0  # when the cache span began
            hit = await self.cache.lookup(ticket)
            if trace is not None:
                trace.cache(looked, ticket, hit)
            if hit is not None:
                may_downgrade = downgrades is not None and downgrades.first(principal.tier, model, chat) is not None
                if await self._answer_from_cache(hit, send, request, record, may_downgrade, complete, trace):
                    return
                tenant.estimate = estimate  # refused, where a miss may be downgraded: go on as one
            books.metrics.cache(model, "miss", 0.0)
        # limits: the estimate reserved on every applicable limit at once, or a 429.
        waited = time.perf_counter()
        reservation = await tenant.admit()
        if reservation is not None:
            books.metrics.wait.observe(time.perf_counter() - waited)
            decision = reservation.decision
            if downgrades is not None:
                # downgrade: a cheaper model instead of this refusal, or of a budget nearly spent.
                try:
                    decision = await self._downgrade(downgrades, record, decision, chat)
                except BaseException:
                    await tenant.settle(0, 0)  # the limit store failed, or the client left: give it all back
                    raise
            self.note_decision(principal, decision)
            if trace is not None:
                trace.limits(waited, decision, record)
            if not decision.allowed:
                raise rate_limit_error(decision, self._clock())

        # route and upstream: a deployment with room answers (retries, breakers, fallbacks).
        bodies: UpstreamBodies
        if request.messages is not None:
            bodies = MessagesBodies(
                request.messages,
                raw,
                body,
                request.model,
                request.stream,
                headers.anthropic or {},
                request.untranslatable,
            )
        else:
            counts_tokens = needs_estimate or books.ledger is not None
            bodies = UpstreamBodies(body, raw, request.model, request.stream, counts_tokens, chat=chat)
        max_wait, priority = self.policy.shaping(principal) if self.policy is not None else (0.0, 0)
        route = RouteRequest(
            endpoint.upstream_path,
            bodies,
            request.stream,
            estimate,
            max_wait,
            priority,
            tenant,
            models=plan.models if plan is not None and record.downgraded_from is None else None,
        )
        watch = record.watch = DisconnectWatch(receive, self._watches)
        try:
            try:
                exchange = await router.exchange(tenant.model, route, trace)
                record.exchange = exchange
                record.upstream_answered = True
                served = exchange.target
                extra = request_id_headers(record.request_id, record.client_request_id)
                extra.append((b"x-quotagate-deployment", served.label_bytes))
                if record.tiered:
                    extra.append((b"x-quotagate-route", record.route_header(served.model)))
                if ticket is not None:
                    extra.append((b"x-quotagate-cache", b"miss"))
                if tenant.reservation is not None:
                    extra.extend(self._ratelimit_headers(endpoint, tenant.reservation.decision))
                # relay: the answer to the client as it comes, in the client's API (the ledger row
                # is written before its last byte: see complete).
                outcome: bool | None = False
                try:
                    if exchange.streamed:
                        stream_usage = record.stream_usage = stream_reader(
                            endpoint.api,
                            served,
                            body,
                            self._prompt_estimate(endpoint, served, body, estimate),
                            strip_usage_chunk=bodies.asked_for_usage(served),
                            keep_events=ticket is not None and ticket.controls.store,
                        )
                        outcome = await relay_stream(
                            exchange, send, extra, stream_usage, record, self._scrubber, complete
                        )
                    else:
                        await relay_body(exchange, send, extra, record, self._scrubber, complete, endpoint.api)
                        outcome = True
                    if ticket is not None and outcome and exchange.response.status == 200:
                        try:
                            self._keep(ticket, record, body)
                        except Exception:  # the client has its answer: a bug here only loses the entry
                            logger.exception("the response cache could not keep an answer")
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
            watch.stop()
            await self.settle(record)

    def _cache_ticket(
        self, endpoint: Endpoint, headers: RequestHeaders, request: ParsedRequest, principal: Principal, model: str
    ) -> CacheTicket | None:
        """Where the request's answer is looked up and kept, if a rule (of the model asked for)
        caches it: under ``model``, the one planned to serve it (a routed model's class's model:
        two tenants whose rules class the same question differently never share an answer). A
        streamed completion (not chat) is not cached: its cached form would be replayed as one;
        nor is a Messages request (the cache keeps and replays OpenAI's answers)."""
        if self.cache is None or self.cache_rules is None or (request.stream and endpoint.kind != "chat"):
            return None
        if endpoint.api != OPENAI:
            return None
        rule = self.cache_rules.rule_for(principal.tier, request.model)
        if rule is None:
            return None
        controls = read_controls(headers.cache_control, headers.cache_ttl, request.body)
        return self.cache.ticket(
            rule,
            controls,
            principal.key_id,
            principal.user,
            principal.tier,
            request.body,
            model,
            semantic_kind=endpoint.kind == "chat",
        )

    async def _answer_from_cache(
        self,
        hit: CacheHit,
        send: Send,
        request: ParsedRequest,
        record: RequestRecord,
        may_downgrade: bool,
        complete: Complete,
        trace: RequestTrace | None,
    ) -> bool:
        """Answer from the cache: charged on the tenant's request limits (its tokens too, where
        ``hits_charge`` says so), accounted with the cost the answer saved. False, nothing
        answered or charged, when the limits refuse it and ``may_downgrade``: the request goes on
        as a miss, which a cheaper model may serve."""
        tenant = record.tenant
        assert tenant is not None
        response = hit.response
        used = usage_details(response) or (0, 0, 0)
        tenant.estimate = Estimate(used[0], used[1]) if self.hits_charge_tokens else ZERO
        waited = time.perf_counter()
        reservation = await tenant.admit()
        if reservation is not None and not reservation.decision.allowed and may_downgrade:
            return False
        if reservation is not None:
            self.note_decision(record.principal, reservation.decision)
            if trace is not None:
                trace.limits(waited, reservation.decision, record)
            if not reservation.decision.allowed:
                raise rate_limit_error(reservation.decision, self._clock())
        # Only now: a refused request's row says it was refused, not answered from the cache.
        record.cache_hit = hit
        record.cache_saved_usd = hit.cost_usd
        try:
            extra = request_id_headers(record.request_id, record.client_request_id)
            extra.append((b"x-quotagate-cache", hit.kind.encode()))
            if hit.similarity is not None:
                extra.append((b"x-quotagate-cache-similarity", f"{hit.similarity:.4f}".encode()))
            if record.tiered:
                extra.append((b"x-quotagate-route", record.route_header(record.charged_model)))
            if reservation is not None:
                extra.extend(ratelimit_headers(reservation.decision))
            self.books.metrics.cache(record.charged_model, hit.kind, record.cache_saved_usd)
            await complete(record, 200, None)
            if request.stream:
                options = request.body.get("stream_options")
                include_usage = isinstance(options, dict) and options.get("include_usage") is True
                events = replay_as_stream(response, include_usage)
                await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *extra]})
                await send({"type": "http.response.body", "body": events, "more_body": False})
            else:
                await send_bytes(send, 200, orjson.dumps(response), [JSON_CONTENT_TYPE, *extra])
        finally:
            if tenant.reservation is not None:
                charged = self.hits_charge_tokens and tenant.counts_spend
                await tenant.settle(*tenant.estimate, record.cache_saved_usd if charged else 0.0)
        return True

    def _keep(self, ticket: CacheTicket, record: RequestRecord, body: dict[str, object]) -> None:
        """Hand a complete answer to the cache (which stores it in the background); never an
        error, a stream that broke off, fewer choices than asked for, one with a secret in it, or
        a fallback's, a stronger class's or a downgrade's (the next request may find the model it
        was meant for up again, or within its limits)."""
        assert self.cache is not None
        planned = record.route.model if record.route is not None else record.model
        if record.charged_model != planned or record.downgraded_from is not None:
            return
        response = record.answer
        if record.stream_usage is not None and record.stream_usage.events is not None:
            response = assemble_stream(bytes(record.stream_usage.events))
        if not isinstance(response, dict) or "error" in response:
            return
        choices = response.get("choices")
        if choices is not None:
            asked = body.get("n")
            if not isinstance(choices, list) or len(choices) != (asked if isinstance(asked, int) else 1):
                return
            if any(not isinstance(choice, dict) or choice.get("finish_reason") is None for choice in choices):
                return
            if not replayable(response):
                return  # it holds what its stream form could not replay (logprobs, audio ...)
        elif not isinstance(response.get("data"), list):
            return  # an embeddings answer is its data; anything else is not an answer to keep
        if self._scrubber.secrets:
            as_sent = orjson.dumps(response)
            if self._scrubber.body(as_sent) != as_sent:
                return
        record.collect_stream_usage()
        self.cache.keep(ticket, response, self.books.cost(record, *record.actual()))

    async def _downgrade(
        self, downgrades: Downgrades, record: RequestRecord, decision: Decision, chat: bool
    ) -> Decision:
        """The tenant's decision after an ``on_limit`` downgrade: a refused request moved to the
        cheaper model, if that model's limits admit it (else the next downgrade's, else the
        refusal); an admitted one moved too once a budget it is charged to is ``at_budget`` used.
        A cheaper model the key may not use, or one held to the limit that refused, is passed over
        (moving to it could not help, and would cost the limit store a call)."""
        tenant = record.tenant
        assert tenant is not None
        principal, asked = record.principal, tenant.model
        refused_by = decision.denied_by.limit if decision.denied_by is not None else None
        if decision.allowed:
            on_limit = downgrades.at_budget(principal.tier, asked, chat)
            if on_limit is None or on_limit.at_budget is None:
                return decision
            used = tenant.budget_used()
            if used < on_limit.at_budget:
                return decision
            reason = f"budget {used:.0%} used"
        else:
            on_limit = downgrades.first(principal.tier, asked, chat)
            reason = refused_by.label if refused_by is not None else "limit"
        tried = {asked}
        while on_limit is not None and on_limit.downgrade not in tried:
            target = on_limit.downgrade
            tried.add(target)
            usable = principal.may_use(target) and (refused_by is None or not tenant.held_to(target, refused_by))
            if usable and await tenant.move_to(target):
                record.downgraded_from, record.downgrade_reason = asked, reason
                if record.route is None:
                    record.baseline_price = self.price_of(asked)
                assert tenant.reservation is not None
                return tenant.reservation.decision
            on_limit = downgrades.following(target)
        return decision

    async def settle(self, record: RequestRecord) -> None:
        """settle (the tenant's side): what the request used, however it ended, and the alerts
        its quotas and budgets call for."""
        record.collect_stream_usage()
        tenant = record.tenant
        if tenant is None or tenant.reservation is None or self.limiter is None:
            return
        prompt, completion = record.actual()
        spent = self.books.cost(record, prompt, completion) if tenant.counts_spend else 0.0
        deltas = await tenant.settle(prompt, completion, spent)
        if self.books.alerts is not None:
            # Quotas and budgets as the request left them, settled: what it used, not the most it
            # could have used.
            self.books.alerts.settled(record.principal, tenant.reservation.decision, deltas, self.limiter.status)

    async def complete(self, record: RequestRecord, status: int, error_type: str | None) -> None:
        """The response's last message is next. From here on http.disconnect means the response
        is done, not that the client left: the watch must not cancel what follows (settling)."""
        if record.watch is not None:
            record.watch.stop()
        # The row is durable before the client has the whole response (see ledger).
        await self.books.account(record, status, error_type)

    def note_decision(self, principal: Principal, decision: Decision) -> None:
        self.books.metrics.decision(decision.allowed, decision.denied_by.limit if decision.denied_by else None)
        if not decision.allowed and self.books.alerts is not None:
            self.books.alerts.refused(principal, decision)

    @staticmethod
    def _prompt_estimate(endpoint: Endpoint, served: DeploymentTarget, body: dict[str, Any], estimate: Estimate) -> int:
        """The prompt's tokens as estimated, for a Messages stream translated from OpenAI's, whose
        message_start says them before the provider has: counted now if no stage needed them (a
        Claude Code prompt is ~150k tokens, ~19 ms to count: not for every request)."""
        if estimate.prompt or endpoint.api != ANTHROPIC or served.api == ANTHROPIC:
            return estimate.prompt
        return estimate_tokens("chat", body, served.model, 0, None).prompt

    def _ratelimit_headers(self, endpoint: Endpoint, decision: Decision) -> list[tuple[bytes, bytes]]:
        """The tenant's limits as the client's API names them."""
        if endpoint.api == ANTHROPIC:
            return anthropic_ratelimit_headers(decision, self._clock())
        return ratelimit_headers(decision)

    def price_of(self, model: str) -> Price | None:
        names = [model, *(t.provider_model for t in self.routes.deployments(model))]
        return self.books.pricing.price_for(*names)
