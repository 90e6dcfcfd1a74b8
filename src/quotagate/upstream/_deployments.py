"""Deployments resolved for the request path.

Everything that can be worked out once (the URL, the auth header with the resolved key, the
label, the provider's limits as engine limits) is worked out at start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from .._version import __version__
from ..config import Config, Deployment, ModelConfig, resolve_secret
from ..limits import Algorithm, Limit, Unit, one_second_burst

USER_AGENT = f"quotagate/{__version__}"


@dataclass(frozen=True, slots=True)
class DeploymentTarget:
    id: str  # "model@identity" (see _identity): the same on every node, and across reloads
    model: str  # the gateway's model name
    provider_model: str  # the model's name at the provider
    provider: str
    base_url: str
    headers: Mapping[str, str]
    weight: float
    priority: int
    connect_timeout: float
    first_byte_timeout: float
    chunk_timeout: float
    total_timeout: float | None
    label: str
    limits: tuple[Limit, ...] = ()  # the provider's RPM/TPM for this key
    stream_usage: bool = True
    label_bytes: bytes = b""  # the label as the x-quotagate-deployment header carries it

    def url(self, path: str) -> str:
        return self.base_url + path


def _provider_limits(target_id: str, deployment: Deployment, label: str) -> tuple[Limit, ...]:
    tag = "{d:" + target_id.replace("{", "(").replace("}", ")") + "}"
    limits = []
    if deployment.rpm:
        burst = deployment.burst or one_second_burst(deployment.rpm, 60.0)
        # Providers enforce an RPM over sub-minute periods (OpenAI: 60,000 RPM "may be enforced as
        # 1,000 per second"), so requests go out in bursts of up to one second's share, and the
        # rate is held so that no 60 s window ever holds more than rpm (exact_period). The rate
        # and burst are in the key so that a changed configuration starts a fresh bucket.
        limits.append(
            Limit(
                f"{tag}:rpm:{deployment.rpm}b{burst}",
                Unit.REQUESTS,
                deployment.rpm,
                Algorithm.GCRA,
                60.0,
                burst=burst,
                label=f"requests per minute (RPM) of deployment {label}",
                scope="deployment",
                exact_period=True,
            )
        )
    if deployment.tpm:
        # A token bucket of one minute's tokens, refilling continuously, as providers document
        # their TPM: a single request may use up to the whole tpm.
        limits.append(
            Limit(
                f"{tag}:tpm:{deployment.tpm}",
                Unit.TOKENS,
                deployment.tpm,
                Algorithm.GCRA,
                60.0,
                label=f"tokens per minute (TPM) of deployment {label}",
                scope="deployment",
            )
        )
    return tuple(limits)


def _identity(deployment: Deployment, provider_model: str, repeat: int) -> str:
    """Where a deployment sends and as whom (its key's reference, never the key itself), hashed:
    a deployment keeps its id, and with it its breaker and its provider-limit counts, when others
    are added, removed or reordered (a reload would have moved them onto another key's
    deployment had they followed the position). ``repeat`` tells apart the same one listed twice."""
    what = f"{deployment.provider}\n{deployment.url}\n{provider_model}\n{deployment.api_key}\n{repeat}"
    return hashlib.sha256(what.encode()).hexdigest()[:12]


def _resolve(model: ModelConfig, index: int, deployment: Deployment, repeat: int = 0) -> DeploymentTarget:
    key = resolve_secret(deployment.api_key, f"models[{model.name}].deployments[{index}].api_key")
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    provider_model = deployment.model or model.name
    target_id = f"{model.name}@{_identity(deployment, provider_model, repeat)}"
    # Unique per deployment (metrics series, ledger groups): two models may have a first
    # deployment of the same provider model.
    label = f"{model.name}#{index} ({deployment.provider}/{provider_model})"
    return DeploymentTarget(
        id=target_id,
        model=model.name,
        provider_model=provider_model,
        provider=deployment.provider,
        base_url=deployment.url,
        headers=headers,
        weight=deployment.weight,
        priority=deployment.priority,
        connect_timeout=deployment.connect_timeout,
        first_byte_timeout=deployment.first_byte_timeout or deployment.timeout,
        chunk_timeout=deployment.chunk_timeout or deployment.timeout,
        total_timeout=deployment.total_timeout,
        label=label,
        limits=_provider_limits(target_id, deployment, label),
        stream_usage=deployment.stream_usage,
        label_bytes=label.encode("latin-1", "replace"),
    )


class ModelRoutes:
    """The configured models and their deployments, best priority first."""

    def __init__(self, config: Config) -> None:
        self.models: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self._targets: dict[str, list[DeploymentTarget]] = {}
        for model in config.models:
            targets: list[DeploymentTarget] = []
            seen: dict[tuple[str, str | None, str | None, str | None], int] = {}
            for index, deployment in enumerate(model.deployments):
                same = (deployment.provider, deployment.base_url, deployment.model, deployment.api_key)
                seen[same] = seen.get(same, -1) + 1
                targets.append(_resolve(model, index, deployment, seen[same]))
            self._targets[model.name] = sorted(targets, key=lambda t: t.priority)
        self.by_id = {t.id: t for targets in self._targets.values() for t in targets}

    def deployments(self, model: str) -> list[DeploymentTarget]:
        return self._targets.get(model, [])
