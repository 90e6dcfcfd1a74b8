"""The quotagate command: keys, config check, and each command's --help."""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import UTC, datetime
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
    # Nothing was stored: not even the database was made.
    assert not (config_file.parent / "keys.db").exists()


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
        ["usage"],
        ["cache"],
        ["cache", "stats"],
        ["cache", "purge"],
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
    assert lines[0] == (
        "user,requests,errors,prompt_tokens,completion_tokens,cached_tokens,cost_usd,cache_hits,hit_rate,saved_usd"
    )
    assert lines[1:] == [
        "ann,2,1,20,10,0,0.5,0,0.0,0.0",
        "bob,1,0,10,5,0,0.25,0,0.0,0.0",
        "TOTAL,3,1,30,15,0,0.75,0,0.0,0.0",
    ]
    report = json.loads(
        runner.invoke(
            app, ["usage", "--by", "day", "--format", "json", "--since", "2026-11-01", "-c", str(config_file)]
        ).output
    )
    assert report["totals"]["requests"] == 3 and report["data"][0]["day"] == "2026-11-19"
    assert runner.invoke(app, ["usage", "--by", "colour", "-c", str(config_file)]).exit_code == 1


def seed_usage(config_file: Path, rows: list[tuple[str, float, str, float]], *, saved: float = 0.0) -> None:
    """Ledger rows (request id, epoch seconds, user, cost in USD) in the configured database; with
    ``saved``, each a cache hit that saved that much."""
    import asyncio

    from quotagate.accounting import SqlWriter, UsageRow
    from quotagate.config import load_config
    from quotagate.keys import KeyStore

    async def seed() -> None:
        store = KeyStore.from_url(load_config(config_file).database)
        await store.create_schema()
        await SqlWriter(store.database).write(
            [
                UsageRow(
                    request_id,
                    ts,
                    datetime.fromtimestamp(ts, UTC).date().isoformat(),
                    "key_a",
                    user,
                    "free",
                    "gpt-4o-mini",
                    "gpt-4o-mini",
                    "openai/gpt-4o-mini#0",
                    1,
                    1,
                    0,
                    cost,
                    1.0,
                    1.0,
                    0.1,
                    200,
                    None,
                    False,
                    cache_hit=bool(saved),
                    cache_saved_usd=saved,
                )
                for request_id, ts, user, cost in rows
            ]
        )
        await store.close()

    asyncio.run(seed())


