"""Reading a configuration file into a validated ``Config``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ._models import Config


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field and the problem."""


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    # pydantic reports list positions as numbers; a model's name reads better than models.3.
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            entry = node[item]
            label = entry.get("name") if isinstance(entry, dict) else None
            parts[-1:] = [f"{parts[-1]}[{label or item}]"] if parts else [f"[{item}]"]
            node = entry
            continue
        if isinstance(item, int) and item == 0 and isinstance(node, dict):
            continue  # one mapping where a list of them may stand (a class's rules): no position
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def format_validation_error(exc: ValidationError, data: Any) -> str:
    lines = []
    for err in exc.errors():
        # pydantic appends the model/function name for some errors; it means nothing to a user.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {_field_path(loc, data)}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def parse_config(data: Any) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("invalid configuration: the file must hold a mapping (key: value)")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {file}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from None
    return parse_config_text(text, file)


def parse_config_text(text: str, file: str | os.PathLike[str]) -> Config:
    """The configuration in ``text``, read from ``file`` (which errors name)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    return parse_config(data)
