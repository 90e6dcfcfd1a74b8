"""Teams over the admin API: a key's team is set, changed, removed and filtered on, and must be
one of the configured teams."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from quotagate.auth import Authenticator, Principal
from quotagate.keys import KeyStore
from quotagate.keys._database import Database
from quotagate.keys._store import api_keys

from ..conftest import RunningGateway, ServerThread, gateway_config
from .test_errors import assert_openai_error

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TEAMS = {"research": {"rpm": 100, "usd_per_day": 5.5}, "support": {"tpd": 50000}}


@pytest.fixture
def gw(start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str) -> RunningGateway:
    return start_gateway(gateway_config(sqlite_url, mock_upstream.url, teams=TEAMS))


def test_a_key_is_created_in_a_team_and_listed_with_it(gw: RunningGateway) -> None:
    """A key made with a team shows it, and ?team= lists that team's keys, with ?user= too."""
    alice = gw.create_key("alice", team="research")
    bob = gw.create_key("bob", team="research")
    carol = gw.create_key("carol", team="support")
    loner = gw.create_key("alice")
    assert (alice["team"], carol["team"], loner["team"]) == ("research", "support", None)
    with gw.admin() as admin:
        assert admin.get(f"/admin/keys/{alice['id']}").json()["team"] == "research"

        def ids(**params: str) -> list[str]:
            answer = admin.get("/admin/keys", params=params)
            assert answer.status_code == 200, answer.text
            return [k["id"] for k in answer.json()["data"]]

        assert ids(team="research") == [alice["id"], bob["id"]]
        assert ids(team="support") == [carol["id"]]
        assert ids(team="research", user="alice") == [alice["id"]]
        assert ids(user="alice") == [alice["id"], loner["id"]]
        assert ids(team="nobody") == []  # a team no longer configured may still have keys: not an error
        assert len(ids()) == 4
        assert_openai_error(admin.get("/admin/keys", params={"team": "a\x00b"}), 400, "invalid_value", "team")


def test_an_unknown_team_is_refused_naming_the_configured_ones(gw: RunningGateway) -> None:
    """A team the configuration does not have gets 400 on param team, listing the teams; nothing is made."""
    with gw.admin() as admin:
        for answer in (
            admin.post("/admin/keys", json={"user": "dave", "tier": "free", "team": "reserch"}),
            admin.patch(f"/admin/keys/{gw.create_key('erin')['id']}", json={"team": "sales"}),
        ):
            assert_openai_error(answer, 400, "unknown_team", "team")
            message = answer.json()["error"]["message"]
            assert "research" in message and "support" in message
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "d", "tier": "free", "team": ""}), 400, param="team"
        )
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "d", "tier": "free", "team": "r\x07"}), 400, param="team"
        )
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "d", "tier": "free", "team": "t" * 101}), 400, param="team"
        )
        assert [k["user"] for k in admin.get("/admin/keys").json()["data"]] == ["erin"]
        assert admin.get("/admin/keys?team=sales").json()["data"] == []


def test_without_teams_configured_any_team_is_refused(gateway: RunningGateway) -> None:
    """With no teams: configured, a key cannot be put in one, and the message says there are none."""
    with gateway.admin() as admin:
        answer = admin.post("/admin/keys", json={"user": "x", "tier": "free", "team": "research"})
        assert_openai_error(answer, 400, "unknown_team", "team")
        assert "(none)" in answer.json()["error"]["message"]
        assert admin.post("/admin/keys", json={"user": "x", "tier": "free", "team": None}).status_code == 201
        assert admin.get("/admin/teams").json() == {"object": "list", "data": {}}


def test_patch_moves_a_key_between_teams_and_out(gw: RunningGateway) -> None:
    """PATCH team changes the key's team; team null takes it out; leaving team out keeps it."""
    key_id = gw.create_key("frank", team="research")["id"]
    with gw.admin() as admin:
        moved = admin.patch(f"/admin/keys/{key_id}", json={"team": "support"})
        assert moved.status_code == 200 and moved.json()["team"] == "support"
        assert admin.patch(f"/admin/keys/{key_id}", json={"name": "laptop"}).json()["team"] == "support"
        removed = admin.patch(f"/admin/keys/{key_id}", json={"team": None})
        assert removed.status_code == 200 and removed.json()["team"] is None
        assert admin.get(f"/admin/keys/{key_id}").json()["team"] is None
        assert admin.get("/admin/keys?team=support").json()["data"] == []


