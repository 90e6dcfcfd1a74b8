"""Reloading the configuration file into a running gateway (SIGHUP, POST /admin/reload).

A reload is all or nothing: the file is read, validated and its secrets resolved first; only a
configuration that passes all three replaces the running one, and a failure leaves the running
one serving. Some settings belong to things a gateway opens once (its socket and processes, the
database, Redis, and the limiter and ledger built on them): a reload keeps their running values
and says so, and they take effect at the next restart.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ._loader import ConfigError, parse_config_text
from ._models import Config, ScopedLimit
from ._secrets import missing_secrets

logger = logging.getLogger("quotagate.reload")

# Dotted paths into Config. The limiter's store settings and the ledger's batching are read once
# by objects that live as long as the process and are shared by the requests in flight.
RESTART_ONLY = (
    "server.host",
    "server.port",
    "server.workers",
    "database",
    "redis",
    "limiter.on_store_failure",
    "limiter.fallback_share",
    "limiter.timeout_ms",
    "limiter.max_queue",
    "ledger",
    "metrics_per_key",
    # The store, and the embedding model whose vectors the semantic index holds.
    "cache",
    # The exporter and its thread are made once, at start.
    "tracing",
)


@dataclass(frozen=True)
class Reload:
    """A validated configuration to serve from now on, and what it changes."""

    config: Config  # the file's, with the RESTART_ONLY settings as they are running
    changes: list[str]
    ignored: list[str]  # RESTART_ONLY settings the file changed: they wait for a restart

    def to_dict(self) -> dict[str, Any]:
        return {"changes": self.changes, "ignored_until_restart": self.ignored}


def _get(model: BaseModel, path: str) -> Any:
    value: Any = model
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _with(model: BaseModel, path: str, value: Any) -> Any:
    head, _, rest = path.partition(".")
    # model_copy skips validation: every value comes from a Config that passed it already.
    return model.model_copy(update={head: _with(getattr(model, head), rest, value) if rest else value})


def keep_restart_settings(new: Config, running: Config) -> tuple[Config, list[str]]:
    """``new`` with the RESTART_ONLY settings of ``running``, and those that ``new`` changed."""
    ignored = [path for path in RESTART_ONLY if _get(new, path) != _get(running, path)]
    kept = new
    for path in ignored:
        kept = _with(kept, path, _get(running, path))
    return kept, ignored


def _limit_name(spec: ScopedLimit) -> str:
    return spec.name or f"{spec.scope} {spec.unit} per {spec.per}"


def _named(section: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    lines = []
    for verb, names in (
        ("added", [n for n in after if n not in before]),
        ("removed", [n for n in before if n not in after]),
        ("changed", [n for n in after if n in before and before[n] != after[n]]),
    ):
        if names:
            lines.append(f"{section} {verb}: {', '.join(names)}")
    return lines


def _limits(before: list[ScopedLimit], after: list[ScopedLimit]) -> list[str]:
    # Entries have no identity but their content: a changed one is one removed and one added.
    old = Counter(spec.model_dump_json() for spec in before)
    new = Counter(spec.model_dump_json() for spec in after)
    lines = []
    for verb, gone, specs in (("added", new - old, after), ("removed", old - new, before)):
        names = [_limit_name(s) for s in specs if gone[s.model_dump_json()] > 0]
        if names:
            lines.append(f"limits {verb}: {', '.join(dict.fromkeys(names))}")
    return lines


def _fields(prefix: str, before: BaseModel, after: BaseModel) -> list[str]:
    paths = []
    for name in type(before).model_fields:
        old, new = getattr(before, name), getattr(after, name)
        if old == new:
            continue
        if isinstance(old, BaseModel) and isinstance(new, BaseModel):
            paths.extend(_fields(f"{prefix}{name}.", old, new))
        else:
            paths.append(prefix + name)
    return paths


def describe_changes(old: Config, new: Config) -> list[str]:
    """What ``new`` changes, one phrase per section: "models added: gpt-4.1", "tiers changed: free"."""
    lines: list[str] = []
    for name in Config.model_fields:
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name == "models":
            lines.extend(_named(name, {m.name: m for m in before}, {m.name: m for m in after}))
        elif name == "limits":
            lines.extend(_limits(before, after))
        elif isinstance(before, dict):
            lines.extend(_named(name, before, after))
        elif isinstance(before, BaseModel):
            lines.extend(f"{path} changed" for path in _fields(name + ".", before, after))
        else:
            lines.append(f"{name} changed")
    return lines


def prepare_reload(
    source: str | os.PathLike[str], running: Config, environ: Mapping[str, str] | None = None
) -> tuple[Reload, str]:
    """Read and check ``source`` against the running configuration: the Reload, and the text it
    was read from (a caller that hands the configuration on hands on exactly what was checked).
    Raises ConfigError naming every problem."""
    file = Path(source)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from None
    new = parse_config_text(text, file)
    problems = missing_secrets(new, environ)
    if problems:
        raise ConfigError("; ".join(problems))
    kept, ignored = keep_restart_settings(new, running)
    return Reload(kept, describe_changes(running, kept), ignored), text


def one_line(message: str) -> str:
    """A multi-line ConfigError message as one log line."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def log_reloaded(reload: Reload, source: str | os.PathLike[str]) -> None:
    what = "; ".join(reload.changes) or "nothing changed"
    logger.info(f"configuration reloaded from {source}: {what}")
    if reload.ignored:
        logger.warning(
            f"configuration reload: {', '.join(reload.ignored)} changed in {source} but take effect "
            "only at restart; the running values are kept"
        )


def log_reload_failed(error: ConfigError, source: str | os.PathLike[str] | None) -> None:
    where = f" from {source}" if source is not None else ""
    logger.error(
        f"configuration reload{where} failed, still serving the previous configuration: {one_line(str(error))}"
    )
