"""The in-process store: the embedded default, the fail-open fallback, and the tests' reference.

Every operation runs without an await in between, so on one event loop each decision is atomic
by construction; a lock makes it so across threads too (the client library's sync and async
callers may share one store). Idle state is swept as it expires, like Redis's TTLs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _algorithms as alg
from ._model import Decision, Limit, LimitStatus
from ._params import make_decision, params

_SWEEP_EVERY_MS = 1000.0


class InProcessStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._state: dict[str, Any] = {}
        self._expires: dict[str, float] = {}  # key -> epoch ms after which the state is moot
        self._last_sweep = 0.0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._state)

    async def acquire(self, limits: Sequence[Limit], costs: Sequence[int], lease: str | None = None) -> Decision:
        return self.acquire_now(limits, costs, lease)

    def acquire_now(
        self,
        limits: Sequence[Limit],
        costs: Sequence[int],
        lease: str | None = None,
        *,
        dry_run: bool = False,
    ) -> Decision:
        with self._lock:
            return self._acquire_locked(limits, costs, lease, dry_run)

    def _acquire_locked(
        self, limits: Sequence[Limit], costs: Sequence[int], lease: str | None, dry_run: bool
    ) -> Decision:
        if len(costs) != len(limits):
            raise ValueError(f"{len(limits)} limits but {len(costs)} costs")
        now_s = self._clock()
        now = now_s * 1000.0
        if now - self._last_sweep >= _SWEEP_EVERY_MS:
            self._sweep(now)
        state = self._state
        outcomes = []
        expiries = []
        # By index rather than zip(strict=True), which parses its keyword on every call.
        for index, limit in enumerate(limits):
            cost = costs[index]
            code, a, b, c, d = limit.static_params or params(limit, now_s)
            if code == "g":
                outcome = alg.gcra(state.get(limit.key), now, cost, a, b)
                expiry = outcome[2] + 1000.0  # type: ignore[operator]
            elif code == "s":
                outcome = alg.sliding_window(state.get(limit.key), now, cost, a, b)
                expiry = now + 2 * a + 1000.0
            elif code == "c":
                outcome = alg.calendar(state.get(limit.key), now, cost, a, b, c, d)
                expiry = now + outcome[5] + 3_600_000.0
            else:
                outcome = alg.concurrency(state.get(limit.key), now, cost, a, b, lease or "")
                expiry = now + 2 * b
            outcomes.append(outcome)
            expiries.append(expiry)
        decision = make_decision(limits, costs, outcomes, lease)
        if decision.allowed and not dry_run:
            expires = self._expires
            for index, limit in enumerate(limits):
                state[limit.key] = outcomes[index][2]
                expires[limit.key] = expiries[index]
        return decision

    async def settle(self, limits: Sequence[Limit], deltas: Sequence[int], windows: Sequence[float]) -> None:
        self.settle_now(limits, deltas, windows)

    def settle_now(self, limits: Sequence[Limit], deltas: Sequence[int], windows: Sequence[float]) -> None:
        with self._lock:
            self._settle_locked(limits, deltas, windows)

    def _settle_locked(self, limits: Sequence[Limit], deltas: Sequence[int], windows: Sequence[float]) -> None:
        if not len(limits) == len(deltas) == len(windows):
            raise ValueError(f"{len(limits)} limits but {len(deltas)} deltas and {len(windows)} windows")
        now_s = self._clock()
        now = now_s * 1000.0
        for index, limit in enumerate(limits):
            delta = deltas[index]
            if not delta:
                continue
            window = windows[index]
            code, a, b, c, _ = limit.static_params or params(limit, now_s)
            state = self._state.get(limit.key)
            if code == "g":
                new: Any = alg.gcra_adjust(state, now, delta, a)
                ttl = new - now + 1000.0
            elif code == "s":
                new = alg.sliding_adjust(state, now, delta, a)
                ttl = 2 * a + 1000.0
            elif code == "c":
                new = alg.calendar_adjust(state, now, delta, window * 1000.0, b, c)
                ttl = c - now + 3_600_000.0
            else:
                continue
            if new is not None:
                self._state[limit.key] = new
                self._expires[limit.key] = now + ttl

    async def release(self, limits: Sequence[Limit], lease: str) -> None:
        with self._lock:
            for limit in limits:
                leases = self._state.get(limit.key)
                if isinstance(leases, dict):
                    leases.pop(lease, None)

    async def renew(self, limits: Sequence[Limit], lease: str) -> None:
        now = self._clock() * 1000.0
        for limit in limits:
            leases = self._state.get(limit.key)
            if isinstance(leases, dict) and lease in leases:
                leases[lease] = now + limit.lease_seconds * 1000.0
                self._expires[limit.key] = now + limit.lease_seconds * 2000.0

    async def status(self, limits: Sequence[Limit]) -> tuple[LimitStatus, ...]:
        return self.acquire_now(limits, [0] * len(limits), dry_run=True).statuses

    async def reset(self, limits: Sequence[Limit]) -> None:
        for limit in limits:
            self._state.pop(limit.key, None)
            self._expires.pop(limit.key, None)

    async def aclose(self) -> None:
        self._state.clear()

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        expired = [key for key, until in self._expires.items() if until <= now]
        for key in expired:
            del self._expires[key]
            self._state.pop(key, None)