def test_the_next_request_carries_the_keys_team(gw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The principal a request is served as has the key's team, and a PATCH takes effect at once."""
    seen: list[Principal] = []
    authenticator = gw.gateway.authenticator
    authenticate = authenticator.authenticate

    async def watched(key: str) -> Principal:
        principal = await authenticate(key)
        seen.append(principal)
        return principal

    monkeypatch.setattr(authenticator, "authenticate", watched)
    created = gw.create_key("gina", team="research")
    headers = {"Authorization": f"Bearer {created['key']}"}

    def team_served() -> str | None:
        assert httpx.post(gw.v1 + "/chat/completions", headers=headers, json=CHAT).status_code == 200
        return seen[-1].team

    assert team_served() == "research"
    with gw.admin() as admin:
        assert admin.patch(f"/admin/keys/{created['id']}", json={"team": "support"}).status_code == 200
        assert team_served() == "support"
        assert admin.patch(f"/admin/keys/{created['id']}", json={"team": None}).status_code == 200
        assert team_served() is None


def test_teams_are_listed_with_their_limits(gw: RunningGateway) -> None:
    """GET /admin/teams answers each configured team with the limits it sets, as /admin/tiers does."""
    with gw.admin() as admin:
        assert admin.get("/admin/teams").json() == {
            "object": "list",
            "data": {"research": {"rpm": 100, "usd_per_day": 5.5}, "support": {"tpd": 50000}},
        }
        assert_openai_error(admin.post("/admin/teams"), 405)


def test_a_database_made_before_teams_gains_the_column(tmp_path: Path) -> None:
    """A keys table without the team column is given it, and its index, in place at start: its
    keys stay, with no team, and new keys can have one."""
    database = f"sqlite:///{tmp_path / 'before-teams.db'}"

    def create_old(conn: sa.Connection) -> None:
        conn.execute(
            sa.text(
                "CREATE TABLE qg_api_keys (id VARCHAR(32) PRIMARY KEY, key_hash VARCHAR(64) NOT NULL UNIQUE, "
                "key_hint VARCHAR(32) NOT NULL, name VARCHAR(200), user_id VARCHAR(200) NOT NULL, "
                "tier VARCHAR(100) NOT NULL, models JSON, expires_at DATETIME, disabled BOOLEAN NOT NULL, "
                "limits JSON, created_at DATETIME NOT NULL)"
            )
        )
        conn.execute(sa.text("CREATE INDEX ix_qg_api_keys_user_id ON qg_api_keys (user_id)"))
        conn.execute(
            sa.text(
                "INSERT INTO qg_api_keys (id, key_hash, key_hint, user_id, tier, disabled, created_at) "
                "VALUES ('key_old', 'hash', 'qg-abc...wxyz', 'olga', 'free', 0, '2020-01-01 00:00:00')"
            )
        )

    async def upgrade() -> tuple[set[str], set[str | None], list[tuple[str, str | None]], Principal]:
        db = Database(database)
        await db.run(create_old)
        await db.dispose()
        store = KeyStore.from_url(database)
        try:
            await store.create_schema()
            await store.create_schema()  # and again: nothing left to add
            inspect = sa.inspect
            columns = await store.database.run(lambda c: {col["name"] for col in inspect(c).get_columns(api_keys.name)})
            indexes = await store.database.run(lambda c: {ix["name"] for ix in inspect(c).get_indexes(api_keys.name)})
            _, key = await store.create(user="pavel", tier="free", team="research")
            listed = [(r.id if r.user == "olga" else r.user, r.team) for r in await store.list()]
            assert [r.user for r in await store.list(team="research")] == ["pavel"]
            principal = await Authenticator(store).authenticate(key)
        finally:
            await store.close()
        return columns, indexes, listed, principal

    columns, indexes, listed, principal = asyncio.run(upgrade())
    assert "team" in columns and "ix_qg_api_keys_team" in indexes
    assert listed == [("key_old", None), ("pavel", "research")]
    assert (principal.user, principal.team) == ("pavel", "research")


def test_a_blank_team_filter_is_refused_not_every_key(gw: RunningGateway) -> None:
    """`GET /admin/keys?team=` from a script whose variable is empty must not list every key."""
    with gw.admin() as admin:
        answer = admin.get("/admin/keys", params={"team": ""})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "team"
