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


def missing_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret reference the environment cannot satisfy, as 'field: problem' lines."""
    problems: list[str] = []
    refs: list[tuple[str, str | None]] = [("master_key", config.master_key), ("metrics.token", config.metrics.token)]
    for model in config.models:
        for index, deployment in enumerate(model.deployments):
            refs.append((f"models[{model.name}].deployments[{index}].api_key", deployment.api_key))
    for where, ref in refs:
        try:
            resolve_secret(ref, where, environ)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems
