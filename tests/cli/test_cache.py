"""`quotagate cache stats` and `quotagate cache purge`: the admin API's cache routes, from the
command line, against a running gateway (with a stand-in for its cache, as tests/server/test_admin_cache.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quotagate.cli import app

from ..conftest import MASTER_KEY, RunningGateway, closed_port
from ..server.test_admin_cache import StandInCache

runner = CliRunner()


@pytest.fixture
def cache(gateway: RunningGateway) -> StandInCache:
    stand_in = StandInCache()
    gateway.gateway.cache = stand_in  # type: ignore[assignment]
    return stand_in


@pytest.fixture
def gateway_file(gateway: RunningGateway, tmp_path: Path) -> Path:
    """The running gateway's configuration as the CLI reads it: its port, and its master key as
    an env:NAME reference (TEST_MASTER_KEY, set by the gateway's fixtures)."""
    path = tmp_path / "gateway.yaml"
    port = gateway.url.rsplit(":", 1)[1]
    path.write_text(f"server: {{host: 0.0.0.0, port: {port}}}\nmaster_key: env:TEST_MASTER_KEY\n")
    return path


def test_stats_reads_the_gateway_named_by_its_configuration(
    cache: StandInCache, gateway_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --config only: the configured port on this machine, and the configured master key;
    the figures one a line, nested ones by their dotted name."""
    monkeypatch.delenv("QUOTAGATE_MASTER_KEY", raising=False)
    result = runner.invoke(app, ["cache", "stats", "-c", str(gateway_file)], terminal_width=200)
    assert result.exit_code == 0, result.output
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.output.splitlines() if "│" in line]
    assert cells == [["store", "memory"], ["entries", "3"], ["node.hits", "2"], ["node.misses", "1"]]
    as_json = runner.invoke(app, ["cache", "stats", "--json", "-c", str(gateway_file)])
    assert json.loads(as_json.output)["node"] == {"hits": 2, "misses": 1}


def test_purge_all_or_one_namespace(gateway: RunningGateway, cache: StandInCache) -> None:
    """--url and --master-key name the gateway; --namespace narrows the purge; the output says how many."""
    options = ["--url", gateway.url, "--master-key", MASTER_KEY]
    everything = runner.invoke(app, ["cache", "purge", *options])
    alice = runner.invoke(app, ["cache", "purge", "--namespace", "user:alice", *options])
    assert everything.exit_code == 0 and alice.exit_code == 0, everything.output + alice.output
    assert everything.output.strip() == "purged 3 cached answers of every namespace"
    assert alice.output.strip() == "purged 1 cached answer of namespace user:alice"
    assert cache.purged == [None, "user:alice"]


def test_the_master_key_may_come_from_the_environment(
    gateway: RunningGateway, cache: StandInCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QUOTAGATE_MASTER_KEY, as `quotagate serve` reads it for its demo."""
    monkeypatch.setenv("QUOTAGATE_MASTER_KEY", MASTER_KEY)
    result = runner.invoke(app, ["cache", "purge", "--namespace", "global", "--url", gateway.url])
    assert result.exit_code == 0, result.output
    assert cache.purged == ["global"]


def test_errors_are_one_line_saying_what_went_wrong(
    gateway: RunningGateway, cache: StandInCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's refusal in its own words; a gateway that is not there; no key at all."""
    monkeypatch.delenv("QUOTAGATE_MASTER_KEY", raising=False)
    monkeypatch.delenv("QUOTAGATE_CONFIG", raising=False)
    url = ["--url", gateway.url]
    unknown = runner.invoke(app, ["cache", "purge", "--namespace", "colour", *url, "--master-key", MASTER_KEY])
    assert unknown.exit_code == 1
    assert unknown.output.startswith(f"error: the gateway at {gateway.url} answered 400: unknown cache namespace")
    wrong_key = runner.invoke(app, ["cache", "stats", *url, "--master-key", "nope"])
    assert wrong_key.exit_code == 1 and "answered 401: Invalid master or admin key." in wrong_key.output
    nobody = f"http://127.0.0.1:{closed_port()}"
    absent = runner.invoke(app, ["cache", "stats", "--url", nobody, "--master-key", MASTER_KEY])
    assert absent.exit_code == 1 and absent.output.startswith(f"error: cannot reach the gateway at {nobody}")
    keyless = runner.invoke(app, ["cache", "stats", *url])
    assert keyless.exit_code == 1 and keyless.output.startswith("error: no master key:")
    for result in (unknown, wrong_key, absent, keyless):
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert cache.purged == []
