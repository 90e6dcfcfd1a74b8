"""The limits stage: a request's hold on its tenant's limits, and the model it is for.

The proxy makes a ``TenantCharge`` for the request's model, which asks the policy which limits
apply; the tokens stage then sets its ``estimate`` where those limits count tokens, and ``admit``
reserves it on every limit at once (waiting as the tier may). The router moves the charge when
it falls back to another model, whose limits and price differ (``move_to``); the proxy settles
it with what the request used once the answer is relayed (``settle``). Nothing else touches the
tenant's limits.
"""

from __future__ import annotations

from collections.abc import Callable

from ..accounting import Price, cost_usd, micro_usd
from ..auth import Principal
from ..errors import ServiceUnavailableError
from ..limits import Limit, Limiter, Reservation, StoreUnavailableError, Unit, Usage
from ..policy import AppliedLimits, Policy
from ..tokens import Estimate


def store_unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The rate limit store is unavailable, and this gateway is set to refuse requests "
        "it cannot count. Try again shortly.",
        code="limit_store_unavailable",
    )


class TenantCharge:
    """What one request holds on its tenant's limits (``reservation``; None while it holds
    nothing) for ``model``, under ``applied`` (None: the tenant is not limited)."""

    __slots__ = ("_limiter", "_policy", "_price_of", "_principal", "applied", "estimate", "model", "reservation")

    def __init__(
        self,
        limiter: Limiter | None,
        policy: Policy | None,
        principal: Principal,
        model: str,
        estimate: Estimate,
        price_of: Callable[[str], Price | None],
    ) -> None:
        self._limiter = limiter if policy is not None and policy.enabled else None
        self._policy = policy
        self._principal = principal
        self.estimate = estimate  # set by the tokens stage where limits need it
        self._price_of = price_of
        self.model = model
        self.applied: AppliedLimits | None = (
            policy.limits_for(principal, model) if self._limiter is not None and policy is not None else None
        )
        self.reservation: Reservation | None = None

    def usage(self, model: str, applied: AppliedLimits) -> Usage:
        """What the request is charged on ``model``'s limits before the call: its estimated
        tokens, and where a budget applies, the most they could cost (settling corrects both)."""
        estimate = self.estimate
        spend = 0
        if applied.counts_spend:
            spend = micro_usd(cost_usd(self._price_of(model), estimate.prompt, estimate.output))
        return Usage(estimate.prompt, estimate.output, spend)

    async def admit(self) -> Reservation | None:
        """Reserve the estimate on every applicable limit, waiting as the tier may: the
        reservation (admitted or refused), or None when no limit applies."""
        applied = self.applied
        if self._limiter is None or applied is None or not applied.limits:
            return None
        try:
            reservation = await self._limiter.reserve(
                applied.limits,
                self.usage(self.model, applied),
                max_wait=applied.max_wait,
                priority=applied.priority,
            )
        except StoreUnavailableError:
            raise store_unavailable() from None
        if reservation.decision.allowed:
            self.reservation = reservation
        return reservation

    async def move_to(self, model: str) -> bool:
        """Charge ``model``'s limits instead of the current model's (a fallback the router moves
        on to, a downgrade), without waiting; False, the charge unchanged, when they refuse the
        request. After ``admit`` refused, this reserves on ``model``'s limits afresh."""
        if model == self.model or self._limiter is None or self._policy is None:
            self.model = model
            return True
        applied = self._policy.limits_for(self._principal, model)
        held = self.applied.limits if self.applied is not None else ()
        if applied.limits == held and (self.reservation is not None or not held):
            self.model = model
            return True
        usage = self.usage(model, applied)
        moved: Reservation | None
        try:
            if self.reservation is not None:
                moved = await self.reservation.move(applied.limits, usage)
            else:
                reserved = await self._limiter.reserve(applied.limits, usage)
                moved = reserved if reserved.allowed else None
        except StoreUnavailableError:
            raise store_unavailable() from None
        if moved is None:
            return False
        self.applied, self.reservation, self.model = applied, moved, model
        await moved.finish_move()
        return True

    def held_to(self, model: str, limit: Limit) -> bool:
        """Whether a request for ``model`` would be charged on ``limit`` too (a tier's RPM: every
        model is)."""
        if self._policy is None:
            return False
        return limit in self._policy.limits_for(self._principal, model).limits

    def budget_used(self) -> float:
        """The largest fraction used of the USD budgets the reservation holds, as it left them."""
        if self.reservation is None:
            return 0.0
        return max(
            (s.used / s.limit.amount for s in self.reservation.decision.statuses if s.limit.unit is Unit.SPEND),
            default=0.0,
        )

    @property
    def counts_spend(self) -> bool:
        """Whether a budget applies (settling it needs the request's cost)."""
        return self.applied is not None and self.applied.counts_spend

    async def settle(self, prompt: int, completion: int, spent_usd: float = 0.0) -> list[int] | None:
        """Charge what the request used instead of the estimate (``spent_usd``: its cost, where
        ``counts_spend``), and give back its concurrency slot: the changes made to each limit
        (None when tokens are not counted)."""
        reservation, applied = self.reservation, self.applied
        if reservation is None or applied is None:
            return None
        deltas = None
        if applied.counts_tokens:
            deltas = await reservation.settle(Usage(prompt, completion, micro_usd(spent_usd) if spent_usd else 0))
        await reservation.release()
        return deltas
