"""Choosing a deployment, retrying, falling back: the gateway absorbs what goes wrong upstream.

For each attempt the router takes the best priority group that has a usable deployment
(breaker not open, not cooling down after a provider 429, not failed already in this request),
orders it by the model's strategy, and sends the request to the first deployment whose own
provider limits (RPM/TPM, in the limit engine) admit it. So the gateway never sends a provider
more than its limits allow: when no deployment admits, the request waits in line for whichever
frees up first (up to ``router.max_queue_wait``, or its tier's ``max_wait`` if longer) and only
then gets the gateway's own 429.

Failures that retrying can fix (429, 5xx, connection errors, timeouts, a stream that breaks
before its first byte) move the request to another deployment at once when one is usable, and
otherwise back off with full jitter, honouring Retry-After, within ``max_attempts`` and
``deadline_seconds``. When a model has nothing left, the next model of its fallback chain is
tried. Errors that retrying cannot fix (400, 401, 403, 404, 422) are returned at once.

Breakers are shared by every tenant, so they count only what says something about the
deployment. A connection that cannot be made, a timeout, and a 5xx other than 500 (502, 503,
504, 529: a provider down or overloaded, whatever it was asked) are the deployment's at once. A
500, or a connection the deployment closes once it has the request, may be the request's (an
input that crashes the provider): such a failure is held until the request's fate shows whose
it was. It is the deployment's when the request is then served (here or elsewhere: it was
servable), or when neither it nor another deployment that failed the request the same way has
answered anyone lately (an outage, however many deployments it takes down). It is the
request's when the request then gets a 4xx, or failed the same way on a deployment that is
answering others. A request that ends otherwise (its client left, the gateway stops) leaves its
failures judged as not served.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ..config import Config, RouterSettings, known_secrets
from ..errors import GatewayError, UpstreamError, UpstreamStatusError, UpstreamTimeoutError
from ..limits import Decision, Limiter, StoreUnavailableError, Unit
from ..tokens import Estimate
from ..upstream import (
    DeploymentTarget,
    ModelRoutes,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
    upstream_status_error,
)
from ..upstream._http import ConnectFailed, ConnectTimeout, ResponseTooLarge
from ._state import STATE_NAMES, DeploymentStates

_NOT_RETRYABLE = {400, 401, 403, 404, 413, 422}
_PROVIDER_RATELIMIT_HEADERS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_EWMA = 0.2
_REQUESTS = Unit.REQUESTS  # a global: through the enum's class it is a slow lookup
# A deployment that answered a request this recently (before a failure, or since) is up: a
# failure that may be the request's is then the request's.
_ANSWERING_SECONDS = 2.0
# The upstream clients' errors of a connection that was never made (the request was not sent).
_CONNECT_ERRORS = (ConnectFailed, ConnectTimeout)


def _never_sent(exc: BaseException) -> bool:
    """The request failed before it reached the deployment (no connection): not the request's."""
    cause = exc.__cause__
    if isinstance(cause, _CONNECT_ERRORS):
        return True
    # aiohttp's (by name: importing aiohttp only for this would load it where it is unused).
    return cause is not None and any(
        kind.__name__ == "ClientConnectorError" and kind.__module__.startswith("aiohttp")
        for kind in type(cause).__mro__
    )


