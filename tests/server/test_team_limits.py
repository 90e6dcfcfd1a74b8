"""A team's limits as clients see them: shared by the team's keys, 429s and quotas naming the
team, /v1/quota, reloads, and one count across several gateway nodes."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from openai import OpenAI, RateLimitError

from quotagate.config import load_config
from quotagate.keys import KeyStore
from quotagate.server import Gateway

from ..conftest import REDIS_URL, RunningGateway, ServerThread, gateway_config, gateway_processes

# With the mock upstream, a request uses its prompt (7 tokens) plus max_tokens (16): 23 tokens.
MESSAGES = [{"role": "user", "content": "hi"}]
TOKENS = 23
# $1,000 per million tokens: a request costs $0.023, and $0.10 pays for four.
PRICING = {"gpt-4o-mini": {"input": 1000.0, "output": 1000.0}}
UPSTREAM_KEY = "sk-upstream-test-key-123456"


def team_names() -> tuple[str, str]:
    """Two teams of this test's own: Redis is shared with other tests, and keeps counts by team."""
    suffix = uuid.uuid4().hex[:8]
    return f"research-{suffix}", f"ops-{suffix}"


async def _stored_key(database: str, user: str, tier: str, team: str | None) -> str:
    store = KeyStore.from_url(database)
    await store.create_schema()
    try:
        _, key = await store.create(user=user, tier=tier, team=team)
        return key
    finally:
        await store.close()


def create_key(gw: RunningGateway, team: str | None, user: str = "alice", tier: str = "free") -> str:
    """A key of ``team``, made with the admin API; straight in the key store where the API does
    not take a team."""
    with gw.admin() as admin:
        response = admin.post("/admin/keys", json={"user": user, "tier": tier, "team": team})
    if response.status_code == 201:
        return str(response.json()["key"])
    return asyncio.run(_stored_key(gw.gateway.config.database, user, tier, team))


def chat(gw: RunningGateway | str, key: str) -> str:
    """One chat completion through the OpenAI SDK: its answer (raises on an error)."""
    base_url = gw.v1 if isinstance(gw, RunningGateway) else gw + "/v1"
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=16)  # type: ignore[arg-type]
    return completion.choices[0].message.content or ""


def refusal(gw: RunningGateway, key: str) -> dict[str, Any]:
    """The error of a chat completion that the gateway refuses with 429."""
    with pytest.raises(RateLimitError) as caught:
        chat(gw, key)
    assert isinstance(caught.value.body, dict)
    return caught.value.body


def quota(gw: RunningGateway | str, key: str) -> dict[str, dict[str, Any]]:
    url = (gw.v1 if isinstance(gw, RunningGateway) else gw + "/v1") + "/quota"
    response = httpx.get(url, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()["limits"]}


@pytest.fixture(params=["memory", "redis"])
def store_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """With the in-process store and with the real Redis (teams named per test: no flush needed)."""
    return {} if request.param == "memory" else {"redis": REDIS_URL}


def test_keys_of_a_team_share_its_rpm(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    store_config: dict[str, Any],
) -> None:
    """Two keys of a team (on different tiers) draw on one team RPM; the 429 names the team's
    limit; a key of another team and a key without a team are not held by it; /v1/quota lists
    the team's limit with what the whole team used."""
    research, ops = team_names()
    gw = start_gateway(
        gateway_config(sqlite_url, mock_upstream.url, teams={research: {"rpm": 3}, ops: {"rpm": 3}}, **store_config)
    )
    first, second = create_key(gw, research), create_key(gw, research, "bob", "paid")
    other, loner = create_key(gw, ops, "carol"), create_key(gw, None, "dave")
    for key in (first, second, first):
        assert chat(gw, key)
    label = f"requests per minute (RPM) of team {research}"
    for key in (second, first):
        error = refusal(gw, key)
        assert error["type"] == "rate_limit_exceeded"
        assert error["message"].startswith(f"Rate limit reached for {label}: limit 3, used 3, requested 1.")
    for _ in range(3):
        assert chat(gw, other) and chat(gw, loner)

    limits = quota(gw, second)
    assert limits[label]["scope"] == "team"
    assert (limits[label]["limit"], limits[label]["used"], limits[label]["remaining"]) == (3, 3, 0)
    own = limits["requests per minute (RPM)"]
    assert (own["scope"], own["limit"]) == ("key", 600)  # the paid tier's, for this key alone
    assert f"requests per minute (RPM) of team {ops}" in quota(gw, other)
    assert not any("of team" in name for name in quota(gw, loner))


