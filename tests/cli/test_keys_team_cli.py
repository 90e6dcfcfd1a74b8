"""`quotagate keys` with teams: --team on create, update and list, checked against the configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from quotagate.cli import app

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "quotagate.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'keys.db'}\n"
        "tiers: {free: {rpm: 60}}\n"
        "teams: {research: {rpm: 100}, support: {tpd: 50000}}\n"
        "models:\n  - name: gpt-4o-mini\n    deployments: [{provider: openai, api_key: env:OPENAI_API_KEY}]\n"
    )
    return path


def keys(config_file: Path, *args: str) -> Any:
    return runner.invoke(app, ["keys", *args, "-c", str(config_file)], terminal_width=200)


def create(config_file: Path, user: str, *options: str) -> str:
    result = keys(config_file, "create", "--user", user, "--tier", "free", *options)
    assert result.exit_code == 0, result.output
    return str(result.output.split()[2])


def listed(config_file: Path, *options: str) -> list[dict[str, Any]]:
    result = keys(config_file, "list", "--json", *options)
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output))


def test_keys_create_and_list_with_a_team(config_file: Path) -> None:
    """create --team puts the key in the team; list --team lists that team's keys, and shows the team."""
    created = keys(config_file, "create", "--user", "alice", "--tier", "free", "--team", "research")
    assert created.exit_code == 0, created.output
    assert "team: research" in created.output
    alice = created.output.split()[2]
    bob = create(config_file, "bob", "--team", "support")
    carol = create(config_file, "carol")
    assert [(k["id"], k["team"]) for k in listed(config_file)] == [(alice, "research"), (bob, "support"), (carol, None)]
    assert [k["id"] for k in listed(config_file, "--team", "research")] == [alice]
    assert [k["id"] for k in listed(config_file, "--team", "support", "--user", "bob")] == [bob]
    assert listed(config_file, "--team", "support", "--user", "alice") == []
    table = keys(config_file, "list").output
    assert "team" in table.splitlines()[1] and "research" in table and "support" in table
    assert "research" in keys(config_file, "list", "--team", "research").output
    assert alice not in keys(config_file, "list", "--team", "support").output


def test_keys_create_refuses_an_unknown_team(config_file: Path) -> None:
    """A team the configuration does not have fails naming the configured ones, and creates nothing."""
    result = keys(config_file, "create", "--user", "x", "--tier", "free", "--team", "reserch")
    assert result.exit_code == 1
    assert "Unknown team 'reserch'; configured teams: research, support" in result.output
    assert not (config_file.parent / "keys.db").exists()
    control = keys(config_file, "create", "--user", "x", "--tier", "free", "--team", "r\x00")
    assert control.exit_code == 1 and "error: --team: " in control.output


def test_keys_update_moves_a_key_between_teams_and_out(config_file: Path) -> None:
    """update --team changes the key's team, --no-team takes it out; an unknown team changes nothing."""
    key_id = create(config_file, "dave", "--team", "research")

    def update(*options: str) -> Any:
        return keys(config_file, "update", key_id, *options)

    moved = update("--team", "support")
    assert moved.exit_code == 0 and "team: support" in moved.output
    assert listed(config_file)[0]["team"] == "support"
    unknown = update("--team", "sales")
    assert unknown.exit_code == 1 and "configured teams: research, support" in unknown.output
    both = update("--team", "research", "--no-team")
    assert both.exit_code == 1 and "--no-team" in both.output
    assert listed(config_file)[0]["team"] == "support"
    assert update("--tier", "free").exit_code == 0
    assert listed(config_file)[0]["team"] == "support"  # untouched unless asked
    cleared = update("--no-team")
    assert cleared.exit_code == 0 and "team: none" in cleared.output
    assert listed(config_file)[0]["team"] is None
    assert listed(config_file, "--team", "support") == []
