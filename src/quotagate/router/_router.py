"""The router: retrying, backing off and falling back until a deployment answers a request.

The gateway absorbs what goes wrong upstream. ``Router.exchange`` walks the request's chain of
models (_chain: the model, its fallbacks, a context-window fallback); for each attempt it takes
a deployment with room for the request (_capacity: usable, in its model's strategy's order
(_strategies), admitted by its provider limits, or else after a wait in line, up to
``router.max_queue_wait`` or the tier's ``max_wait`` if longer, and only then the gateway's own
429) and makes one attempt at it (_attempt). ``Router.finish`` settles what the deployment
served once the answer has been relayed.

Failures that retrying can fix (429, 5xx, connection errors, timeouts, a stream that breaks
before its first byte) move the request to another deployment at once when one is usable, and
otherwise back off with full jitter, honouring Retry-After, within ``max_attempts`` and
``deadline_seconds``. When a model has nothing left, the next model of its chain is tried.
Errors that retrying cannot fix (400, 401, 403, 404, 422) are returned at once. Only the
failures that are the deployment's count towards its breaker (_blame).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..config import Config, RouterSettings, known_secrets
from ..errors import GatewayError, ServiceUnavailableError
from ..limits import Limiter, Usage
from ..upstream import ModelRoutes, Transport
from ._attempt import Attempts, Exchange
from ._blame import Suspect, judge
from ._capacity import Capacity, CapacityError
from ._chain import ModelChains
from ._request import RouteRequest
from ._state import DeploymentStates
from ._stats import DeploymentStats
from ._strategies import strategy_for

if TYPE_CHECKING:
    from ..tracing._otel import RequestTrace


class Router:
    """Sends each request to a deployment that answers it (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        routes: ModelRoutes,
        transport: Transport,
        limiter: Limiter,
        states: DeploymentStates,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.settings: RouterSettings = config.router
        self.routes = routes
        self.transport = transport
        self.limiter = limiter
        self.states = states
        self.stats: dict[str, DeploymentStats] = {t: DeploymentStats() for t in routes.by_id}
        self._rng = rng or random.Random()
        self._sleep = sleep
        # Scrubbed from what a provider's answer relays: the keys the deployments send and every
        # other secret of the configuration (the master key, the metrics token), which no
        # provider has any business echoing either.
        self.secrets = known_secrets(config)
        self._chains = ModelChains(routes)
        strategies = {name: strategy_for(model, self.stats, self._rng) for name, model in routes.models.items()}
        self._capacity = Capacity(routes, states, limiter, self.stats, strategies, sleep)
        self._attempts = Attempts(transport, states, self.stats, self.secrets, self.settings.default_cooldown_seconds)

    def needs_estimate(self, model: str) -> bool:
        """Whether routing this model needs the request's tokens (TPM limits, context windows)."""
        return self._chains.needs_estimate(model)

    async def exchange(self, model: str, request: RouteRequest, trace: RequestTrace | None = None) -> Exchange:
        """The answer of a deployment of ``model`` or of one of its fallbacks; else the last
        failure, or a ``CapacityError`` when no deployment had room or was usable. ``trace``: the
        request's, which gets a span for each attempt (None: tracing is off)."""
        settings = self.settings
        deadline = time.monotonic() + settings.deadline_seconds
        wait_until = min(deadline, time.monotonic() + max(settings.max_queue_wait, request.max_wait))
        attempts = 0
        tried: list[str] = []
        last_error: GatewayError | None = None
        capacity_wait: float | None = None
        if request.deployment is not None:
            chain = [model]  # only that deployment holds what the request is about
        elif request.models:
            chain = self._chains.through(request.models, request.estimate)
        else:
            chain = self._chains.chain(model, request.estimate)
        # Failures that may be the request's (see _blame), judged once its fate is known however
        # it ends: a client that leaves during a backoff must not take them along.
        suspects: list[Suspect] = []
        served = False
        try:
            for position, model_name in enumerate(chain):
                last_model = position == len(chain) - 1
                # The requested model is what the tenant was charged for already.
                tenant = request.tenant
                if (position or model_name != model) and tenant is not None and not await tenant.move_to(model_name):
                    continue
                failed: set[str] = set()
                while attempts < settings.max_attempts and time.monotonic() < deadline:
                    pick = await self._capacity.reserve(model_name, request, failed, wait_until)
                    target = pick.target
                    if target is None:
                        if pick.soonest is not None:
                            capacity_wait = pick.soonest if capacity_wait is None else min(capacity_wait, pick.soonest)
                        break  # nothing left in this model within the wait: fall back
                    attempts += 1
                    tried.append(target.id)
                    span = trace.attempt(target, attempts) if trace is not None else None
                    outcome = await self._attempts.run(target, pick.reservation, request)
                    if isinstance(outcome, Exchange):
                        outcome.attempts, outcome.tried = attempts, tried
                        served = True
                        return outcome  # its span ends with the relay (see RequestTrace.complete)
                    last_error = outcome.error
                    if outcome.unservable:
                        # Its API cannot take the request (embeddings of a Messages deployment, a
                        # PDF for an OpenAI one): another deployment's may, and no try was made.
                        if span is not None:
                            span.passed_over()  # not an attempt: no span, and its number is the next's
                        failed.add(target.id)
                        attempts -= 1
                        continue
                    if span is not None:
                        span.failed(outcome.error, outcome.retryable, outcome.status)
                    if outcome.suspect is not None:
                        suspects.append(outcome.suspect)
                    if not outcome.retryable:
                        # A deployment refused the request itself (4xx): what failed before was the
                        # request's doing too.
                        suspects.clear()
                        raise outcome.error
                    failed.add(target.id)
                    if not self._capacity.any_usable(model_name, failed, request.deployment):
                        if not last_model:
                            break  # a fallback model is better than the same deployment again
                        pause = outcome.wait if outcome.wait is not None else self._backoff(attempts)
                        if time.monotonic() + pause >= deadline:
                            break
                        await self._sleep(pause)
                        failed.discard(target.id)  # the only one left: try it again after the pause
                if attempts >= settings.max_attempts or time.monotonic() >= deadline:
                    break
        finally:
            if suspects:
                await judge(suspects, served, self.stats, self.states)
        if last_error is not None:
            raise last_error
        if request.deployment is not None and capacity_wait is None:
            raise ServiceUnavailableError(
                f"The deployment of `{model}` that holds what this request is about is unavailable, "
                "and no other deployment has it. Try again shortly.",
                code="deployment_unavailable",
            )
        retry = capacity_wait if capacity_wait is not None else settings.default_cooldown_seconds
        raise CapacityError(
            f"All deployments of `{model}` are at their provider limits or unavailable. Try again in {retry:.1f}s.",
            headers={
                "retry-after": str(max(1, math.ceil(retry))),
                "retry-after-ms": str(max(1, math.ceil(retry * 1000))),
            },
        )

    def _backoff(self, attempt: int) -> float:
        """Full jitter: a random pause up to the exponential backoff's ceiling for ``attempt``."""
        return self._rng.uniform(0, min(self.settings.backoff_cap, self.settings.backoff_base * 2 ** (attempt - 1)))

    async def finish(self, exchange: Exchange, ok: bool | None, used: Usage | None) -> None:
        """The response was relayed (True), broke off upstream (False), or the client left (None:
        no verdict on the deployment, whose breaker must not open because clients hang up).
        ``used``: the tokens the request used, settled on the deployment's limits (None: unknown)."""
        target = exchange.target
        stats = self.stats[target.id]
        if ok is None:
            stats.ended_without_verdict()
        else:
            stats.ended(failed=not ok, latency_ms=(time.monotonic() - exchange.started) * 1000.0)
            if not ok:
                # An answer that breaks once it has begun is the deployment's: the request was
                # accepted (an input that breaks a provider does so before it answers).
                await self.states.failure(target.id)
            else:
                stats.answered_at = time.monotonic()
                if self.states.needs_success_report(target.id):
                    await self.states.success(target.id)
        if exchange.reservation is not None and used is not None:
            await exchange.reservation.settle(used)
