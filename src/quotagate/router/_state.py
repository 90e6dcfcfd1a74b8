"""Circuit breakers and cooldowns of deployments, shared by all gateway nodes.

One breaker per deployment: closed -> open after ``failures`` failures within ``window`` ->
half-open after ``cooldown``, letting ``probes`` requests through -> closed when a probe
succeeds, open again when one fails. Separately, a provider's 429 puts the deployment in
cooldown for the time the provider named; a later, longer cooldown is never shortened.

The state lives in the limit store's backend (Redis: one small Lua script per change; the
in-process store: the same state machine in Python). Each node keeps a view of it for
``VIEW_TTL`` seconds, so a healthy deployment costs no extra round trip per request; failures,
successes while half-open and cooldowns are written through at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .._logging import EveryFewSeconds
from ..config import BreakerSettings
from ..limits._redis import lua_script
from ..redis import LuaScript, RedisClient

logger = logging.getLogger("quotagate.router")
CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half-open"}
VIEW_TTL = 0.25


@dataclass(frozen=True, slots=True)
class StateReply:
    state: int
    open_left: float  # seconds
    cooldown_left: float  # seconds
    allowed: bool = True


class StateStore(Protocol):
    async def call(self, deployment: str, op: str, *args: float) -> StateReply: ...


class MemoryStateStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._state: dict[str, list[float]] = {}  # id -> [st, fw, fc, ou, pb, cd]

    async def call(self, deployment: str, op: str, *args: float) -> StateReply:
        now = self._clock() * 1000.0
        s = self._state.setdefault(deployment, [CLOSED, 0.0, 0.0, 0.0, 0.0, 0.0])
        st, fw, fc, ou, pb, cd = s
        allowed = True
        if op == "failure":
            threshold, window, open_ms = args
            if st == HALF_OPEN:
                st, ou, pb, fc = OPEN, now + open_ms, 0, 0
            elif st == CLOSED:
                if now - fw > window:
                    fw, fc = now, 0
                fc += 1
                if fc >= threshold:
                    st, ou, fc = OPEN, now + open_ms, 0
        elif op == "success":
            if st == HALF_OPEN:
                st, fc, pb = CLOSED, 0, 0
        elif op == "probe":
            probes, open_ms = args
            if st == OPEN:
                if now >= ou:
                    st, pb, ou = HALF_OPEN, 1, now + open_ms
                else:
                    allowed = False
            elif st == HALF_OPEN:
                if now >= ou:
                    pb, ou = 1, now + open_ms
                elif pb < probes:
                    pb += 1
                else:
                    allowed = False
        elif op == "cooldown":
            cd = max(cd, now + args[0])
        s[:] = [st, fw, fc, ou, pb, cd]
        open_left = ou - now if st != CLOSED and ou > now else 0.0
        return StateReply(int(st), open_left / 1000.0, max(0.0, cd - now) / 1000.0, allowed)


class RedisStateStore:
    """Each deployment's state in one Redis key of its own (its own hash tag: any Cluster slot),
    changed by one script, over the client the limits use."""

    def __init__(self, redis: RedisClient, prefix: str = "qg:") -> None:
        self._connection = redis
        self._prefix = prefix
        self._script = LuaScript(lua_script("quotagate.router", "state.lua"))

    async def call(self, deployment: str, op: str, *args: float) -> StateReply:
        tag = "{d:" + deployment.replace("{", "(").replace("}", ")") + "}"
        reply = await self._connection.evalsha(self._script, [f"{self._prefix}{tag}:state"], [op, "", *args])
        return StateReply(int(reply[0]), float(reply[1]) / 1000.0, float(reply[2]) / 1000.0, bool(int(reply[3])))


@dataclass
class _View:
    state: int = CLOSED
    open_until: float = 0.0
    cooldown_until: float = 0.0
    fetched: float = -1e9


def _usable_by_view(view: _View, now: float) -> bool | None:
    """What the view alone says: False cooling down or open, True closed, None when the store
    must decide (half-open, or open with its time up: a probe)."""
    if view.cooldown_until > now:
        return False
    if view.state == CLOSED:
        return True
    if view.state == OPEN and view.open_until > now:
        return False
    return None


class DeploymentStates:
    """A node's view of every deployment's breaker and cooldown, over a shared StateStore."""

    def __init__(
        self,
        store: StateStore,
        settings: BreakerSettings,
        monotonic: Callable[[], float] = time.monotonic,
        timeout: float = 0.25,
    ) -> None:
        self.store = store
        self.settings = settings
        self._monotonic = monotonic
        self._views: dict[str, _View] = {}
        self._refreshing: dict[str, asyncio.Future[_View]] = {}
        self._timeout = timeout
        # When the shared store cannot be reached, each node keeps its own breakers: routing
        # goes on, only less informed. The shared store is asked again after a rest.
        self._local = MemoryStateStore()
        self._rest_until = 0.0
        self.store_errors = 0
        # Every call in flight when the store goes down fails at once, and again after each rest.
        self._log_failed = EveryFewSeconds(logger, clock=monotonic)

    async def _call(self, deployment: str, op: str, *args: float) -> StateReply:
        if self._monotonic() >= self._rest_until:
            try:
                async with asyncio.timeout(self._timeout):
                    return await self.store.call(deployment, op, *args)
            except Exception as exc:  # redis-py's errors, OSError, TimeoutError
                self.store_errors += 1
                self._rest_until = self._monotonic() + 1.0
                self._log_failed.warning(
                    "deployment state store failed (%s: %s); using this node's state", type(exc).__name__, exc
                )
        return await self._local.call(deployment, op, *args)

    def _apply(self, deployment: str, reply: StateReply) -> _View:
        now = self._monotonic()
        view = _View(reply.state, now + reply.open_left, now + reply.cooldown_left, now)
        self._views[deployment] = view
        return view

    async def view(self, deployment: str) -> _View:
        view = self._views.get(deployment)
        if view is not None and self._monotonic() - view.fetched <= VIEW_TTL:
            return view
        # One refresh per deployment at a time: when the view goes stale under load, the requests
        # in flight share one round trip instead of each asking the store.
        refresh = self._refreshing.get(deployment)
        if refresh is None:
            refresh = self._refreshing[deployment] = asyncio.ensure_future(self._refresh(deployment))
        return await asyncio.shield(refresh)  # a waiter that is cancelled leaves it to the others

    async def _refresh(self, deployment: str) -> _View:
        try:
            return self._apply(deployment, await self._call(deployment, "view"))
        finally:
            del self._refreshing[deployment]

    def usable_now(self, deployment: str) -> bool | None:
        """``usable`` when the node's view answers it without the store (fresh, closed or plainly
        open, or cooling down); None when the store must be asked (a stale view, a probe)."""
        view = self._views.get(deployment)
        now = self._monotonic()
        if view is None or now - view.fetched > VIEW_TTL:
            return None
        return _usable_by_view(view, now)

    def needs_success_report(self, deployment: str) -> bool:
        """Whether a success must be written through (only when the breaker is not closed)."""
        view = self._views.get(deployment)
        return view is not None and view.state != CLOSED

    async def usable(self, deployment: str) -> bool:
        """May a request go to this deployment now? (Claims a probe when it is half-open.)"""
        view = await self.view(deployment)
        usable = _usable_by_view(view, self._monotonic())
        if usable is not None:
            return usable
        reply = await self._call(deployment, "probe", self.settings.probes, self.settings.cooldown_seconds * 1000.0)
        self._apply(deployment, reply)
        return reply.allowed

    async def failure(self, deployment: str) -> None:
        s = self.settings
        self._apply(
            deployment,
            await self._call(deployment, "failure", s.failures, s.window_seconds * 1000.0, s.cooldown_seconds * 1000.0),
        )

    async def success(self, deployment: str) -> None:
        view = self._views.get(deployment)
        if view is not None and view.state != CLOSED:
            self._apply(deployment, await self._call(deployment, "success"))

    async def cooldown(self, deployment: str, seconds: float) -> None:
        self._apply(deployment, await self._call(deployment, "cooldown", seconds * 1000.0))

    def cached(self, deployment: str) -> _View:
        return self._views.get(deployment) or _View()