def test_reading_commands_create_no_database(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keys list`, `usage` and the key changes, run where there is no database, say so and create none."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("QUOTAGATE_CONFIG", raising=False)
    for command in (
        ["keys", "list"],
        ["usage"],
        ["keys", "disable", "key_x"],
        ["keys", "update", "key_x", "--tier", "free"],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, command
        assert result.output.startswith(f"error: no database at {elsewhere / 'quotagate.db'} ("), result.output
        assert "--config" in result.output and "Traceback" not in result.output
        configured = runner.invoke(app, [*command, "-c", str(config_file)])
        assert configured.exit_code == 1 and f"no database at {tmp_path / 'keys.db'}" in configured.output
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "keys.db").exists()


def test_usage_time_options_name_themselves_and_know_today_and_yesterday(config_file: Path) -> None:
    """A bad --since or --until is reported under its own name; `today` and `yesterday` are days
    that begin at midnight in the configured timezone; ISO dates keep working."""
    now = time.time()
    seed_usage(config_file, [("recent", now, "ann", 0.5), ("old", now - 3 * 86400, "bob", 0.25)])

    def users(*options: str) -> list[str]:
        result = runner.invoke(app, ["usage", "--by", "user", "--format", "json", *options, "-c", str(config_file)])
        assert result.exit_code == 0, result.output
        return [row["user"] for row in json.loads(result.output)["data"]]

    assert users("--since", "yesterday") == ["ann"]
    assert users("--since", "today") == ["ann"]
    assert users("--until", "today") == ["bob"]
    assert users("--since", "2000-01-01", "--until", "2999-01-01T00:00:00Z") == ["ann", "bob"]
    for option in ("--since", "--until"):
        bad = runner.invoke(app, ["usage", option, "soon", "-c", str(config_file)])
        assert bad.exit_code == 1
        assert bad.output.startswith(f"error: {option}: 'soon' is not a date"), bad.output
        assert "--expires" not in bad.output


def test_usage_costs_are_plain_decimals(config_file: Path) -> None:
    """Costs of a few tokens print as 0.000054, never 5.4e-05, in the table, CSV and JSON."""
    seed_usage(config_file, [("r1", 1_795_000_000.0, "ann", 0.000054), ("r2", 1_795_000_001.0, "bob", 1.5e-7)])
    table = runner.invoke(app, ["usage", "--by", "user", "-c", str(config_file)], terminal_width=200).output
    csv_out = runner.invoke(app, ["usage", "--by", "user", "--format", "csv", "-c", str(config_file)]).output
    json_out = runner.invoke(app, ["usage", "--by", "user", "--format", "json", "-c", str(config_file)]).output
    for output in (table, csv_out, json_out):
        assert "e-0" not in output and "e-7" not in output, output
    assert "0.000054" in table and "0.00000015" in table and "0.0000541500" not in table
    assert csv_out.strip().splitlines()[1:] == [
        "ann,1,0,1,1,0,0.000054,0,0.0,0.0",
        "bob,1,0,1,1,0,0.00000015,0,0.0,0.0",
        "TOTAL,2,0,2,2,0,0.00005415,0,0.0,0.0",
    ]
    assert '"cost_usd": 0.00000015' in json_out
    report = json.loads(json_out)
    assert [row["cost_usd"] for row in report["data"]] == [0.000054, 1.5e-7]
    assert report["totals"]["cost_usd"] == 0.00005415


def test_usage_shows_cache_hits_and_savings_in_the_display_currency(config_file: Path) -> None:
    """The cache's columns follow the cost's: hits, hit rate, and the saving in USD and in the
    display currency, as plain decimals in the table, the CSV and the JSON alike."""
    config_file.write_text(config_file.read_text() + "currency: {display: EUR, rate: 0.5}\n")
    seed_usage(config_file, [("r1", 1_795_000_000.0, "ann", 0.0)], saved=3e-7)
    seed_usage(config_file, [("r2", 1_795_000_001.0, "ann", 0.002), ("r3", 1_795_000_002.0, "bob", 0.001)])
    table = runner.invoke(app, ["usage", "--by", "user", "-c", str(config_file)], terminal_width=200).output
    csv_out = runner.invoke(app, ["usage", "--by", "user", "--format", "csv", "-c", str(config_file)])
    json_out = runner.invoke(app, ["usage", "--by", "user", "--format", "json", "-c", str(config_file)]).output
    assert csv_out.exit_code == 0, csv_out.output
    assert csv_out.output.strip().splitlines() == [
        "user,requests,errors,prompt_tokens,completion_tokens,cached_tokens,cost_usd,cost_eur,"
        "cache_hits,hit_rate,saved_usd,saved_eur",
        "ann,2,0,2,2,0,0.002,0.001,1,0.5,0.0000003,0.00000015",
        "bob,1,0,1,1,0,0.001,0.0005,0,0.0,0.0,0.0",
        "TOTAL,3,0,3,3,0,0.003,0.0015,1,0.3333,0.0000003,0.00000015",
    ]
    header = next(line for line in table.splitlines() if "requests" in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]][-5:] == [
        "cost_eur",
        "cache_hits",
        "hit_rate",
        "saved_usd",
        "saved_eur",
    ]
    assert "0.00000015" in table and "e-0" not in table and "e-0" not in json_out
    assert '"saved_eur": 0.00000015' in json_out
    report = json.loads(json_out)
    assert [(r["user"], r["cache_hits"], r["hit_rate"], r["saved_usd"]) for r in report["data"]] == [
        ("ann", 1, 0.5, 3e-7),
        ("bob", 0, 0.0, 0.0),
    ]
    assert (report["totals"]["cache_hits"], report["totals"]["saved_eur"]) == (1, 1.5e-7)


def test_keys_create_refuses_an_expiry_in_the_past(config_file: Path) -> None:
    """A key that would be expired from the start is refused with one line, and not stored."""
    result = runner.invoke(
        app, ["keys", "create", "--user", "x", "--tier", "free", "--expires", "2020-01-01", "-c", str(config_file)]
    )
    assert result.exit_code == 1
    assert result.output == (
        "error: --expires 2020-01-01: 2020-01-01T00:00:00+00:00 is in the past; a new key must expire in the future\n"
    )
    assert not (config_file.parent / "keys.db").exists()
    later = runner.invoke(
        app, ["keys", "create", "--user", "x", "--tier", "free", "--expires", "2999-01-01", "-c", str(config_file)]
    )
    assert later.exit_code == 0, later.output


def test_keys_update_limit_merges_and_removes(config_file: Path) -> None:
    """--limit sets one override and keeps the others, NAME=none removes one, --clear-limits removes
    all (with --limit: those become the only ones)."""
    created = runner.invoke(
        app, ["keys", "create", "--user", "x", "--tier", "free", "--limit", "rpm=100", "-c", str(config_file)]
    )
    key_id = created.output.split()[2]

    def update(*options: str) -> dict[str, float] | None:
        result = runner.invoke(app, ["keys", "update", key_id, *options, "-c", str(config_file)])
        assert result.exit_code == 0, result.output
        listed = json.loads(runner.invoke(app, ["keys", "list", "--json", "-c", str(config_file)]).output)
        limits: dict[str, float] | None = listed[0]["limits"]
        return limits

    assert update("--limit", "tpm=5000") == {"rpm": 100, "tpm": 5000}
    assert update("--limit", "rpm=none", "--limit", "tpd=9000") == {"tpm": 5000, "tpd": 9000}
    assert update("--clear-limits", "--limit", "rph=7") == {"rph": 7}
    assert update("--clear-limits") is None
    typo = runner.invoke(app, ["keys", "update", key_id, "--limit", "rpx=none", "-c", str(config_file)])
    assert typo.exit_code == 1 and "rpx" in typo.output
    on_create = runner.invoke(
        app, ["keys", "create", "--user", "x", "--tier", "free", "--limit", "rpm=none", "-c", str(config_file)]
    )
    assert on_create.exit_code == 1 and "--limit 'rpm=none'" in on_create.output


@pytest.fixture(params=["sqlite", "postgresql"])
def any_config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A configuration whose database is SQLite or the real PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'keys.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    path = tmp_path / "quotagate.yaml"
    path.write_text(f"database: {url}\ntiers: {{free: {{rpm: 60}}}}\nmodels: []\n")
    return path


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ("usd_per_day=1e308", "usd_per_day"),
        ("usd_per_day=1e-300", "usd_per_day"),
        ("usd_per_month=inf", "usd_per_month"),
        ("usd_per_month=nan", "usd_per_month"),
        ("rpm=1e16", "rpm"),
        ("tpd=9007199254740993", "tpd"),
    ],
)
def test_keys_limit_out_of_bounds_is_one_line_naming_it(any_config: Path, option: str, field: str) -> None:
    """`keys create/update --limit` refuse what the admin API refuses, in one line naming the limit."""
    user = "cli-bounds-" + secrets.token_hex(4)
    smallest = ["--limit", "usd_per_day=0.000001"]
    created = runner.invoke(app, ["keys", "create", "--user", user, "--tier", "free", *smallest, "-c", str(any_config)])
    assert created.exit_code == 0, created.output
    key_id = created.output.split()[2]
    for command in (
        ["keys", "create", "--user", user, "--tier", "free", "--limit", option],
        ["keys", "update", key_id, "--limit", option],
    ):
        result = runner.invoke(app, [*command, "-c", str(any_config)])
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"error: --limit: {field}: ") and result.output.count("\n") == 1
    listed = runner.invoke(app, ["keys", "list", "--user", user, "--json", "-c", str(any_config)])
    assert [key["limits"] for key in json.loads(listed.output)] == [{"usd_per_day": 0.000001}]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["keys", "create", "--user", "a\x00b", "--tier", "free"], "error: --user: "),
        (["keys", "create", "--user", "a\x1b[2Jb", "--tier", "free"], "error: --user: "),
        (["keys", "create", "--user", "a", "--tier", "free", "--name", "x\ny"], "error: --name: "),
        (["keys", "create", "--user", "a", "--tier", "fr\x00ee"], "error: --tier: "),
        (["keys", "create", "--user", "a", "--tier", "free", "--models", "m\x00"], "error: --models: "),
        (["keys", "list", "--user", "\x00"], "error: --user: "),
        (["keys", "update", "key_0", "--tier", "\x00"], "error: --tier: "),
        (["keys", "create", "--user", "a", "--tier", "free", "--name", "x\u2028y"], "error: --name: "),
        (["keys", "create", "--user", "alice\u202ecod.exe", "--tier", "free"], "error: --user: "),
        (["keys", "create", "--user", "a", "--tier", "free", "--models", "gpt\u200b-4o"], "error: --models: "),
        (["keys", "list", "--user", "\u2066a\u2069"], "error: --user: "),
    ],
    ids=[
        "user-nul",
        "user-escape",
        "name-newline",
        "tier-nul",
        "models-nul",
        "list-user-nul",
        "update-tier-nul",
        "name-line-separator",
        "user-bidi-override",
        "models-zero-width",
        "list-user-bidi-isolate",
    ],
)
def test_keys_refuse_control_characters_in_one_line(any_config: Path, options: list[str], expected: str) -> None:
    """A NUL or other control character, a line separator or a bidi or zero-width character in
    --user, --tier, --name or --models is a one-line error naming the option, on SQLite as on
    PostgreSQL (where NUL was a database traceback)."""
    result = runner.invoke(app, [*options, "-c", str(any_config)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(expected) and "control characters" in result.output
    assert result.output.count("\n") == 1