@dataclass(slots=True)
class _Suspect:
    """A failure that may be the request's rather than the deployment's, held for its verdict."""

    target: DeploymentTarget
    started: float  # when the attempt began (time.monotonic())
    kind: str  # how it failed ("dropped", "status 500"): alike where others are served, the request's


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration ("1s", "6m0s", "20ms") or a plain number of seconds."""
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, matched = 0.0, False
    for number, unit in _DURATION_PART.findall(text):
        matched = True
        total += float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if matched else None


def retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


@dataclass
class DeploymentStats:
    """What this node has seen of a deployment: for the strategies and /admin/deployments."""

    in_flight: int = 0
    latency_ms: float | None = None
    error_rate: float = 0.0
    remaining_fraction: float = 1.0
    requests: int = 0
    failures: int = 0
    answered_at: float = -math.inf  # time.monotonic() of its last answer that was not a failure


@dataclass(slots=True)
class Exchange:
    """A deployment that answered: its response head, and for event streams the first chunk;
    any other answer has been read whole (``response.read()`` returns it at once)."""

    target: DeploymentTarget
    response: UpstreamResponse
    decision: Decision | None
    costs: list[int]
    started: float
    streamed: bool  # an event stream, relayed event by event (asked for, and answered as one)
    first_chunk: bytes = b""
    attempts: int = 1
    tried: list[str] | None = None  # deployment ids tried, in order


class RouteRequest:
    """What the router needs from the proxy for one request."""

    def __init__(
        self,
        path: str,
        body_for: Callable[[DeploymentTarget], bytes],
        stream: bool,
        estimate: Estimate,
        max_wait: float,
        priority: int,
        switch_model: Callable[[str], Awaitable[bool]],
    ) -> None:
        self.path = path
        self.body_for = body_for
        self.stream = stream
        self.estimate = estimate
        self.max_wait = max_wait
        self.priority = priority
        self.switch_model = switch_model


class CapacityError(GatewayError):
    """The gateway's own 429: every deployment is at its provider limits."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class Router:
    def needs_estimate(self, model: str) -> bool:
        """Whether routing this model needs the request's tokens (TPM limits, context windows)."""
        return self._needs_estimate.get(model, False)

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
        self._needs_estimate: dict[str, bool] = {}
        self._credit: dict[str, float] = {}  # smooth weighted round-robin's running credit per deployment
        # The name of each model's line of requests waiting for its deployments (see _reserve).
        # Limit keys begin with "{": no line is shared with the limiter's.
        self._lines = {model: "deployments of " + model for model in routes.models}
        # The chain of a model without a context-window fallback never depends on the request.
        self._fixed_chains: dict[str, list[str]] = {
            model: self._chain_from(model)
            for model, config in routes.models.items()
            if not config.context_window_fallback
        }
        for model in routes.models:
            chain = [model, *routes.models[model].fallbacks]
            long_context = routes.models[model].context_window_fallback
            if long_context:
                chain.append(long_context)
            self._needs_estimate[model] = routes.models[model].context_window is not None or any(
                limit.unit is not Unit.REQUESTS
                for name in chain
                for t in routes.deployments(name)
                for limit in t.limits
            )

    # -- the model chain ------------------------------------------------------------------------

    def chain(self, model: str, estimate: Estimate) -> list[str]:
        """The models to try in order: the context-window fallback first when the request is too
        long for the model, then the model and its fallbacks."""
        fixed = self._fixed_chains.get(model)
        if fixed is not None:
            return fixed
        config = self.routes.models[model]
        if (
            config.context_window is not None
            and config.context_window_fallback is not None
            and estimate.prompt + estimate.output > config.context_window
        ):
            return self._chain_from(config.context_window_fallback)
        return self._chain_from(model)

    def _chain_from(self, start: str) -> list[str]:
        chain = [start, *self.routes.models[start].fallbacks]
        seen: set[str] = set()
        return [m for m in chain if not (m in seen or seen.add(m))]  # type: ignore[func-returns-value]

    # -- choosing ---------------------------------------------------------------------------------

    def _ordered(self, model: str, candidates: list[DeploymentTarget]) -> list[DeploymentTarget]:
        if len(candidates) == 1:
            return candidates
        strategy = self.routes.models[model].routing
        if strategy == "least-busy":
            return sorted(candidates, key=lambda t: (self.stats[t.id].in_flight, self._rng.random()))
        if strategy == "usage-based":
            return sorted(candidates, key=lambda t: (-self.stats[t.id].remaining_fraction, self._rng.random()))
        if strategy == "latency-based":
            return sorted(candidates, key=lambda t: (self.stats[t.id].latency_ms or 0.0, self._rng.random()))
        # weighted: smooth weighted round-robin (nginx's). Over any run of requests each deployment
        # gets its share to within one request, where a weighted random pick drifts by the square
        # root of the count: with two deployments at the same provider limits, a random split
        # left one at its limit (requests waiting) while the other had room.
        credit = self._credit
        return sorted(candidates, key=lambda t: -(credit.get(t.id, 0.0) + t.weight))

    def _chosen(self, model: str, group: list[DeploymentTarget], target: DeploymentTarget) -> None:
        """Smooth weighted round-robin's step, taken only for a pick that served: every deployment
        of the group gains its weight, and the one chosen pays the group's total. (Looks at a
        group whose deployments all refused change nothing.)"""
        if len(group) > 1 and self.routes.models[model].routing == "weighted":
            credit = self._credit
            total = 0.0
            for member in group:
                credit[member.id] = credit.get(member.id, 0.0) + member.weight
                total += member.weight
            credit[target.id] -= total

    def _costs(self, target: DeploymentTarget, estimate: Estimate) -> list[int]:
        return [1 if limit.unit is _REQUESTS else estimate.total for limit in target.limits]

    async def _pick(
        self, model: str, request: RouteRequest, failed: set[str]
    ) -> tuple[DeploymentTarget | None, Decision | None, list[int], float | None]:
        """A deployment that admits the request now; else (None, None, [], seconds until one may,
        or None when none of the model's deployments is usable or ever could take the request)."""
        states = self.states
        targets = self.routes.deployments(model)
        if len(targets) == 1 and not failed:
            # One deployment, nothing tried yet: the common case, without the ordering below.
            target = targets[0]
            if not target.limits and states.usable_now(target.id):
                return target, None, [], None
        soonest: float | None = None
        by_priority: dict[int, list[DeploymentTarget]] = {}
        for target in targets:
            if target.id in failed:
                continue
            usable = states.usable_now(target.id)  # a fresh view answers without a round trip
            if usable is None:
                usable = await states.usable(target.id)
            if not usable:
                # Cooling down after a provider 429 is worth waiting for; an open breaker is not:
                # its model's fallbacks are tried instead.
                left = self.states.cached(target.id).cooldown_until - time.monotonic()
                if left > 0:
                    soonest = left if soonest is None else min(soonest, left)
                continue
            by_priority.setdefault(target.priority, []).append(target)
        for priority in sorted(by_priority):
            group = by_priority[priority]
            for target in self._ordered(model, group):
                costs = self._costs(target, request.estimate)
                if not target.limits:
                    self._chosen(model, group, target)
                    return target, None, costs, None
                decision = await self.limiter.acquire(target.limits, costs)
                if decision.allowed:
                    self._chosen(model, group, target)
                    self._note_remaining(target, decision)
                    return target, decision, costs, None
                if not decision.never_fits:
                    soonest = decision.retry_after if soonest is None else min(soonest, decision.retry_after)
        return None, None, [], soonest

    async def _reserve(
        self, model: str, request: RouteRequest, failed: set[str], until: float
    ) -> tuple[DeploymentTarget | None, Decision | None, list[int], float | None]:
        """A deployment with room for the request: at once, or after waiting in line for whichever
        of the model's deployments frees up first, until ``until``. Else (None, ..., seconds until
        one may, or None when none is usable).

        A provider's limits are the gateway's business: the tenant's limits admitted this request
        already, so it waits for a deployment rather than being refused. Requests waiting for a
        model on this node form one line (higher tiers first, then first come first served); its
        head looks at every usable deployment whenever the soonest of them said it would have
        room, and wakes the next one when it leaves. A request that arrives while others wait
        goes behind them rather than take the capacity that is coming back for them.
        """
        queue = self.limiter.queue
        line = self._lines[model]
        soonest: float | None = None  # when the last look said a deployment would have room
        if not queue.has_line(line):
            picked = await self._pick(model, request, failed)
            soonest = picked[3]
            if picked[0] is not None or soonest is None or time.monotonic() + soonest > until:
                return picked
        if queue.full:
            self.limiter.stats.queue_full += 1
            return None, None, [], soonest
        me = queue.join(line, request.priority)
        try:
            while await queue.wait_turn(line, me, until):
                if soonest is not None:
                    # At the head: wait for the room the last look promised, then look again.
                    if time.monotonic() + soonest > until:
                        return None, None, [], soonest
                    await self._sleep(soonest)
                    soonest = None
                    if not queue.is_head(line, me):
                        continue  # a higher tier arrived meanwhile: after it
                target, decision, costs, soonest = await self._pick(model, request, failed)
                if target is not None or soonest is None:
                    return target, decision, costs, soonest
            # The wait is over, behind others: one last look, which also tells the client honestly
            # when to come back.
            return await self._pick(model, request, failed)
        finally:
            queue.leave(line, me)

    def _note_remaining(self, target: DeploymentTarget, decision: Decision) -> None:
        fractions = [s.remaining / s.limit.capacity for s in decision.statuses if s.limit.capacity]
        if fractions:
            self.stats[target.id].remaining_fraction = min(fractions)

    # -- the attempts -----------------------------------------------------------------------------

    async def exchange(self, model: str, request: RouteRequest) -> Exchange:
        settings = self.settings
        deadline = time.monotonic() + settings.deadline_seconds
        wait_until = min(deadline, time.monotonic() + max(settings.max_queue_wait, request.max_wait))
        attempts = 0
        tried: list[str] = []
        last_error: GatewayError | None = None
        capacity_wait: float | None = None
        chain = self.chain(model, request.estimate)
        # Failures that may be the request's (see the module's docstring), judged once its fate is
        # known however it ends: a client that leaves during a backoff must not take them along.
        suspects: list[_Suspect] = []
        served = False
        try:
            for position, model_name in enumerate(chain):
                last_model = position == len(chain) - 1
                # The requested model is what the tenant was charged for already.
                if (position or model_name != model) and not await request.switch_model(model_name):
                    continue
                failed: set[str] = set()
                while attempts < settings.max_attempts and time.monotonic() < deadline:
                    target, decision, costs, soonest = await self._reserve(model_name, request, failed, wait_until)
                    if target is None:
                        if soonest is not None:
                            capacity_wait = soonest if capacity_wait is None else min(capacity_wait, soonest)
                        break  # nothing left in this model within the wait: fall back
                    attempts += 1
                    tried.append(target.id)
                    outcome = await self._attempt(target, decision, costs, request)
                    if isinstance(outcome, Exchange):
                        outcome.attempts, outcome.tried = attempts, tried
                        served = True
                        return outcome
                    error, retryable, wait, suspect = outcome
                    last_error = error
                    if suspect is not None:
                        suspects.append(suspect)
                    if not retryable:
                        # A deployment refused the request itself (4xx): what failed before was the
                        # request's doing too.
                        suspects.clear()
                        raise error
                    failed.add(target.id)
                    if not self._has_other(model_name, failed):
                        if not last_model:
                            break  # a fallback model is better than the same deployment again
                        pause = wait if wait is not None else self._backoff(attempts)
                        if time.monotonic() + pause >= deadline:
                            break
                        await self._sleep(pause)
                        failed.discard(target.id)  # the only one left: try it again after the pause
                if attempts >= settings.max_attempts or time.monotonic() >= deadline:
                    break
        finally:
            if suspects:
                await self._judge(suspects, served)
        if last_error is not None:
            raise last_error
        retry = capacity_wait if capacity_wait is not None else self.settings.default_cooldown_seconds
        raise CapacityError(
            f"All deployments of `{model}` are at their provider limits or unavailable. Try again in {retry:.1f}s.",
            headers={
                "retry-after": str(max(1, math.ceil(retry))),
                "retry-after-ms": str(max(1, math.ceil(retry * 1000))),
            },
        )

    def _has_other(self, model: str, failed: set[str]) -> bool:
        now = time.monotonic()
        for target in self.routes.deployments(model):
            if target.id in failed:
                continue
            view = self.states.cached(target.id)
            if view.cooldown_until <= now and (view.state != 1 or view.open_until <= now):
                return True
        return False

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0, min(self.settings.backoff_cap, self.settings.backoff_base * 2 ** (attempt - 1)))

    async def _judge(self, suspects: list[_Suspect], served: bool) -> None:
        """Count against their deployments the failures of a request that may have been its own
        (see the module's docstring), now that the request was ``served`` or not."""
        if not served:
            # A failure where the deployment is answering others is the request's, and so is the
            # same failure on another deployment (one not serving anyone yet, say): the request
            # fails even where others are served. Deployments that all answer no one are down,
            # however many fail alike.
            answering = [s for s in suspects if self.stats[s.target.id].answered_at >= s.started - _ANSWERING_SECONDS]
            suspects = [
                s
                for s in suspects
                if not any(a is s or (a.kind == s.kind and a.target.id != s.target.id) for a in answering)
            ]
        for suspect in suspects:
            await self._blame(suspect.target)

    async def _blame(self, target: DeploymentTarget) -> None:
        stats = self.stats[target.id]
        stats.failures += 1
        stats.error_rate += _EWMA * (1.0 - stats.error_rate)
        await self.states.failure(target.id)

    async def _attempt(
        self, target: DeploymentTarget, decision: Decision | None, costs: list[int], request: RouteRequest
    ) -> Exchange | tuple[GatewayError, bool, float | None, _Suspect | None]:
        """The response, or (error, whether another try may help, how long to wait first, the
        failure when it may be the request's rather than the deployment's)."""
        stats = self.stats[target.id]
        stats.in_flight += 1
        stats.requests += 1
        started = time.monotonic()
        response: UpstreamResponse | None = None
        try:
            response = await self.transport.send(
                UpstreamRequest(
                    target.url(request.path),
                    target.headers,
                    request.body_for(target),
                    target.connect_timeout,
                    target.first_byte_timeout,
                    target.chunk_timeout,
                    target.label,
                )
            )
            if response.status >= 300:
                body = await response.read()
                error: GatewayError = upstream_status_error(
                    response.status, body, response.headers, target.label, self.secrets
                )
                await self._give_back(target, decision, costs)
                if response.status == 429:
                    wait = retry_after(response.headers) or parse_duration(
                        response.headers.get("x-ratelimit-reset-requests")
                    )
                    await self.states.cooldown(target.id, wait or self.settings.default_cooldown_seconds)
                    self._record(stats, failed=False)
                    return error, True, wait, None
                if response.status in _NOT_RETRYABLE or response.status < 500:
                    stats.answered_at = time.monotonic()
                    self._record(stats, failed=False)
                    return error, False, None, None
                if response.status != 500:
                    # 502, 503, 504, 529, ...: the provider is down or overloaded, whatever it was
                    # asked.
                    await self.states.failure(target.id)
                    self._record(stats, failed=True)
                    return error, True, None, None
                # A 500: for a good request the deployment's, but some inputs crash providers.
                stats.in_flight -= 1
                return error, True, None, _Suspect(target, started, "status 500")
            first = b""
            if request.stream:
                # Read the first chunk before the client gets anything: a deployment that breaks
                # now can still be retried elsewhere.
                iterator = response.iter_chunks().__aiter__()
                first = await anext(iterator, b"")
                response = _Prefetched(response, iterator)
            streamed = request.stream and response.headers.get("content-type", "").startswith("text/event-stream")
            if not streamed:
                # An answer that is not an event stream is relayed once it is whole, so it is read
                # whole here: one that breaks off or stalls midway has sent the client nothing, and
                # another deployment may still serve the request (it was a 502 or a 504 at once).
                response = _Whole(response, first + await self._read_whole(target, response, started))
                first = b""
            headers = response.headers
            for remaining, _ in _PROVIDER_RATELIMIT_HEADERS:
                if headers.get(remaining) == "0":
                    await self._adapt(target, headers)
                    break
            return Exchange(target, response, decision, costs, started, streamed, first)
        except (UpstreamError, UpstreamTimeoutError) as exc:
            if isinstance(exc, UpstreamStatusError):
                raise
            if response is not None:
                response.close()
            await self._give_back(target, decision, costs)
            if isinstance(exc.__cause__, ResponseTooLarge):
                # The request asked for more than the gateway holds: not the deployment's doing,
                # and any other would answer as much.
                stats.in_flight -= 1
                return exc, False, None, None
            if isinstance(exc, UpstreamTimeoutError) or _never_sent(exc) or response is not None:
                # Not answering, not being reached, or breaking off an answer it had begun
                # (its head had come): the deployment's failure.
                await self.states.failure(target.id)
                self._record(stats, failed=True)
                return exc, True, None, None
            # The deployment had the request and closed the connection without a word: perhaps
            # because of the request.
            stats.in_flight -= 1
            return exc, True, None, _Suspect(target, started, "dropped")
        except BaseException:
            if response is not None:
                response.close()
            await self._give_back(target, decision, costs)
            stats.in_flight -= 1
            raise

    @staticmethod
    async def _read_whole(target: DeploymentTarget, response: UpstreamResponse, started: float) -> bytes:
        """The rest of the body, within the deployment's total timeout counted from ``started``."""
        total = target.total_timeout
        if total is None:
            return await response.read()
        try:
            async with asyncio.timeout(max(0.001, started + total - time.monotonic())):
                return await response.read()
        except TimeoutError:
            raise UpstreamTimeoutError(f"Upstream {target.label} exceeded its total timeout of {total:g}s.") from None

    async def _adapt(self, target: DeploymentTarget, headers: Mapping[str, str]) -> None:
        """Heed the provider's own view: no requests left means a cooldown until its reset."""
        for remaining, reset_at in _PROVIDER_RATELIMIT_HEADERS:
            if headers.get(remaining) == "0":
                reset = parse_duration(headers.get(reset_at))
                if reset:
                    await self.states.cooldown(target.id, reset)

    def _record(self, stats: DeploymentStats, failed: bool) -> None:
        stats.in_flight -= 1
        stats.failures += int(failed)
        stats.error_rate += _EWMA * ((1.0 if failed else 0.0) - stats.error_rate)

    async def _give_back(self, target: DeploymentTarget, decision: Decision | None, costs: list[int]) -> None:
        # The provider took nothing: its token estimate is refunded (the request still counted).
        if decision is not None:
            deltas = [
                -c if limit.unit is not Unit.REQUESTS else 0 for limit, c in zip(target.limits, costs, strict=True)
            ]
            await self.limiter.settle(decision, target.limits, deltas)

    async def finish(self, exchange: Exchange, ok: bool | None, tokens_used: int | None) -> None:
        """The response was relayed (True), broke off upstream (False), or the client left (None:
        no verdict on the deployment, whose breaker must not open because clients hang up)."""
        target = exchange.target
        stats = self.stats[target.id]
        if ok is None:
            stats.in_flight -= 1
        else:
            latency = (time.monotonic() - exchange.started) * 1000.0
            stats.latency_ms = (
                latency if stats.latency_ms is None else stats.latency_ms + _EWMA * (latency - stats.latency_ms)
            )
            self._record(stats, failed=not ok)
            if not ok:
                # An answer that breaks once it has begun is the deployment's: the request was
                # accepted (an input that breaks a provider does so before it answers).
                await self.states.failure(target.id)
            else:
                stats.answered_at = time.monotonic()
                if self.states.needs_success_report(target.id):
                    await self.states.success(target.id)
        if exchange.decision is not None and tokens_used is not None:
            deltas = [
                tokens_used - cost if limit.unit is not _REQUESTS else 0
                for limit, cost in zip(target.limits, exchange.costs, strict=True)
            ]
            await self.limiter.settle(exchange.decision, target.limits, deltas)

    async def describe(self) -> list[dict[str, object]]:
        """Every deployment's state, for GET /admin/deployments."""
        out: list[dict[str, object]] = []
        now = time.monotonic()
        for model in self.routes.models:
            for target in self.routes.deployments(model):
                view = await self.states.view(target.id)
                stats = self.stats[target.id]
                remaining: dict[str, int] = {}
                if target.limits:
                    try:
                        for status in await self.limiter.status(target.limits):
                            remaining["rpm" if status.limit.unit is Unit.REQUESTS else "tpm"] = status.remaining
                    except StoreUnavailableError:
                        pass
                out.append(
                    {
                        "id": target.id,
                        "model": model,
                        "label": target.label,
                        "provider": target.provider,
                        "priority": target.priority,
                        "weight": target.weight,
                        "breaker": STATE_NAMES[view.state],
                        "open_seconds_left": round(max(0.0, view.open_until - now), 3) if view.state else 0.0,
                        "cooldown_seconds_left": round(max(0.0, view.cooldown_until - now), 3),
                        "in_flight": stats.in_flight,
                        "remaining": remaining,
                        "latency_ms": round(stats.latency_ms, 2) if stats.latency_ms is not None else None,
                        "error_rate": round(stats.error_rate, 4),
                        "requests": stats.requests,
                        "failures": stats.failures,
                    }
                )
        return out


class _Whole:
    """A response whose body was read whole during its attempt."""

    def __init__(self, response: UpstreamResponse, body: bytes) -> None:
        self._response = response
        self._body = body
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        return self._body

    async def iter_chunks(self):  # type: ignore[no-untyped-def]
        if self._body:
            yield self._body

    def close(self) -> None:
        self._response.close()


class _Prefetched:
    """A streamed response whose first chunk was already read."""

    def __init__(self, response: UpstreamResponse, iterator: object) -> None:
        self._response = response
        self._iterator = iterator
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        return await self._response.read()

    async def iter_chunks(self):  # type: ignore[no-untyped-def]
        async for chunk in self._iterator:  # type: ignore[attr-defined]
            yield chunk

    def close(self) -> None:
        self._response.close()
