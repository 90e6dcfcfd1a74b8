from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: everything later stages need to know about the caller's key."""

    key_id: str
    user: str
    tier: str
    # None: every configured model.
    models: frozenset[str] | None
    # Per-key overrides of the tier's limits, as sorted (name, value) pairs.
    limits: tuple[tuple[str, float], ...] | None = None
    team: str | None = None  # the team whose limits its keys share (None: none)

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models
