"""A reservation: what one request holds on a set of limits, from admission to its end.

``Limiter.reserve`` charges the estimate and returns one. The holder then says what became of
the request, once it knows:

- ``settle(used)``: the request used ``used``; each limit is charged the difference from what it
  holds (``cost_on`` prices both), so the books end exact. Settling again moves them again.
- ``refund()``: the request did not happen after all; every limit gets its charge back.
- ``move(limits)``: charge other limits instead (a fallback to another model, whose tenant limits
  differ): the new ones are charged first and this one is refunded only if they admit it.
- ``release()``: give back a concurrency slot (the other charges stay, as a request's do).

``async with`` releases the concurrency slot on the way out, however the block ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from ._model import Algorithm, Decision, Limit
from ._usage import Usage, costs_on

if TYPE_CHECKING:
    from ._limiter import Limiter


class Reservation:
    """What a request holds on ``limits``: ``decision`` says whether it was admitted, and how."""

    __slots__ = ("_carried", "_costs", "_giving_back", "_limiter", "decision", "held", "limits", "released")

    def __init__(
        self, limiter: Limiter, limits: Sequence[Limit], decision: Decision, held: Usage, costs: Sequence[int]
    ) -> None:
        self._limiter = limiter
        self.limits = limits
        self.decision = decision
        self.held = held  # the usage the limits are charged for now
        self._costs = costs  # what ``held`` costs on each limit
        self.released = decision.lease is None
        # Concurrency slots a move carried over from the reservation it replaced: (its decision,
        # its limits), given back when this one releases.
        self._carried: list[tuple[Decision, Sequence[Limit]]] = []
        # The reservation this one replaced, being given back (see move).
        self._giving_back: asyncio.Future[None] | None = None

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    async def settle(self, used: Usage) -> list[int]:
        """Charge each limit what ``used`` costs instead of what it holds; the changes made."""
        if self._giving_back is not None:
            await self._given_back()
        if not self.decision.allowed:
            return [0] * len(self.limits)
        costs = costs_on(self.limits, used)
        deltas = [new - old for new, old in zip(costs, self._costs, strict=True)]
        self.held, self._costs = used, costs
        await self._limiter.settle(self.decision, self.limits, deltas)
        return deltas

    async def refund(self) -> None:
        """Give every charge back (a concurrency slot is released, not refunded)."""
        await self._given_back()
        if not self.decision.allowed:
            return
        deltas = [
            0 if limit.algorithm is Algorithm.CONCURRENCY else -cost
            for limit, cost in zip(self.limits, self._costs, strict=True)
        ]
        self._empty()
        await self._limiter.settle(self.decision, self.limits, deltas)
        await self.release()

    async def release(self) -> None:
        """Give back the concurrency slots, if any (once)."""
        if self._giving_back is not None:
            await self._given_back()
        if not self.released:
            self.released = True
            await self._limiter.release(self.decision, self.limits)
        while self._carried:
            decision, limits = self._carried.pop()
            await self._limiter.release(decision, limits)

    async def move(self, limits: Sequence[Limit], usage: Usage | None = None) -> Reservation | None:
        """``usage`` (by default, what this one holds) charged to ``limits`` instead, without
        waiting: the new reservation, and this one given back; or None, this one kept, when
        ``limits`` refuse it.

        A limit both hold (the tier's own, whatever the model) keeps its charge: the new
        reservation asks it only for what more ``usage`` costs, and keeps its concurrency slot,
        so a move never counts the request twice on it. Once the new limits admit the request,
        nothing is awaited before the new reservation is returned: the old one is given back by
        a task. Keep the new one where a cancellation cannot lose it, then ``await
        finish_move()`` on it (its settle, refund and release wait for the task too): a caller
        cancelled meanwhile leaves nothing counted twice and nothing lost."""
        usage = self.held if usage is None else usage
        held = {limit.key: cost for limit, cost in zip(self.limits, self._costs, strict=True)}
        slots_kept = [lim for lim in limits if lim.algorithm is Algorithm.CONCURRENCY and lim.key in held]
        taking = [lim for lim in limits if not (lim.algorithm is Algorithm.CONCURRENCY and lim.key in held)]
        costs = costs_on(taking, usage)
        more = [max(0, cost - held.get(limit.key, 0)) for limit, cost in zip(taking, costs, strict=True)]
        decision = await self._limiter.acquire(taking, more)
        if not decision.allowed:
            return None
        moved = Reservation(self._limiter, taking, decision, usage, costs)
        # This one gives back what the new one does not hold: all of a limit only it had, and on a
        # shared limit what ``usage`` costs less than it held.
        new_costs = dict(zip((limit.key for limit in taking), costs, strict=True))
        deltas = [
            0
            if limit.algorithm is Algorithm.CONCURRENCY
            else min(0, new_costs[limit.key] - cost)
            if limit.key in new_costs
            else -cost
            for limit, cost in zip(self.limits, self._costs, strict=True)
        ]
        kept = {limit.key for limit in slots_kept}
        slots_gone = [lim for lim in self.limits if lim.algorithm is Algorithm.CONCURRENCY and lim.key not in kept]
        if slots_kept:
            # Its shared slots go with the new reservation, given back when that one is.
            moved._carried = [*self._carried, (self.decision, self.limits)]
            self._carried = []
        else:
            moved._carried, self._carried = self._carried, []
        releasing = not self.released
        self._empty()
        self.released = True
        moved._giving_back = asyncio.ensure_future(
            self._give_back(self.decision, deltas, slots_gone if releasing else [], keep_renewing=bool(slots_kept))
        )
        return moved

    async def _give_back(
        self, decision: Decision, deltas: list[int], slots: list[Limit], *, keep_renewing: bool
    ) -> None:
        await self._limiter.settle(decision, self.limits, deltas)
        if slots:
            await self._limiter.release(decision, slots, keep_renewing=keep_renewing)

    async def finish_move(self) -> None:
        """Wait until the reservation this one replaced (see move) has been given back."""
        await self._given_back()

    async def _given_back(self) -> None:
        if self._giving_back is not None:
            giving_back, self._giving_back = self._giving_back, None
            await asyncio.shield(giving_back)

    def _empty(self) -> None:
        self.held, self._costs = Usage(), [0] * len(self.limits)

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()
