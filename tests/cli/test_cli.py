"""The quotagate command: keys, config check, and each command's --help."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quotagate.cli import app

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "quotagate.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'keys.db'}\n"
        "tiers: {free: {rpm: 60}, paid: {rpm: 600}}\n"
        "models:\n  - name: gpt-4o-mini\n    deployments: [{provider: openai, api_key: env:OPENAI_API_KEY}]\n"
    )
    return path


def test_keys_create_prints_the_key_last_and_once(config_file: Path) -> None:
    """`keys create` prints the new key exactly once, as its last line."""
    result = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--user",
            "alice",
            "--tier",
            "free",
            "--models",
            "gpt-4o-mini",
            "--expires",
            "2031-01-01",
            "--config",
            str(config_file),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    key = lines[-1]
    assert re.fullmatch(r"qg-[A-Za-z0-9_-]{43}", key)
    assert result.output.count(key) == 1
    assert "expires: 2031-01-01T00:00:00+00:00" in result.output


def test_keys_list_disable_enable_delete(config_file: Path) -> None:
    """The key lifecycle from the command line, against the configured database."""
    created = runner.invoke(app, ["keys", "create", "--user", "bob", "--tier", "paid", "-c", str(config_file)])
    key = created.output.strip().splitlines()[-1]
    listed = json.loads(runner.invoke(app, ["keys", "list", "--json", "-c", str(config_file)]).output)
    assert len(listed) == 1 and listed[0]["user"] == "bob" and key not in json.dumps(listed)
    key_id = listed[0]["id"]

    assert runner.invoke(app, ["keys", "disable", key_id, "-c", str(config_file)]).exit_code == 0
    assert (
        json.loads(runner.invoke(app, ["keys", "list", "--json", "-c", str(config_file)]).output)[0]["disabled"] is True
    )
    table = runner.invoke(app, ["keys", "list", "-c", str(config_file)], terminal_width=200).output
    assert "disabled" in table and key_id in table
    assert runner.invoke(app, ["keys", "enable", key_id, "-c", str(config_file)]).exit_code == 0
    assert runner.invoke(app, ["keys", "delete", key_id, "-c", str(config_file)]).exit_code == 0
    assert json.loads(runner.invoke(app, ["keys", "list", "--json", "-c", str(config_file)]).output) == []
    missing = runner.invoke(app, ["keys", "delete", key_id, "-c", str(config_file)])
    assert missing.exit_code == 1 and "no key with id" in missing.output


def test_keys_create_refuses_unknown_tier_and_model(config_file: Path) -> None:
    """A typo in the tier or a model fails with the configured choices, and creates nothing."""
    bad_tier = runner.invoke(app, ["keys", "create", "--user", "x", "--tier", "gold", "-c", str(config_file)])
    assert bad_tier.exit_code == 1 and "Unknown tier 'gold'; configured tiers: free, paid" in bad_tier.output
    bad_model = runner.invoke(
        app, ["keys", "create", "--user", "x", "--tier", "free", "--models", "gpt-9", "-c", str(config_file)]
    )
    assert bad_model.exit_code == 1 and "gpt-9" in bad_model.output
    bad_date = runner.invoke(
        app,
        ["keys", "create", "--user", "x", "--tier", "free", "--expires", "tomorrow", "-c", str(config_file)],
    )
    assert bad_date.exit_code == 1 and "--expires" in bad_date.output
    assert json.loads(runner.invoke(app, ["keys", "list", "--json", "-c", str(config_file)]).output) == []


def test_config_check(config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`config check` accepts a good file and names the field of a bad one, without a traceback."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    missing = runner.invoke(app, ["config", "check", str(config_file)])
    assert missing.exit_code == 1
    assert (
        "models[gpt-4o-mini].deployments[0].api_key: environment variable OPENAI_API_KEY is not set" in missing.output
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    ok = runner.invoke(app, ["config", "check", str(config_file)])
    assert ok.exit_code == 0 and "OK (2 tiers, 1 models, 1 deployments" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: {free: {rpm: fast}}\n")
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert "tiers.free.rpm: Input should be a valid integer" in result.output
    assert "Traceback" not in result.output


def test_serve_with_invalid_config_fails_with_a_message(tmp_path: Path) -> None:
    """`serve` with a broken file exits 1 with the problem, before binding anything."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: many}\n")
    result = runner.invoke(app, ["serve", "--config", str(bad)])
    assert result.exit_code == 1 and "server.port" in result.output


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["keys"],
        ["keys", "create"],
        ["keys", "list"],
        ["keys", "disable"],
        ["keys", "delete"],
        ["mock-upstream"],
        ["config", "check"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    """--help works for each command and describes it."""
    result = runner.invoke(app, [*command, "--help"], terminal_width=120)
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_usage_report_from_the_ledger(config_file: Path) -> None:
    """`quotagate usage` groups the ledger's rows and totals them, as CSV and JSON."""
    import asyncio

    from quotagate.accounting import SqlWriter, UsageRow
    from quotagate.config import load_config
    from quotagate.keys import KeyStore

    async def seed() -> None:
        store = KeyStore.from_url(load_config(config_file).database)
        await store.create_schema()
        rows = [
            UsageRow(
                f"r{i}",
                1_795_000_000.0 + i,
                "2026-11-19",
                "key_a",
                user,
                "free",
                "gpt-4o-mini",
                "gpt-4o-mini",
                "openai/gpt-4o-mini#0",
                10,
                5,
                0,
                0.25,
                12.0,
                10.0,
                2.0,
                200 if i else 429,
                None,
                False,
            )
            for i, user in enumerate(["ann", "bob", "ann"])
        ]
        await SqlWriter(store.database).write(rows)
        await SqlWriter(store.database).write(rows[:1])  # written twice: stored once
        await store.close()

    asyncio.run(seed())
    csv_out = runner.invoke(app, ["usage", "--by", "user", "--format", "csv", "-c", str(config_file)])
    assert csv_out.exit_code == 0, csv_out.output
    lines = csv_out.output.strip().splitlines()
    assert lines[0] == "user,requests,errors,prompt_tokens,completion_tokens,cached_tokens,cost_usd"
    assert lines[1:] == ["ann,2,1,20,10,0,0.5", "bob,1,0,10,5,0,0.25", "TOTAL,3,1,30,15,0,0.75"]
    report = json.loads(
        runner.invoke(
            app, ["usage", "--by", "day", "--format", "json", "--since", "2026-11-01", "-c", str(config_file)]
        ).output
    )
    assert report["totals"]["requests"] == 3 and report["data"][0]["day"] == "2026-11-19"
    assert runner.invoke(app, ["usage", "--by", "colour", "-c", str(config_file)]).exit_code == 1
