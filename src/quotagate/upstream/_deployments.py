"""Deployments resolved for the request path, and choosing one for a request.

Everything that can be worked out once (the full URL, the auth header with the resolved key, the
label) is worked out at start, so a request only picks a deployment and goes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .._version import __version__
from ..config import Config, Deployment, ModelConfig, resolve_secret

USER_AGENT = f"quotagate/{__version__}"


@dataclass(frozen=True, slots=True)
class DeploymentTarget:
    model: str  # the gateway's model name
    provider_model: str  # the model's name at the provider
    provider: str
    base_url: str
    headers: Mapping[str, str]
    weight: float
    priority: int
    read_timeout: float
    connect_timeout: float
    label: str
    stream_usage: bool = True

    def url(self, path: str) -> str:
        return self.base_url + path


def _resolve(model: ModelConfig, index: int, deployment: Deployment) -> DeploymentTarget:
    key = resolve_secret(deployment.api_key, f"models[{model.name}].deployments[{index}].api_key")
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    provider_model = deployment.model or model.name
    return DeploymentTarget(
        model=model.name,
        provider_model=provider_model,
        provider=deployment.provider,
        base_url=deployment.url,
        headers=headers,
        weight=deployment.weight,
        priority=deployment.priority,
        read_timeout=deployment.timeout,
        connect_timeout=deployment.connect_timeout,
        label=f"{deployment.provider}/{provider_model}#{index}",
        stream_usage=deployment.stream_usage,
    )


class ModelRoutes:
    """The configured models and, for each, its deployments grouped by priority."""

    def __init__(self, config: Config, rng: Callable[[], float] = random.random) -> None:
        self._rng = rng
        self.models: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self._targets: dict[str, list[DeploymentTarget]] = {}
        for model in config.models:
            targets = [_resolve(model, i, d) for i, d in enumerate(model.deployments)]
            self._targets[model.name] = sorted(targets, key=lambda t: t.priority)

    def deployments(self, model: str) -> list[DeploymentTarget]:
        return self._targets.get(model, [])

    def choose(self, model: str) -> DeploymentTarget:
        """Weighted random among the deployments of the best (lowest) priority."""
        targets = self._targets[model]
        best = targets[0].priority
        candidates = [t for t in targets if t.priority == best]
        if len(candidates) == 1:
            return candidates[0]
        total = sum(t.weight for t in candidates)
        point = self._rng() * total
        for target in candidates:
            point -= target.weight
            if point < 0:
                return target
        return candidates[-1]
