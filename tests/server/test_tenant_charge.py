"""The limits stage's hold on a request's tenant limits (``TenantCharge``): admitting the
estimate, settling what was used, and moving the charge when the router falls back to another
model, on a real Policy built from a configuration and a real in-process Limiter on a fake clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from quotagate.accounting import Price, cost_usd, micro_usd
from quotagate.auth import Principal
from quotagate.config import parse_config
from quotagate.limits import InProcessStore, Limit, Limiter, Reservation
from quotagate.policy import SHORTHANDS, Policy
from quotagate.server._tenant import TenantCharge
from quotagate.tokens import Estimate

from ..limits.conftest import FakeClock

ALICE = Principal("key1", "alice", "free", None)
ESTIMATE = Estimate(100, 50)

# Per model: "a" and "a2" share one limit of the key's (the same limits), "b" has a key+model
# limit of its own (other limits), "c" has only the tier's.
SCOPED = [
    {"scope": "key", "unit": "tokens", "amount": 5000, "name": "a-tpm", "match": {"model": ["a", "a2"]}},
    {"scope": "key+model", "unit": "tokens", "amount": 2000, "name": "b-tpm", "match": {"model": ["b"]}},
]
TIER = {"rpm": 10, "tpm": 10000, "concurrency": 2, "usd_per_day": 1.0}
MODELS = ("a", "a2", "b", "c", "house")
# USD per million tokens; "house" (a model served in house) has no price: it costs nothing.
PRICES = {"a": Price(1.0, 2.0), "a2": Price(1.0, 2.0), "b": Price(10.0, 20.0), "c": Price(1.0, 2.0)}

_SHORTHAND_NAMES = {label: name for name, (_, _, label) in SHORTHANDS.items()}


def policy(tier: dict[str, Any] | None = None, limits: list[dict[str, Any]] | None = None) -> Policy:
    return Policy(
        parse_config(
            {"tiers": {"free": TIER if tier is None else tier}, "limits": SCOPED if limits is None else limits}
        )
    )


def name(limit: Limit) -> str:
    """A limit's name in these tests: its shorthand (rpm, tpm, ...), or its limits[] name."""
    return _SHORTHAND_NAMES.get(limit.label) or limit.label.split(" for ")[0]


async def used(limiter: Limiter, policy: Policy) -> dict[str, int]:
    """What each limit on Alice's requests, for any model, holds now."""
    limits = {limit.key: limit for model in MODELS for limit in policy.limits_for(ALICE, model).limits}
    return {name(status.limit): status.used for status in await limiter.status(list(limits.values()))}


def cost(model: str, prompt: int, completion: int) -> float:
    return cost_usd(PRICES.get(model), prompt, completion)


async def admitted(request: TenantCharge) -> Reservation:
    """``request.admit()``, which its limits must allow."""
    reservation = await request.admit()
    assert reservation is not None and reservation.allowed
    return reservation


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def limiter(clock: FakeClock) -> AsyncIterator[Limiter]:
    limiter = Limiter(InProcessStore(clock), clock=clock)
    yield limiter
    await limiter.aclose()  # stops the renewal of concurrency leases


def charge(limiter: Limiter | None, policy: Policy, model: str, estimate: Estimate = ESTIMATE) -> TenantCharge:
    return TenantCharge(limiter, policy, ALICE, model, estimate, PRICES.get)


async def test_admit_reserves_the_estimate_on_the_tier_and_model_limits(limiter: Limiter) -> None:
    """``admit`` charges the estimate to every limit on the request at once: one request, its
    estimated tokens, a concurrency slot, and on a budget the most those tokens could cost at
    the model's price; the reservation is the charge's."""
    limits = policy()
    request = charge(limiter, limits, "a")
    reservation = await admitted(request)
    assert request.reservation is reservation and request.counts_spend
    assert await used(limiter, limits) == {
        "rpm": 1,
        "tpm": 150,
        "concurrency": 1,
        "usd_per_day": micro_usd(cost("a", 100, 50)),
        "a-tpm": 150,
        "b-tpm": 0,
    }


async def test_a_refused_admit_holds_nothing(limiter: Limiter) -> None:
    """A request the limits refuse gets the refused reservation, and the charge holds nothing:
    no limit is charged (not even those with room), and settling it changes nothing."""
    limits = policy()
    await admitted(charge(limiter, limits, "b", Estimate(1500, 0)))
    before = await used(limiter, limits)

    refused = charge(limiter, limits, "b", Estimate(400, 200))  # b-tpm: 1500 + 600 > 2000
    reservation = await refused.admit()
    assert reservation is not None and not reservation.allowed
    assert reservation.decision.denied_by is not None and name(reservation.decision.denied_by.limit) == "b-tpm"
    assert refused.reservation is None
    assert await refused.settle(400, 200, cost("b", 400, 200)) is None
    assert await used(limiter, limits) == before


async def test_settle_charges_what_was_used_instead_of_the_estimate(limiter: Limiter) -> None:
    """``settle`` corrects every token limit and the budget from the estimate to the usage and
    cost reported, returns the change made to each limit, and gives the concurrency slot back;
    the request still counts as one request."""
    limits = policy()
    request = charge(limiter, limits, "a")
    await request.admit()
    deltas = await request.settle(80, 120, cost("a", 80, 120))
    assert deltas is not None and request.applied is not None
    spend = micro_usd(cost("a", 80, 120)) - micro_usd(cost("a", 100, 50))
    assert dict(zip(map(name, request.applied.limits), deltas, strict=True)) == {
        "rpm": 0,
        "tpm": 50,
        "concurrency": 0,
        "usd_per_day": spend,
        "a-tpm": 50,
    }
    assert await used(limiter, limits) == {
        "rpm": 1,
        "tpm": 200,
        "concurrency": 0,
        "usd_per_day": micro_usd(cost("a", 80, 120)),
        "a-tpm": 200,
        "b-tpm": 0,
    }


async def test_settle_without_token_limits_only_gives_the_slot_back(limiter: Limiter) -> None:
    """Where no limit counts tokens or dollars, settling changes no count (and says so with
    None) but still gives the concurrency slot back."""
    limits = policy({"rpm": 10, "concurrency": 1}, [])
    request = charge(limiter, limits, "a")
    await request.admit()
    assert await used(limiter, limits) == {"rpm": 1, "concurrency": 1}
    assert await request.settle(80, 20) is None
    assert await used(limiter, limits) == {"rpm": 1, "concurrency": 0}


async def test_move_to_a_model_with_other_limits_charges_them_and_refunds_the_old(limiter: Limiter) -> None:
    """A fallback to a model whose limits differ charges the estimate to the new model's limits
    (the budget at the new model's price) and refunds the old model's; the tier's limits hold
    the one request once. Settling then corrects the new model's limits."""
    limits = policy()
    request = charge(limiter, limits, "a")
    await request.admit()
    assert await request.move_to("b")
    assert request.model == "b"
    assert await used(limiter, limits) == {
        "rpm": 1,
        "tpm": 150,
        "concurrency": 1,
        "usd_per_day": micro_usd(cost("b", 100, 50)),
        "a-tpm": 0,
        "b-tpm": 150,
    }
    await request.settle(80, 20, cost("b", 80, 20))
    assert await used(limiter, limits) == {
        "rpm": 1,
        "tpm": 100,
        "concurrency": 0,
        "usd_per_day": micro_usd(cost("b", 80, 20)),
        "a-tpm": 0,
        "b-tpm": 100,
    }


async def test_a_move_the_new_limits_refuse_keeps_the_charge(limiter: Limiter) -> None:
    """When the new model's limits refuse the request, ``move_to`` says False and changes
    nothing: the charge stays on the old model's limits, for the old model."""
    limits = policy()
    await admitted(charge(limiter, limits, "b", Estimate(1900, 0)))
    request = charge(limiter, limits, "a")
    reservation = await request.admit()
    before = await used(limiter, limits)
    assert before["b-tpm"] == 1900 and before["a-tpm"] == 150

    assert not await request.move_to("b")  # b-tpm: 1900 + 150 > 2000
    assert request.model == "a" and request.reservation is reservation
    assert await used(limiter, limits) == before


