"""What a request costs on a limit (one rule for every caller), and the reservation that holds it:
settle, refund, move, release, ``async with`` (issue 19)."""

from __future__ import annotations

import pytest

from quotagate.limits import (
    Algorithm,
    InProcessStore,
    Limit,
    Limiter,
    Unit,
    Usage,
    cost_on,
    costs_on,
)

from .conftest import FakeClock, StoreFactory

RPM = Limit("r:rpm", Unit.REQUESTS, 10)
TPM = Limit("r:tpm", Unit.TOKENS, 1000)
ITPM = Limit("r:itpm", Unit.INPUT_TOKENS, 1000)
OTPM = Limit("r:otpm", Unit.OUTPUT_TOKENS, 1000)

SLOTS = Limit("r:conc", Unit.CONCURRENT, 2, Algorithm.CONCURRENCY)


def test_what_a_request_costs_on_each_unit() -> None:
    usage = Usage(input_tokens=120, output_tokens=30, micro_usd=4500)
    assert cost_on(RPM, usage) == 1
    assert cost_on(SLOTS, usage) == 1
    assert cost_on(TPM, usage) == 150
    assert cost_on(ITPM, usage) == 120
    assert cost_on(OTPM, usage) == 30
    assert cost_on(Limit("r:spend", Unit.SPEND, 10**9, period=86400), usage) == 4500
    # A request costs one request however little it used: settling never moves a request count.
    assert costs_on([RPM, TPM], Usage()) == [1, 0]


async def _used(limiter: Limiter, limits: list[Limit]) -> list[int]:
    return [status.used for status in await limiter.status(limits)]


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return Limiter(InProcessStore(clock))


async def test_settling_charges_the_difference_from_the_estimate(limiter: Limiter) -> None:
    limits = [RPM, TPM, ITPM, OTPM]
    reservation = await limiter.reserve(limits, Usage(100, 50))
    assert reservation.allowed
    assert await _used(limiter, limits) == [1, 150, 100, 50]
    assert await reservation.settle(Usage(90, 20)) == [0, -40, -10, -30]
    assert await _used(limiter, limits) == [1, 110, 90, 20]
    # Settling again moves the books from what they hold now, not from the estimate.
    assert await reservation.settle(Usage(95, 25)) == [0, 10, 5, 5]
    assert await _used(limiter, limits) == [1, 120, 95, 25]


async def test_a_refund_gives_everything_back(limiter: Limiter) -> None:
    limits = [RPM, TPM, SLOTS]
    reservation = await limiter.reserve(limits, Usage(100, 50))
    assert await _used(limiter, limits) == [1, 150, 1]
    await reservation.refund()
    assert await _used(limiter, limits) == [0, 0, 0]


async def test_a_refused_reservation_holds_nothing(limiter: Limiter) -> None:
    small = Limit("r:small", Unit.TOKENS, 10)
    reservation = await limiter.reserve([RPM, small], Usage(100, 0))
    assert not reservation.allowed and reservation.decision.never_fits
    assert await _used(limiter, [RPM, small]) == [0, 0]
    assert await reservation.settle(Usage(5, 5)) == [0, 0]
    await reservation.refund()
    assert await _used(limiter, [RPM, small]) == [0, 0]


async def test_moving_charges_the_new_limits_and_refunds_the_old(limiter: Limiter) -> None:
    other_rpm, other_tpm = Limit("o:rpm", Unit.REQUESTS, 10), Limit("o:tpm", Unit.TOKENS, 1000)
    reservation = await limiter.reserve([RPM, TPM], Usage(100, 50))
    moved = await reservation.move([other_rpm, other_tpm], Usage(100, 60))
    assert moved is not None and moved.held == Usage(100, 60)
    await moved.finish_move()
    assert await _used(limiter, [RPM, TPM, other_rpm, other_tpm]) == [0, 0, 1, 160]


async def test_a_move_the_new_limits_refuse_keeps_the_old_reservation(limiter: Limiter) -> None:
    full = Limit("o:full", Unit.REQUESTS, 1)
    assert (await limiter.reserve([full], Usage())).allowed
    reservation = await limiter.reserve([RPM, TPM], Usage(100, 50))
    assert await reservation.move([full]) is None
    assert await _used(limiter, [RPM, TPM, full]) == [1, 150, 1]


async def test_async_with_gives_the_slot_back_however_the_block_ends(limiter: Limiter) -> None:
    reservation = await limiter.reserve([RPM, SLOTS], Usage(1, 1))

    async def call_that_fails() -> None:
        async with reservation:
            assert reservation.allowed and await _used(limiter, [SLOTS]) == [1]
            raise RuntimeError("the provider call failed")

    with pytest.raises(RuntimeError):
        await call_that_fails()
    assert await _used(limiter, [RPM, SLOTS]) == [1, 0]  # the request still counted; its slot is back
    await reservation.release()  # once only
    assert await _used(limiter, [SLOTS]) == [0]


async def test_the_same_rule_on_every_store(make_store: StoreFactory, clock: FakeClock) -> None:
    limiter = Limiter(make_store(clock), timeout=5.0)
    limits = [Limit("s:rpm", Unit.REQUESTS, 10), Limit("s:tpm", Unit.TOKENS, 1000)]
    reservation = await limiter.reserve(limits, Usage(300, 200))
    await reservation.settle(Usage(250, 100))
    statuses = await limiter.status(limits)
    assert [s.used for s in statuses] == [1, 350]
    await limiter.aclose()
