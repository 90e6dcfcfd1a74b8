"""Resolving ``env:NAME`` references, at start, with an error naming what is missing."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ._loader import ConfigError
from ._models import Config


def resolve_secret(ref: str | None, where: str, environ: Mapping[str, str] | None = None) -> str | None:
    if ref is None:
        return None
    env = os.environ if environ is None else environ
    name = ref.removeprefix("env:")
    value = env.get(name)
    if not value:
        raise ConfigError(f"{where}: environment variable {name} is not set")
    return value


def _secret_refs(config: Config) -> list[tuple[str, str | None]]:
    refs: list[tuple[str, str | None]] = [("master_key", config.master_key), ("metrics.token", config.metrics.token)]
    for model in config.models:
        for index, deployment in enumerate(model.deployments):
            refs.append((f"models[{model.name}].deployments[{index}].api_key", deployment.api_key))
            if deployment.proxy is not None and deployment.proxy.startswith("env:"):
                refs.append((f"models[{model.name}].deployments[{index}].proxy", deployment.proxy))
            if deployment.azure_ad_token is not None:
                refs.append((f"models[{model.name}].deployments[{index}].azure_ad_token", deployment.azure_ad_token))
    if config.tracing.enabled:
        # Only the env:NAME values: a header without a credential may be written out in the file.
        refs.extend(
            (f"tracing.headers.{name}", value)
            for name, value in config.tracing.headers.items()
            if value.startswith("env:")
        )
    return refs


def missing_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret reference the environment cannot satisfy, as 'field: problem' lines."""
    problems: list[str] = []
    for where, ref in _secret_refs(config):
        try:
            resolve_secret(ref, where, environ)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def known_secrets(config: Config, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The values of the configuration's secrets (the master key, the metrics token, the upstream
    keys), each once: what the gateway must never relay. One that is not set is left out."""
    values: dict[str, None] = {}
    for where, ref in _secret_refs(config):
        try:
            value = resolve_secret(ref, where, environ)
        except ConfigError:
            continue
        if value:
            values[value] = None
    return tuple(values)
