"""The in-process store: the embedded default, the fail-open fallback, and the tests' reference.

Every operation runs without an await in between, so on one event loop each decision is atomic
by construction; a lock makes it so across threads too (the client library's sync and async
callers may share one store). Idle state is swept as it expires, like Redis's TTLs.

With ``durable_quotas=True`` the calendar quotas' state can outlive the process, which Redis's
does by living elsewhere: the store notes which quotas each decision changed (an assignment per
quota), ``quota_changes`` hands their states to a writer, and a later store takes them back with
``restore_quotas``. Rates and concurrency start afresh, as they may.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from . import _algorithms as alg
from ._model import Decision, Limit, LimitStatus
from ._params import make_decision, params

_SWEEP_EVERY_MS = 1000.0


class QuotaState(NamedTuple):
    """A calendar quota's state, as kept outside the process."""

    key: str
    kind: str  # what the count counts (quota_kind); a state of another kind is not taken back
    window: float  # the window's start, epoch ms
    used: float
    expires: float  # epoch ms after which the state is moot


def quota_kind(limit: Limit) -> str:
    """The unit, calendar and time zone of a quota: a configuration that changes one of them under
    the same key (a named limit's unit, say) counts something else, and starts afresh. Not the
    amount: a count stays right under a new amount, as it does in Redis."""
    calendar = limit.calendar.value if limit.calendar is not None else ""
    return f"{limit.unit.value}/{calendar}/{limit.timezone}"


class InProcessStore:
    def __init__(self, clock: Callable[[], float] = time.time, *, durable_quotas: bool = False) -> None:
        self._clock = clock
        self._state: dict[str, Any] = {}
        self._expires: dict[str, float] = {}  # key -> epoch ms after which the state is moot
        self._last_sweep = 0.0
        self._lock = threading.Lock()
        # durable_quotas: the calendar quotas changed since quota_changes last took them (key ->
        # its limit, which says what the state means); None: nothing is noted, nothing costs.
        self._changed: dict[str, Limit] | None = {} if durable_quotas else None
        # States a previous process left (restore_quotas), each taken back at its quota's first use,
        # when the limit in hand shows it still means the same; the rest expire unread.
        self._restored: dict[str, QuotaState] = {}
        self._restored_until = 0.0

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
        changed = self._changed if not dry_run else None
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
                current = state.get(limit.key)
                if current is None and self._restored:
                    current = self._restore(limit, b)
                outcome = alg.calendar(current, now, cost, a, b, c, d)
                expiry = now + outcome[5] + 3_600_000.0
                if changed is not None:
                    # Noted even if another limit refuses: the state is then written unchanged.
                    changed[limit.key] = limit
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
                if self._changed is not None:
                    self._changed[limit.key] = limit
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
        with self._lock:
            for limit in limits:
                self._state.pop(limit.key, None)
                self._expires.pop(limit.key, None)
                self._restored.pop(limit.key, None)
                if self._changed is not None and limit.static_params is None:
                    self._changed[limit.key] = limit  # gone: quota_changes reports it so

    async def aclose(self) -> None:
        # Not a change of any quota: what was written of them stays for the next process.
        self._state.clear()

    # -- durable quotas --------------------------------------------------------------------------

    def quota_changes(self) -> tuple[dict[str, Limit], list[QuotaState], list[str]]:
        """The calendar quotas changed since the last call: (what was taken, the states to keep,
        the keys whose state is gone). A writer that fails to store them gives the first back
        (quota_changes_unwritten), and the next call reports those quotas as they are then."""
        with self._lock:
            if not self._changed:
                return {}, [], []
            taken, self._changed = self._changed, {}
            kept: list[QuotaState] = []
            gone: list[str] = []
            for key, limit in taken.items():
                state = self._state.get(key)
                if isinstance(state, tuple) and len(state) == 2:
                    kept.append(QuotaState(key, quota_kind(limit), state[0], state[1], self._expires[key]))
                else:
                    gone.append(key)  # reset, or swept since
            return taken, kept, gone

    def quota_changes_unwritten(self, taken: dict[str, Limit]) -> None:
        """Changes quota_changes handed out that could not be stored: report them again."""
        with self._lock:
            if self._changed is not None:
                for key, limit in taken.items():
                    self._changed.setdefault(key, limit)

    def restore_quotas(self, states: Iterable[QuotaState]) -> None:
        """States a previous process kept; each is taken back at its quota's first use, if the quota
        still counts the same thing in the same window, and is dropped otherwise."""
        with self._lock:
            for saved in states:
                if saved.key not in self._state:
                    self._restored[saved.key] = saved
                    self._restored_until = max(self._restored_until, saved.expires)

    def _restore(self, limit: Limit, window: float) -> tuple[float, float] | None:
        """The state kept for ``limit`` if it counts the same thing in ``window`` (its start, ms)."""
        saved = self._restored.pop(limit.key, None)
        if saved is None or saved.kind != quota_kind(limit) or saved.window != window:
            return None  # never kept, or for another kind of quota, or of a window gone by
        state = (saved.window, saved.used)
        self._state[limit.key] = state
        self._expires[limit.key] = saved.expires
        return state

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        expired = [key for key, until in self._expires.items() if until <= now]
        for key in expired:
            del self._expires[key]
            self._state.pop(key, None)
        if self._restored and now >= self._restored_until:
            self._restored.clear()  # every state left unread is moot