@pytest.mark.parametrize("model", ["a", "a2"], ids=["same-model", "same-limits"])
async def test_a_move_to_the_same_limits_changes_no_count(limiter: Limiter, model: str) -> None:
    """Moving to the same model, or to a model under exactly the same limits, succeeds without
    touching the limits: the same reservation, now for that model."""
    limits = policy()
    request = charge(limiter, limits, "a")
    reservation = await request.admit()
    before = await used(limiter, limits)
    assert await request.move_to(model)
    assert request.model == model and request.reservation is reservation
    assert await used(limiter, limits) == before


async def test_a_move_from_a_model_without_limits_reserves_the_new_models(limiter: Limiter) -> None:
    """A request that held nothing (no limit on its model) charges the estimate to the limits of
    the model it falls back to, if they admit it; settling then corrects them."""
    limits = policy({}, SCOPED)
    request = charge(limiter, limits, "c")
    assert await request.admit() is None
    assert await request.move_to("b")
    assert request.reservation is not None and request.model == "b"
    assert await used(limiter, limits) == {"a-tpm": 0, "b-tpm": 150}
    await request.settle(80, 20)
    assert await used(limiter, limits) == {"a-tpm": 0, "b-tpm": 100}


@pytest.mark.parametrize(
    ("with_limiter", "tiers"),
    [
        (True, {"free": {}}),
        (True, {"free": {}, "paid": {"rpm": 10}}),
        (False, {"free": TIER}),
    ],
    ids=["no-limits-configured", "none-on-the-tier", "no-limiter"],
)
async def test_a_tenant_without_limits_holds_nothing(
    limiter: Limiter, with_limiter: bool, tiers: dict[str, Any]
) -> None:
    """A tenant no limit applies to (none configured, none on its tier, or no limiter) is
    admitted with no reservation (``admit`` returns None); moving and settling are no-ops."""
    request = TenantCharge(
        limiter if with_limiter else None, Policy(parse_config({"tiers": tiers})), ALICE, "a", ESTIMATE, PRICES.get
    )
    assert await request.admit() is None
    assert request.reservation is None and not request.counts_spend
    assert await request.move_to("b") and request.model == "b"
    assert await request.settle(80, 20, cost("b", 80, 20)) is None
    assert request.reservation is None


# -- fallbacks between models (issue 19: two defects these found) ------------------------------


@pytest.mark.parametrize(
    ("tier", "estimate"),
    [({"concurrency": 1}, ESTIMATE), ({"tpm": 1000}, Estimate(400, 200))],
    ids=["one-slot", "tpm-over-half"],
)
async def test_a_move_does_not_count_the_request_twice_on_the_limits_both_models_share(
    limiter: Limiter, tier: dict[str, Any], estimate: Estimate
) -> None:
    """A fallback to a model with other limits of its own is not refused by the tier's limits,
    which the request already holds its place on: it is the same request."""
    limits = policy(tier)
    request = charge(limiter, limits, "a", estimate)
    await admitted(request)
    before = await used(limiter, limits)
    assert await request.move_to("b")
    after = await used(limiter, limits)
    assert after == {**before, "a-tpm": 0, "b-tpm": estimate.total}


async def test_a_fallback_to_a_priced_model_under_the_same_budget_is_charged_its_cost(limiter: Limiter) -> None:
    """A request that falls back from an unpriced model to a priced one under the same limits is
    charged to the budget what it cost there, when settled as the proxy settles it (the cost
    only where ``counts_spend``)."""
    limits = policy({"usd_per_day": 1.0}, [])
    request = charge(limiter, limits, "house")
    await request.admit()
    assert await request.move_to("c") and request.model == "c"
    spent = cost("c", 80, 20) if request.counts_spend else 0.0
    await request.settle(80, 20, spent)
    assert await used(limiter, limits) == {"usd_per_day": micro_usd(cost("c", 80, 20))}