def test_a_team_budget_runs_out_for_all_of_its_keys(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    store_config: dict[str, Any],
) -> None:
    """A team's usd_per_day is spent by its keys together; once spent, each of them gets 429
    insufficient_quota naming the team's budget, while other keys go on."""
    research, ops = team_names()
    gw = start_gateway(
        gateway_config(
            sqlite_url,
            mock_upstream.url,
            teams={research: {"usd_per_day": 0.10}, ops: {"usd_per_day": 0.10}},
            pricing=PRICING,
            **store_config,
        )
    )
    first, second = create_key(gw, research), create_key(gw, research, "bob")
    other, loner = create_key(gw, ops, "carol"), create_key(gw, None, "dave")
    for key in (first, second, first, second):
        assert chat(gw, key)
    label = f"USD per day (budget) of team {research}"
    for key in (first, second):
        error = refusal(gw, key)
        assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
        assert f"You exceeded your quota of {label}: " in error["message"]
    assert chat(gw, other) and chat(gw, loner)

    budget = quota(gw, second)[label]
    assert (budget["scope"], budget["unit"]) == ("team", "spend")
    assert (budget["limit_usd"], budget["used_usd"], budget["remaining_usd"]) == (0.1, 0.092, 0.008)
    assert quota(gw, other)[f"USD per day (budget) of team {ops}"]["used_usd"] == 0.023


@pytest.fixture
def config_file_gateway(upstream_env: None, tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], RunningGateway]]:
    """A gateway started from a configuration file, so that POST /admin/reload rereads it."""
    started: list[ServerThread] = []
    path = tmp_path / "quotagate.yaml"

    def start(config: dict[str, Any]) -> RunningGateway:
        path.write_text(json.dumps(config))  # JSON is YAML
        gateway = Gateway(load_config(path), config_file=path)
        server = ServerThread(gateway).start()
        started.append(server)
        return RunningGateway(server.url, server, gateway)

    yield start
    for server in started:
        server.stop()


def test_a_reload_changes_and_removes_team_limits(
    config_file_gateway: Callable[[dict[str, Any]], RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    """A team's changed RPM holds from POST /admin/reload on; once the team is gone from the
    configuration its keys go on serving, without team limits."""
    research, _ = team_names()
    config = gateway_config(sqlite_url, mock_upstream.url).model_dump(mode="json", exclude_unset=True)
    gw = config_file_gateway({**config, "teams": {research: {"rpm": 2}}})
    first, second = create_key(gw, research), create_key(gw, research, "bob")
    assert chat(gw, first) and chat(gw, second)
    assert "limit 2, used 2" in refusal(gw, first)["message"]

    def reload(teams: dict[str, Any]) -> list[str]:
        (tmp_path / "quotagate.yaml").write_text(json.dumps({**config, "teams": teams}))
        with gw.admin() as admin:
            response = admin.post("/admin/reload")
        assert response.status_code == 200, response.text
        return list(response.json()["changes"])

    assert reload({research: {"rpm": 5}}) == [f"teams changed: {research}"]
    for key in (first, second, first, second, first):
        assert chat(gw, key)
    assert "limit 5, used 5" in refusal(gw, second)["message"]

    assert reload({}) == [f"teams removed: {research}"]
    for key in (first, second, first):
        assert chat(gw, key)
    assert not any("of team" in name for name in quota(gw, first))


def test_three_nodes_hold_a_team_quota_exactly(tmp_path: Path, mock_upstream: ServerThread) -> None:
    """200 concurrent requests from two keys of one team, spread over 3 gateways on one Redis,
    against a team TPD that fits 50 of them: exactly 50 pass, and the rest are refused by it."""
    research, _ = team_names()
    database = f"sqlite:///{tmp_path / 'keys.db'}"
    config = tmp_path / "quotagate.yaml"
    config.write_text(
        f"database: {database}\n"
        f"redis: {REDIS_URL}\n"
        "tiers: {free: {}}\n"
        f"teams: {{{research}: {{tpd: {50 * TOKENS}}}}}\n"
        "models:\n  - name: gpt-4o-mini\n"
        f"    deployments: [{{provider: openai-compatible, base_url: '{mock_upstream.url}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
    )
    keys = [asyncio.run(_stored_key(database, user, "free", research)) for user in ("alice", "bob")]
    env = {**os.environ, "TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    with gateway_processes(config, env=env) as ports:

        async def storm() -> list[tuple[int, dict[str, Any]]]:
            body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

                async def one(index: int) -> tuple[int, dict[str, Any]]:
                    url = f"http://127.0.0.1:{ports[index % 3]}/v1/chat/completions"
                    headers = {"Authorization": f"Bearer {keys[index % 2]}"}
                    async with session.post(url, json=body, headers=headers) as response:
                        return response.status, await response.json(content_type=None)

                return await asyncio.gather(*(one(i) for i in range(200)))

        results = asyncio.run(storm())
        statuses = [status for status, _ in results]
        assert statuses.count(200) == 50
        assert statuses.count(429) == 150
        refused = {body["error"]["message"].split(":")[0] for status, body in results if status == 429}
        assert refused == {f"You exceeded your quota of tokens per day (TPD) of team {research}"}
        used = quota(f"http://127.0.0.1:{ports[1]}", keys[0])[f"tokens per day (TPD) of team {research}"]
        assert (used["used"], used["remaining"]) == (50 * TOKENS, 0)
