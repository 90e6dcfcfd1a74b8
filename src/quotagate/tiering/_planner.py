"""The route plan stage: a request for a routed model gets a class, and the class's model serves it.

Classifiers run cheapest first. The rules (_rules) come first: the strongest class whose rules a
request meets gets it. A request no rule claims goes to the semantic classifier (_semantic), when
the classes have examples: the class whose examples it is nearest to (their centroid), if it is
similar enough (``min_similarity``). Anything else gets the default class.

The plan names the models to try in order: the class's, then the stronger classes' (the router
moves a request up this list when a model is down or its context window too small, never down),
and the strongest class's model, at whose price the ledger records what the request would have
cost without routing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..auth import Principal
from ..cache import normalized
from ..config import Config, RouteConfig
from ._rules import ClassRules, RequestFacts

if TYPE_CHECKING:
    from ..cache._embedder import Embedder, Vector
    from ._semantic import ExampleIndex

logger = logging.getLogger("quotagate.tiering")

# After the examples failed to embed (an embeddings model that was down at start), how long
# until a request tries again; meanwhile requests the rules leave get the default class.
_RETRY_SECONDS = 30.0


@dataclass(slots=True)
class RoutePlan:
    """Where one request for a routed model goes, and why."""

    routed: str  # the name the client asked for
    route_class: str
    model: str  # the class's model
    models: tuple[str, ...]  # the class's model, then the stronger classes': the order to try them
    strongest: str  # the strongest class's model: what the request is compared with in the ledger
    reason: str  # what decided, for the response header: "rule: keywords", "semantic 0.91", "default"
    detail: str  # what it found, for people: "keywords 'why'", "nearest example ..."
    # The question as embedded, and its vector: the semantic cache looks the same text up without
    # embedding it again.
    text: str | None = None
    vector: Vector | None = None


class _RoutedModel:
    """One routed model's classes, compiled."""

    def __init__(self, name: str, route: RouteConfig) -> None:
        self.name = name
        self.default = route.default_class
        self.min_similarity = route.min_similarity
        self.model_of = {c.name: c.model for c in route.classes}
        names = [c.name for c in route.classes]
        models = [c.model for c in route.classes]
        self.models_from = {name: tuple(dict.fromkeys(models[i:])) for i, name in enumerate(names)}
        self.strongest = models[-1]
        # The rule sets, strongest class first: where several classes' rules hold, the stronger wins.
        self.rules = [(c.name, ClassRules(rules)) for c in reversed(route.classes) for rules in c.rules]
        # Prompt tokens are counted with the cheapest class's tokenizer: the rules' bounds are
        # about the request, and one count serves every class.
        self.token_model = models[0]
        self.index: ExampleIndex | None = None
        examples = [(c.name, text) for c in route.classes for text in c.examples or ()]
        if examples:
            from ._semantic import ExampleIndex  # numpy: only where examples are configured

            self.index = ExampleIndex(examples)

    def plan(self, route_class: str, reason: str, detail: str) -> RoutePlan:
        model = self.model_of[route_class]
        return RoutePlan(self.name, route_class, model, self.models_from[route_class], self.strongest, reason, detail)


class RoutePlanner:
    """The routed models of a configuration; ``plan`` classifies one request. ``embedder``: the
    gateway's embedding model (the semantic cache's), needed where classes have examples."""

    def __init__(self, config: Config, embedder: Embedder | None = None, earlier: RoutePlanner | None = None) -> None:
        self._routed = {m.name: _RoutedModel(m.name, m.route) for m in config.models if m.route is not None}
        self.embedder = embedder
        # Every example's vector by its text, kept from ``earlier`` (the planner of the
        # configuration a reload replaces) while the embedding model is the same.
        self._vectors: dict[str, Vector] = (
            earlier._vectors if earlier is not None and earlier.embedder is embedder else {}
        )
        self._loading = asyncio.Lock()  # one load at a time: requests that wait for it share it
        self._next_load = 0.0
        self._failing = False

    @staticmethod
    def uses_examples(config: Config) -> bool:
        """Whether a routed model of ``config`` classifies by examples (and so needs an embedder)."""
        return any(
            route_class.examples for m in config.models if m.route is not None for route_class in m.route.classes
        )

    def routes(self, model: str) -> bool:
        return model in self._routed

    @property
    def tokenizer_models(self) -> set[str]:
        """The models whose tokenizers count the rules' prompt tokens (to load before requests)."""
        return {routed.token_model for routed in self._routed.values()}

    async def start(self) -> None:
        """Embed every routed model's examples (at start, and at a reload, before it serves)."""
        await self._load()

    async def plan(self, model: str, body: dict[str, Any], principal: Principal) -> RoutePlan:
        """The class and model for ``body``, a chat request for the routed ``model``."""
        routed = self._routed[model]
        facts = RequestFacts(body, principal, routed.token_model)
        for route_class, rules in routed.rules:
            found = rules.match(facts)
            if found is not None:
                names = ", ".join(what.split(" ", 1)[0] for what in found)
                return routed.plan(route_class, f"rule: {names}", "; ".join(found))
        if routed.index is None or self.embedder is None:
            return routed.plan(routed.default, "default", "no rule matched")
        text = normalized(facts.text)
        if not text:
            return routed.plan(routed.default, "default", "no rule matched, and no question to compare")
        if not routed.index.loaded and not await self._load():
            return routed.plan(routed.default, "default", "no rule matched; the examples are not embedded yet")
        try:
            vector = await self.embedder.embed(text)
        except Exception as exc:  # the classifier is an optimisation: a failing model means the default
            self._failed(exc)
            return routed.plan(
                routed.default, "default", f"no rule matched; the embedding failed ({type(exc).__name__})"
            )
        self._recovered()
        nearest = routed.index.nearest(vector)
        detail = f"{nearest.route_class}'s examples at {nearest.similarity:.3f} (nearest: {nearest.example!r})"
        if nearest.similarity >= routed.min_similarity:
            plan = routed.plan(nearest.route_class, f"semantic {nearest.similarity:.2f}", detail)
        else:
            plan = routed.plan(
                routed.default,
                f"default, semantic {nearest.similarity:.2f}",
                f"{detail}, under min_similarity {routed.min_similarity}",
            )
        plan.text, plan.vector = text, vector
        return plan

    async def _load(self) -> bool:
        """Embed the examples not embedded yet; False while that fails (retried after a while)."""
        async with self._loading:
            if self.embedder is None or time.monotonic() < self._next_load:
                return False
            try:
                for routed in self._routed.values():
                    if routed.index is not None and not routed.index.loaded:
                        await routed.index.load(self.embedder, self._vectors)
            except Exception as exc:
                self._next_load = time.monotonic() + _RETRY_SECONDS
                self._failed(exc)
                return False
            return True

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:  # once per outage, not once per request
            self._failing = True
            logger.warning("the route classifier's embedding model failed: %s: %s", type(exc).__name__, exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("the route classifier's embedding model answers again")
