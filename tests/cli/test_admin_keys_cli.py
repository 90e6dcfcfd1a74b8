"""`quotagate admin-keys`, `keys rotate` and `quotagate audit`: admin keys made from the command
line open the admin API with their role, and every change made there is in the audit log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from quotagate.cli import app
from quotagate.keys import AdminKeyStore, KeyStore, hash_key

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "quotagate.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'keys.db'}\n"
        "tiers: {free: {rpm: 60}}\n"
        "teams: {research: {rpm: 100}}\n"
        "models:\n  - name: gpt-4o-mini\n    deployments: [{provider: openai, api_key: env:OPENAI_API_KEY}]\n"
    )
    return path


def cli(config_file: Path, *args: str) -> Any:
    return runner.invoke(app, [*args, "-c", str(config_file)], terminal_width=200)


def database(config_file: Path) -> str:
    return f"sqlite:///{config_file.parent / 'keys.db'}"


def test_admin_keys_are_made_listed_and_deleted(config_file: Path) -> None:
    """create prints the key once as its last line; list shows its role and hint; delete removes it."""
    made = cli(config_file, "admin-keys", "create", "--name", "ops", "--role", "team_admin", "--team", "research")
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert key.startswith("qga-")
    listed = json.loads(cli(config_file, "admin-keys", "list", "--json").output)
    assert [(k["name"], k["role"], k["team"]) for k in listed] == [("ops", "team_admin", "research")]
    store = AdminKeyStore(KeyStore.from_url(database(config_file)).database)
    found = asyncio.run(store.find(key))
    assert found is not None and found.id == listed[0]["id"]
    assert cli(config_file, "admin-keys", "delete", listed[0]["id"]).exit_code == 0
    assert json.loads(cli(config_file, "admin-keys", "list", "--json").output) == []
    assert cli(config_file, "admin-keys", "delete", listed[0]["id"]).exit_code == 1


def test_admin_key_roles_are_checked(config_file: Path) -> None:
    """An unknown role, a team admin without a team, or an unknown team is refused with the reason."""
    for args, said in (
        (("--role", "root"), "role must be one of viewer, team_admin, admin"),
        (("--role", "team_admin"), "needs the team"),
        (("--role", "team_admin", "--team", "nope"), "Unknown team 'nope'"),
        (("--role", "viewer", "--team", "research"), "only a team_admin key has a team"),
    ):
        result = cli(config_file, "admin-keys", "create", "--name", "x", *args)
        assert result.exit_code == 1 and said in result.output, result.output


def test_keys_rotate_prints_a_new_secret_for_the_same_key(config_file: Path) -> None:
    """rotate keeps the id and replaces the stored hash: the old secret no longer matches."""
    created = cli(config_file, "keys", "create", "--user", "alice", "--tier", "free")
    key_id, old = created.output.split()[2], created.output.strip().splitlines()[-1]
    rotated = cli(config_file, "keys", "rotate", key_id)
    assert rotated.exit_code == 0, rotated.output
    new = rotated.output.strip().splitlines()[-1]
    assert new.startswith("qg-") and new != old
    store = KeyStore.from_url(database(config_file))
    assert asyncio.run(store.find_by_hash(hash_key(old))) is None
    found = asyncio.run(store.find_by_hash(hash_key(new)))
    assert found is not None and found.id == key_id
    assert cli(config_file, "keys", "rotate", "key_nope").exit_code == 1


def test_command_line_changes_are_in_the_audit_log(config_file: Path) -> None:
    """Keys made, changed, disabled, rotated and deleted from the CLI are audited as "cli", newest first."""
    created = cli(config_file, "keys", "create", "--user", "alice", "--tier", "free", "--team", "research")
    key_id = created.output.split()[2]
    for args in (
        ("update", key_id, "--limit", "rpm=5"),
        ("disable", key_id),
        ("enable", key_id),
        ("rotate", key_id),
        ("delete", key_id),
    ):
        assert cli(config_file, "keys", *args).exit_code == 0
    entries = json.loads(cli(config_file, "audit", "--json").output)
    assert [e["action"] for e in entries] == [
        "key.delete",
        "key.rotate",
        "key.enable",
        "key.disable",
        "key.update",
        "key.create",
    ]
    assert {e["actor"] for e in entries} == {"cli"} and {e["target"] for e in entries} == {key_id}
    assert entries[4]["details"] == {"limits": {"rpm": 5.0}}
    assert entries[5]["details"]["team"] == "research"
    table = cli(config_file, "audit", "--limit", "2").output
    assert "key.delete" in table and "key.rotate" in table and "key.create" not in table
