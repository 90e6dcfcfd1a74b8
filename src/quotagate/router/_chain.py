"""The models that may serve a request, in order: the model, then its fallbacks; a request too
long for the model's context window starts at its context-window fallback instead. A routed
model's request goes up through its classes' models (``through``)."""

from __future__ import annotations

from ..limits import Unit
from ..tokens import Estimate
from ..upstream import ModelRoutes


class ModelChains:
    def __init__(self, routes: ModelRoutes) -> None:
        self._routes = routes
        # The chain of a model without a context-window fallback never depends on the request.
        self._fixed: dict[str, list[str]] = {
            model: self._from(model) for model, config in routes.models.items() if not config.context_window_fallback
        }
        self._needs_estimate: dict[str, bool] = {}
        for model, config in routes.models.items():
            reachable = [model, *config.fallbacks]
            if config.context_window_fallback:
                reachable.append(config.context_window_fallback)
            self._needs_estimate[model] = config.context_window is not None or any(
                limit.unit is not Unit.REQUESTS
                for name in reachable
                for target in routes.deployments(name)
                for limit in target.limits
            )

    def needs_estimate(self, model: str) -> bool:
        """Whether routing this model needs the request's tokens (TPM limits, context windows)."""
        return self._needs_estimate.get(model, False)

    def chain(self, model: str, estimate: Estimate) -> list[str]:
        """The models to try in order: the context-window fallback first when the request is too
        long for the model, then the model and its fallbacks."""
        fixed = self._fixed.get(model)
        if fixed is not None:
            return fixed
        config = self._routes.models[model]
        if (
            config.context_window is not None
            and config.context_window_fallback is not None
            and estimate.prompt + estimate.output > config.context_window
        ):
            return self._from(config.context_window_fallback)
        return self._from(model)

    def through(self, models: tuple[str, ...], estimate: Estimate) -> list[str]:
        """The chains of ``models`` one after the other (a routed request's class's model, then
        the stronger classes'), each model once; a model whose context window the request (its
        prompt and the most it may write) does not fit is passed over while a stronger one follows."""
        chain: list[str] = []
        for position, model in enumerate(models):
            window = self._routes.models[model].context_window
            if window is not None and estimate.total > window and position < len(models) - 1:
                continue
            chain.extend(m for m in self.chain(model, estimate) if m not in chain)
        return chain

    def _from(self, start: str) -> list[str]:
        """``start`` and its fallbacks, each once."""
        chain = [start, *self._routes.models[start].fallbacks]
        seen: set[str] = set()
        return [m for m in chain if not (m in seen or seen.add(m))]  # type: ignore[func-returns-value]
