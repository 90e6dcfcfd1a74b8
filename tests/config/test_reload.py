"""What a reload takes from the file, what waits for a restart, and how the change is described."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quotagate.config import Config, ConfigError, parse_config
from quotagate.config._reload import RESTART_ONLY, describe_changes, keep_restart_settings, prepare_reload

MODEL = {"name": "gpt-4o-mini", "deployments": [{"provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}]}


def config(**values: Any) -> Config:
    return parse_config({"tiers": {"free": {"rpm": 2}}, "models": [MODEL], **values})


def test_settings_that_need_a_restart_keep_their_running_values() -> None:
    """The socket, processes, stores, limiter store settings and ledger stay as running; the rest
    is the file's, and the kept ones are named."""
    running = config(database="sqlite:///a.db", server={"port": 4000})
    new = config(
        database="sqlite:///b.db",
        redis="redis://127.0.0.1:6379/0",
        server={"port": 4001, "max_body_bytes": 1000},
        limiter={"max_queue": 5, "expected_output_tokens": 64},
        ledger={"batch_size": 7},
        tiers={"free": {"rpm": 5}},
    )
    kept, ignored = keep_restart_settings(new, running)
    assert ignored == ["server.port", "database", "redis", "limiter.max_queue", "ledger"]
    assert (kept.database, kept.redis, kept.server.port) == ("sqlite:///a.db", None, 4000)
    assert (kept.limiter.max_queue, kept.ledger) == (running.limiter.max_queue, running.ledger)
    assert (kept.server.max_body_bytes, kept.limiter.expected_output_tokens) == (1000, 64)
    assert kept.tiers["free"].rpm == 5


def test_every_restart_only_setting_is_a_setting() -> None:
    """Each name in RESTART_ONLY is a path into Config (a renamed setting would otherwise slip by)."""
    for path in RESTART_ONLY:
        value: Any = Config()
        for part in path.split("."):
            value = getattr(value, part)


def test_changes_are_described_by_section() -> None:
    """Models, tiers and limits by name, added/removed/changed; other settings by path."""
    old = config(limits=[{"scope": "user", "unit": "tokens", "amount": 10, "per": "day"}])
    new = config(
        tiers={"free": {"rpm": 3}, "paid": {"rpm": 60}},
        models=[{**MODEL, "name": "gpt-4.1"}],
        limits=[{"scope": "global", "unit": "requests", "amount": 100, "per": "minute", "name": "all"}],
        router={"max_attempts": 5},
        pricing={"gpt-4.1": {"input": 2, "output": 8}},
    )
    assert describe_changes(old, new) == [
        "tiers added: paid",
        "tiers changed: free",
        "models added: gpt-4.1",
        "models removed: gpt-4o-mini",
        "limits added: all",
        "limits removed: user tokens per day",
        "router.max_attempts changed",
        "pricing added: gpt-4.1",
    ]
    assert describe_changes(old, old) == []


def test_a_secret_missing_from_the_environment_fails_the_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that validates but names an unset variable is refused, naming the variable."""
    monkeypatch.delenv("QUOTAGATE_TEST_UNSET", raising=False)
    file = tmp_path / "quotagate.yaml"
    file.write_text("models: [{name: m, deployments: [{provider: openai, api_key: env:QUOTAGATE_TEST_UNSET}]}]\n")
    with pytest.raises(ConfigError, match="QUOTAGATE_TEST_UNSET is not set"):
        prepare_reload(file, config())
