"""Downgrades: which cheaper model serves a request that its tenant's limits would refuse.

A model's ``on_limit`` comes first, then the tier's. After a downgrade, only the new model's own
``on_limit`` can lead further (the configuration has no cycles of them, and a tier's applies once).
"""

from __future__ import annotations

from ..config import Config, OnLimit


class Downgrades:
    def __init__(self, config: Config) -> None:
        self._by_model = {m.name: m.on_limit for m in config.models if m.on_limit is not None}
        self._by_tier = {name: tier.on_limit for name, tier in config.tiers.items() if tier.on_limit is not None}
        self.configured = bool(self._by_model or self._by_tier)

    def first(self, tier: str, model: str) -> OnLimit | None:
        """The downgrade for a request of ``tier`` refused on ``model``: the model's, else the tier's."""
        on_limit = self._by_model.get(model)
        if on_limit is None:
            on_limit = self._by_tier.get(tier)
        return on_limit if on_limit is not None and on_limit.downgrade != model else None

    def following(self, model: str) -> OnLimit | None:
        """The downgrade after one to ``model`` was refused too: that model's own, if it has one."""
        return self._by_model.get(model)
