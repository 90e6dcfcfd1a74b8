"""Which limits apply to a request, and the keys their counts are stored under."""

from __future__ import annotations

from typing import Any

from quotagate.auth import Principal
from quotagate.config import parse_config
from quotagate.policy import Policy

ALICE = Principal("key1", "alice", "free", None, None)
DAILY = {"scope": "user", "unit": "tokens", "amount": 1000, "per": "day"}


def keys(limits: list[dict[str, Any]]) -> list[str]:
    """The storage keys of ``limits`` on a request of Alice's, in order."""
    applied = Policy(parse_config({"tiers": {"free": {}}, "limits": limits})).limits_for(ALICE, "gpt-4o-mini")
    return [limit.key for limit in applied.limits]


def test_a_scoped_limit_keeps_its_key_whatever_comes_before_it() -> None:
    """An unnamed limits[] entry is stored under the same key when others are added before it or
    removed, and when its amount changes (a reload keeps its count); entries alike but for their
    match, algorithm or order among equals never share one."""
    [alone] = keys([DAILY])
    _, crowded = keys(
        [{"scope": "global", "unit": "requests", "amount": 5, "per": "second"}, {**DAILY, "amount": 2000}]
    )
    assert crowded == alone
    limits = [
        DAILY,
        {**DAILY, "match": {"tier": ["free"]}},
        {**DAILY, "algorithm": "sliding-window"},
        {**DAILY, "amount": 5},
    ]
    assert len(set(keys(limits))) == 4
