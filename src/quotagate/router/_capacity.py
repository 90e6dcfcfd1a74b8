"""Provider limits: which of a model's deployments takes a request now, or after a wait in line.

A deployment may take a request when it is usable (breaker not open, not cooling down after a
provider 429, not failed already in this request) and its own provider limits (RPM/TPM, in the
limit engine) admit it. The best priority group with a usable deployment is tried in its
model's strategy's order, and the first deployment that admits the request gets it, with a
reservation on its limits that the request settles when it ends. So the gateway never sends a
provider more than its limits allow: when no deployment admits, the request waits in line for
whichever frees up first.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

from ..errors import GatewayError
from ..limits import Limiter, Reservation
from ..upstream import DeploymentTarget, ModelRoutes
from ._request import RouteRequest
from ._state import OPEN, DeploymentStates
from ._stats import DeploymentStats
from ._strategies import Strategy


class CapacityError(GatewayError):
    """The gateway's own 429: every deployment is at its provider limits."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class Pick(NamedTuple):
    """A deployment that takes the request, and its reservation on the deployment's provider
    limits (None when it has none); or no deployment, and ``soonest``."""

    target: DeploymentTarget | None
    reservation: Reservation | None
    soonest: float | None  # none taking it: seconds until one may (None: none usable, or ever could)


class Capacity:
    """The deployments of a router's models, as places a request may go."""

    def __init__(
        self,
        routes: ModelRoutes,
        states: DeploymentStates,
        limiter: Limiter,
        stats: Mapping[str, DeploymentStats],
        strategies: Mapping[str, Strategy],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._routes = routes
        self._states = states
        self._limiter = limiter
        self._stats = stats
        self._strategies = strategies
        self._sleep = sleep
        # The name of each model's line of requests waiting for its deployments (see reserve).
        # Limit keys begin with "{": no line is shared with the limiter's.
        self._lines = {model: "deployments of " + model for model in routes.models}

    async def reserve(self, model: str, request: RouteRequest, failed: set[str], until: float) -> Pick:
        """A deployment with room for the request: at once, or after waiting in line for whichever
        of the model's deployments frees up first, until ``until``. Else no deployment, and the
        seconds until one may have room (None when none is usable).

        A provider's limits are the gateway's business: the tenant's limits admitted this request
        already, so it waits for a deployment rather than being refused. Requests waiting for a
        model on this node form one line (higher tiers first, then first come first served); its
        head looks at every usable deployment whenever the soonest of them said it would have
        room, and wakes the next one when it leaves. A request that arrives while others wait
        goes behind them rather than take the capacity that is coming back for them.
        """
        queue = self._limiter.queue
        line = self._lines[model]
        soonest: float | None = None  # when the last look said a deployment would have room
        if not queue.has_line(line):
            picked = await self.pick(model, request, failed)
            soonest = picked.soonest
            if picked.target is not None or soonest is None or time.monotonic() + soonest > until:
                return picked
        if queue.full:
            self._limiter.stats.queue_full += 1
            return Pick(None, None, soonest)
        me = queue.join(line, request.priority)
        try:
            while await queue.wait_turn(line, me, until):
                if soonest is not None:
                    # At the head: wait for the room the last look promised, then look again.
                    if time.monotonic() + soonest > until:
                        return Pick(None, None, soonest)
                    await self._sleep(soonest)
                    soonest = None
                    if not queue.is_head(line, me):
                        continue  # a higher tier arrived meanwhile: after it
                picked = await self.pick(model, request, failed)
                if picked.target is not None or picked.soonest is None:
                    return picked
                soonest = picked.soonest
            # The wait is over, behind others: one last look, which also tells the client honestly
            # when to come back.
            return await self.pick(model, request, failed)
        finally:
            queue.leave(line, me)

    async def pick(self, model: str, request: RouteRequest, failed: set[str]) -> Pick:
        """A deployment that admits the request now; else no deployment, and the seconds until
        one may (None when none of the model's deployments is usable or ever could take the
        request)."""
        states = self._states
        targets = self._routes.deployments(model)
        if request.deployment is not None:
            targets = [t for t in targets if t.id == request.deployment]
        if len(targets) == 1 and not failed:
            # One deployment, nothing tried yet: the common case, without the ordering below.
            target = targets[0]
            if not target.limits and states.usable_now(target.id):
                return Pick(target, None, None)
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
                left = states.cached(target.id).cooldown_until - time.monotonic()
                if left > 0:
                    soonest = left if soonest is None else min(soonest, left)
                continue
            by_priority.setdefault(target.priority, []).append(target)
        strategy = self._strategies[model]
        for priority in sorted(by_priority):
            group = by_priority[priority]
            # A group of one has no order to choose, and nothing for its strategy to learn.
            several = len(group) > 1
            for target in strategy.order(group) if several else group:
                if not target.limits:
                    if several:
                        strategy.served(group, target)
                    return Pick(target, None, None)
                reservation = await self._limiter.reserve(target.limits, request.usage)
                decision = reservation.decision
                if decision.allowed:
                    if several:
                        strategy.served(group, target)
                    self._stats[target.id].note_remaining(decision)
                    return Pick(target, reservation, None)
                if not decision.never_fits:
                    soonest = decision.retry_after if soonest is None else min(soonest, decision.retry_after)
        return Pick(None, None, soonest)

    def any_usable(self, model: str, failed: set[str], request_deployment: str | None = None) -> bool:
        """Whether, as this node last saw them, a deployment of the model that has not failed the
        request (and is the one it must go to, if any) is usable now (not cooling down, breaker
        not open)."""
        now = time.monotonic()
        for target in self._routes.deployments(model):
            if target.id in failed or (request_deployment is not None and target.id != request_deployment):
                continue
            view = self._states.cached(target.id)
            if view.cooldown_until <= now and (view.state != OPEN or view.open_until <= now):
                return True
        return False
