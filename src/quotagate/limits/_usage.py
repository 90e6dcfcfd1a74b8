"""What a request costs on a limit: the one rule, for the gateway and the client library alike.

A request is described by its ``Usage`` (tokens in, tokens out, spend); a limit counts one unit of
it. The same function prices the estimate charged before the call and the usage learnt after it,
so settling charges exactly the difference, whichever limits a request met.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ._model import Limit, Unit


class Usage(NamedTuple):
    """A request's use of what limits count: estimated before the call, actual after it."""

    input_tokens: int = 0
    output_tokens: int = 0
    micro_usd: int = 0  # spend, in millionths of a dollar (budgets are limits like any other)


NOTHING = Usage()


def costs_on(limits: Sequence[Limit], usage: Usage) -> list[int]:
    """What ``usage`` costs on each of ``limits``: one request (one slot of a concurrency limit)
    whatever it used, or its tokens (all of them, in, or out), or its spend."""
    # Units are compared by value: a StrEnum member is a str, so this is a string comparison in
    # C, where looking a member up through its class is an attribute access several times as
    # slow, on every limit of every request (bench/NOTES.md). One loop for all the limits, not a
    # call per limit, for the same reason.
    costs = []
    for limit in limits:
        unit = limit.unit
        if unit == "requests" or unit == "concurrent":
            costs.append(1)
        elif unit == "tokens":
            costs.append(usage.input_tokens + usage.output_tokens)
        elif unit == "input_tokens":
            costs.append(usage.input_tokens)
        elif unit == "output_tokens":
            costs.append(usage.output_tokens)
        else:
            costs.append(usage.micro_usd)
    return costs


def cost_on(limit: Limit, usage: Usage) -> int:
    """What ``usage`` costs on ``limit`` (see costs_on)."""
    return costs_on((limit,), usage)[0]


# The values above are the units' own: a unit added to Unit without a rule here fails at import.
if {unit.value for unit in Unit} != {"requests", "concurrent", "tokens", "input_tokens", "output_tokens", "spend"}:
    raise RuntimeError("limits._usage.cost_on has no rule for a unit of Unit")
