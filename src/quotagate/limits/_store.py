from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ._model import Decision, Limit, LimitStatus


class Store(Protocol):
    """Where limits keep their state. Both stores implement exactly the same semantics."""

    async def acquire(self, limits: Sequence[Limit], costs: Sequence[int], lease: str | None = None) -> Decision:
        """Charge every limit its cost, or none of them (and say which limit refused)."""
        ...

    async def settle(self, limits: Sequence[Limit], deltas: Sequence[int], windows: Sequence[float]) -> None:
        """Add (or refund) the difference between an estimate and what was actually used."""
        ...

    async def release(self, limits: Sequence[Limit], lease: str) -> None: ...

    async def renew(self, limits: Sequence[Limit], lease: str) -> None: ...

    async def status(self, limits: Sequence[Limit]) -> tuple[LimitStatus, ...]: ...

    async def reset(self, limits: Sequence[Limit]) -> None: ...

    async def aclose(self) -> None: ...
