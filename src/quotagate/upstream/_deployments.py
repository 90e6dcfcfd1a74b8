"""Deployments resolved for the request path.

Everything that can be worked out once (the URL, the auth header with the resolved key, the
label, the provider's limits as engine limits) is worked out at start.

Azure OpenAI differs only here: its URL names the deployment and the API version
(``{base_url}/openai/deployments/{name}/chat/completions?api-version=...``), and its key goes in an
``api-key`` header (or a Microsoft Entra ID token in ``Authorization: Bearer``). Its answers and
rate-limit headers are OpenAI's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

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
    proxy: str | None = None  # the deployment's own HTTP proxy (None: the environment's, if any)
    url_path: str = ""  # between base_url and an endpoint's path (azure: /openai/deployments/NAME)
    url_query: str = ""  # after the endpoint's path (azure: ?api-version=...)
    # The API the deployment speaks: "openai" (chat completions and the rest), or "anthropic"
    # (the Messages API: requests and answers are translated where the client speaks the other).
    api: str = "openai"
    _url_prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_url_prefix", self.base_url + self.url_path)

    def url(self, path: str) -> str:
        """Where an endpoint (``/chat/completions``, ...) of this deployment is."""
        if self.url_query and "?" in path:  # a passthrough's own query (azure's api-version joins it)
            return self._url_prefix + path + "&" + self.url_query[1:]
        return self._url_prefix + path + self.url_query


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
    if deployment.azure_ad_token is not None:
        what += f"\n{deployment.azure_ad_token}"
    return hashlib.sha256(what.encode()).hexdigest()[:12]


def _auth_headers(deployment: Deployment, where: str) -> dict[str, str]:
    key = resolve_secret(deployment.api_key, f"{where}.api_key")
    if deployment.provider == "anthropic":
        headers = {"anthropic-version": deployment.anthropic_version}
        if key is not None:
            headers["x-api-key"] = key
        return headers
    if deployment.provider != "azure":
        return {} if key is None else {"Authorization": f"Bearer {key}"}
    if key is not None:
        return {"api-key": key}
    token = resolve_secret(deployment.azure_ad_token, f"{where}.azure_ad_token")
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _resolve(model: ModelConfig, index: int, deployment: Deployment, repeat: int = 0) -> DeploymentTarget:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    headers.update(_auth_headers(deployment, f"models[{model.name}].deployments[{index}]"))
    provider_model = deployment.model or model.name
    url_path = url_query = ""
    if deployment.provider == "azure":
        # Azure ignores the body's model: the deployment named in the URL serves.
        # base_url is the resource's endpoint, with or without the /openai that the SDK adds.
        root = "" if deployment.url.endswith("/openai") else "/openai"
        url_path = f"{root}/deployments/{quote(provider_model, safe='')}"
        url_query = f"?api-version={quote(deployment.api_version or '', safe='')}"
    elif deployment.provider == "anthropic" and not deployment.url.endswith("/v1"):
        url_path = "/v1"  # base_url as the Anthropic SDK takes it: https://api.anthropic.com
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
        proxy=resolve_secret(deployment.proxy, f"models[{model.name}].deployments[{index}].proxy")
        if deployment.proxy is not None and deployment.proxy.startswith("env:")
        else deployment.proxy,
        url_path=url_path,
        url_query=url_query,
        api="anthropic" if deployment.provider == "anthropic" else "openai",
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
