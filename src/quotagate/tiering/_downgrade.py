"""Downgrades: which cheaper model serves a request that its tenant's limits would refuse.

A model's ``on_limit`` comes first, then the tier's; a tier's serves chat requests only (its
cheaper model is a chat model: an embeddings request refused on its model is refused). After a
downgrade was refused too, only the new model's own ``on_limit`` can lead further (the
configuration has no cycles of them). ``at_budget`` is looked up on its own: a model's
``on_limit`` without one leaves the tier's in force.
"""

from __future__ import annotations

from ..config import Config, OnLimit


class Downgrades:
    def __init__(self, config: Config) -> None:
        self._by_model = {m.name: m.on_limit for m in config.models if m.on_limit is not None}
        self._by_tier = {name: tier.on_limit for name, tier in config.tiers.items() if tier.on_limit is not None}
        self.configured = bool(self._by_model or self._by_tier)

    def first(self, tier: str, model: str, chat: bool) -> OnLimit | None:
        """The downgrade for a request of ``tier`` refused on ``model``: the model's, else (for a
        chat request) the tier's."""
        on_limit = self._by_model.get(model)
        if on_limit is None and chat:
            on_limit = self._by_tier.get(tier)
        return on_limit if on_limit is not None and on_limit.downgrade != model else None

    def at_budget(self, tier: str, model: str, chat: bool) -> OnLimit | None:
        """The downgrade of a request admitted on ``model`` once a budget is nearly spent: the
        model's ``on_limit`` if it sets ``at_budget``, else (for a chat request) the tier's."""
        for on_limit in (self._by_model.get(model), self._by_tier.get(tier) if chat else None):
            if on_limit is not None and on_limit.at_budget is not None and on_limit.downgrade != model:
                return on_limit
        return None

    def following(self, model: str) -> OnLimit | None:
        """The downgrade after one to ``model`` was refused too: that model's own, if it has one."""
        return self._by_model.get(model)
