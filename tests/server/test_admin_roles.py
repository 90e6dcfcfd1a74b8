"""Admin keys and their roles, key rotation, the audit log, and the team and user quota views of
the admin API, through a running gateway."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ..conftest import MASTER_KEY, RunningGateway, ServerThread, gateway_config
from .test_errors import assert_openai_error


@pytest.fixture
def gw(start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str) -> RunningGateway:
    config = gateway_config(
        sqlite_url,
        mock_upstream.url,
        teams={"research": {"rpm": 100, "usd_per_day": 5}, "sales": {"rpm": 50}},
        limits=[{"scope": "user", "unit": "requests", "amount": 30}],
    )
    return start_gateway(config)


def admin_key(gw: RunningGateway, role: str, team: str | None = None) -> str:
    with gw.admin() as admin:
        made = admin.post("/admin/admin-keys", json={"name": f"{role} of {team}", "role": role, "team": team})
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    assert key.startswith("qga-")
    return key


def as_key(gw: RunningGateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def settled_quota(admin: httpx.Client, path: str, requests: int) -> dict[str, Any]:
    """The quota at ``path`` once ``requests`` requests count in it: a request is settled just
    after its answer is sent, so a quota read at once may be a moment early."""
    deadline = time.monotonic() + 5
    while True:
        quota: dict[str, Any] = admin.get(path).json()
        used = next(e["used"] for e in quota["limits"] if e["unit"] == "requests")
        if used >= requests or time.monotonic() > deadline:
            return quota
        time.sleep(0.02)


def chat(gw: RunningGateway, key: str) -> httpx.Response:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_a_viewer_reads_everything_and_changes_nothing(gw: RunningGateway) -> None:
    """A viewer key lists keys, usage and deployments, and every write is a 403 that names its role."""
    made = gw.create_key("alice", "free")
    with as_key(gw, admin_key(gw, "viewer")) as viewer:
        assert viewer.get("/admin/whoami").json()["role"] == "viewer"
        assert [k["id"] for k in viewer.get("/admin/keys").json()["data"]] == [made["id"]]
        for path in ("/admin/usage?by=model", "/admin/deployments", "/admin/tiers", "/admin/audit", "/admin/teams"):
            assert viewer.get(path).status_code == 200, path
        for method, path, body in (
            ("POST", "/admin/keys", {"user": "mallory", "tier": "paid"}),
            ("PATCH", f"/admin/keys/{made['id']}", {"tier": "paid"}),
            ("POST", f"/admin/keys/{made['id']}/disable", None),
            ("POST", f"/admin/keys/{made['id']}/rotate", None),
            ("DELETE", f"/admin/keys/{made['id']}", None),
            ("POST", "/admin/reload", None),
            ("DELETE", "/admin/cache", None),
            ("POST", "/admin/admin-keys", {"name": "x", "role": "admin"}),
        ):
            refused = viewer.request(method, path, json=body)
            assert_openai_error(refused, 403, "permission_denied")
            assert "viewer" in refused.json()["error"]["message"]
        # Admin keys are an admin's business, even to list.
        assert_openai_error(viewer.get("/admin/admin-keys"), 403, "permission_denied")
    assert chat(gw, made["key"]).status_code == 200  # the key is as it was


def test_a_team_admin_manages_its_own_team_only(gw: RunningGateway) -> None:
    """A team admin sees and changes its team's keys only; keys it makes join its team."""
    theirs = gw.create_key("bob", "free", team="sales")
    ours = gw.create_key("carol", "free", team="research")
    with as_key(gw, admin_key(gw, "team_admin", "research")) as lead:
        assert [k["id"] for k in lead.get("/admin/keys").json()["data"]] == [ours["id"]]
        assert_openai_error(lead.get("/admin/keys?team=sales"), 403, "permission_denied")
        assert_openai_error(lead.get(f"/admin/keys/{theirs['id']}"), 404, "key_not_found")
        assert_openai_error(lead.post(f"/admin/keys/{theirs['id']}/disable"), 404, "key_not_found")
        assert_openai_error(lead.delete(f"/admin/keys/{theirs['id']}"), 404, "key_not_found")
        made = lead.post("/admin/keys", json={"user": "dan", "tier": "free"})
        assert made.status_code == 201 and made.json()["team"] == "research"
        assert_openai_error(
            lead.post("/admin/keys", json={"user": "eve", "tier": "free", "team": "sales"}), 403, "permission_denied"
        )
        assert_openai_error(lead.patch(f"/admin/keys/{ours['id']}", json={"team": None}), 403, "permission_denied")
        assert lead.patch(f"/admin/keys/{ours['id']}", json={"tier": "paid"}).json()["tier"] == "paid"
        assert lead.post(f"/admin/keys/{ours['id']}/disable").json()["disabled"] is True
        assert [u["user"] for u in lead.get("/admin/users").json()["data"]] == ["carol", "dan"]
        assert list(lead.get("/admin/teams").json()["data"]) == ["research"]
        assert_openai_error(lead.get("/admin/teams/sales/quota"), 404, "team_not_found")
        assert_openai_error(lead.get("/admin/audit"), 403, "permission_denied")
        assert_openai_error(lead.post("/admin/reload"), 403, "permission_denied")
    assert_openai_error(chat(gw, ours["key"]), 401, "key_disabled")
    assert chat(gw, theirs["key"]).status_code == 200


def test_a_team_admins_usage_is_its_teams(gw: RunningGateway) -> None:
    """GET /admin/usage for a team admin counts only its team's requests."""
    for user, team in (("bob", "sales"), ("carol", "research"), ("carol", "research")):
        assert chat(gw, gw.create_key(user, "free", team=team)["key"]).status_code == 200
    with gw.admin() as admin:
        deadline = time.monotonic() + 5  # the last row is written just after its answer is sent
        while admin.get("/admin/usage?by=team").json()["totals"]["requests"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert admin.get("/admin/usage?by=team").json()["totals"]["requests"] == 3
    with as_key(gw, admin_key(gw, "team_admin", "research")) as lead:
        report = lead.get("/admin/usage?by=user").json()
    assert [(row["user"], row["requests"]) for row in report["data"]] == [("carol", 2)]


def test_rotation_keeps_the_key_and_its_usage_with_a_new_secret(gw: RunningGateway) -> None:
    """After rotate the old secret is refused, the new one works, and the key's limits count on."""
    made = gw.create_key("alice", "free")
    assert chat(gw, made["key"]).status_code == 200
    with gw.admin() as admin:
        rotated = admin.post(f"/admin/keys/{made['id']}/rotate")
        assert rotated.status_code == 200
        new = rotated.json()
        assert new["id"] == made["id"] and new["key"] != made["key"] and new["key_hint"] != made["key_hint"]
        assert "key" not in admin.get(f"/admin/keys/{made['id']}").json()
        assert_openai_error(chat(gw, made["key"]), 401, "invalid_api_key")
        assert chat(gw, new["key"]).status_code == 200
        quota = settled_quota(admin, f"/admin/keys/{made['id']}/quota", 2)
        rpm = next(e for e in quota["limits"] if e["unit"] == "requests")
        assert rpm["used"] == 2  # one request before the rotation, one after: one key
        assert_openai_error(admin.post("/admin/keys/key_0000/rotate"), 404, "key_not_found")


def test_every_change_goes_to_the_audit_log_with_who_made_it(gw: RunningGateway) -> None:
    """Key made, changed, disabled, rotated, deleted; cache purged; admin key made: an entry each, newest first,
    no secret."""
    lead_key = admin_key(gw, "team_admin", "research")
    with as_key(gw, lead_key) as lead:
        lead_id = lead.get("/admin/whoami").json()["id"]
        made = lead.post("/admin/keys", json={"user": "dan", "tier": "free"}).json()
    with gw.admin() as admin:
        admin.patch(f"/admin/keys/{made['id']}", json={"limits": {"rpm": 5}})
        admin.post(f"/admin/keys/{made['id']}/disable")
        rotated = admin.post(f"/admin/keys/{made['id']}/rotate").json()
        admin.delete(f"/admin/keys/{made['id']}")
        assert admin.delete("/admin/cache").status_code == 200
        page = admin.get("/admin/audit?limit=6").json()
        entries = page["data"]
        assert [e["action"] for e in entries] == [
            "cache.purge",
            "key.delete",
            "key.rotate",
            "key.disable",
            "key.update",
            "key.create",
        ]
        assert page["has_more"] is True  # the admin key's own creation is older
        assert entries[4]["details"] == {"limits": {"rpm": 5.0}} and entries[4]["actor"] == "master"
        assert entries[5]["actor"] == lead_id and entries[5]["details"]["team"] == "research"
        assert entries[0]["details"] == {"purged": 0}
        assert all(e["target"] == made["id"] for e in entries[1:])
        older = admin.get(f"/admin/audit?before={entries[-1]['id']}").json()
        assert [e["action"] for e in older["data"]] == ["admin_key.create"] and older["has_more"] is False
        text = admin.get("/admin/audit").text
        assert made["key"] not in text and rotated["key"] not in text and lead_key not in text
        assert_openai_error(admin.get("/admin/audit?limit=0"), 400, None)


def test_admin_keys_are_made_listed_and_deleted_by_admins(gw: RunningGateway) -> None:
    """An admin-role key can do what the master key does, admin keys included; deleting one ends it."""
    key = admin_key(gw, "admin")
    with as_key(gw, key) as second:
        listed = second.get("/admin/admin-keys").json()["data"]
        assert [(k["role"], k["name"]) for k in listed] == [("admin", "admin of None")]
        assert "key" not in listed[0]
        assert second.post("/admin/keys", json={"user": "zed", "tier": "paid"}).status_code == 201
        bad = second.post("/admin/admin-keys", json={"name": "x", "role": "team_admin"})
        assert_openai_error(bad, 400, "invalid_value")
        unknown_team = second.post("/admin/admin-keys", json={"name": "x", "role": "team_admin", "team": "nope"})
        assert_openai_error(unknown_team, 400, "unknown_team")
        assert_openai_error(second.post("/admin/admin-keys", json={"name": "x", "role": "root"}), 400, None)
        assert second.delete(f"/admin/admin-keys/{listed[0]['id']}").json()["deleted"] is True
        assert_openai_error(second.get("/admin/keys"), 401, "invalid_master_key")
    with gw.admin() as admin:
        assert_openai_error(admin.delete("/admin/admin-keys/adm_0"), 404, "admin_key_not_found")
    # A gateway key is no admin key, and an admin key no gateway key.
    assert_openai_error(chat(gw, admin_key(gw, "admin")), 401, "invalid_api_key")


def test_team_and_user_quotas_show_their_shared_limits_live(gw: RunningGateway) -> None:
    """GET /admin/teams/{name}/quota and /admin/users/{user}/quota show the shared limits' usage."""
    key = gw.create_key("carol", "free", team="research")
    for _ in range(3):
        assert chat(gw, key["key"]).status_code == 200
    with gw.admin() as admin:
        team = settled_quota(admin, "/admin/teams/research/quota", 3)
        by_unit = {e["unit"]: e for e in team["limits"]}
        assert by_unit["requests"]["limit"] == 100 and by_unit["requests"]["used"] == 3
        assert by_unit["spend"]["limit_usd"] == 5 and by_unit["spend"]["used_usd"] > 0
        assert {e["scope"] for e in team["limits"]} == {"team"}
        user = settled_quota(admin, "/admin/users/carol/quota", 3)
        assert user["keys"] == 1 and user["teams"] == ["research"]
        assert [(e["scope"], e["limit"], e["used"]) for e in user["limits"]] == [("user", 30, 3)]
        assert_openai_error(admin.get("/admin/teams/nope/quota"), 404, "team_not_found")
        assert_openai_error(admin.get("/admin/users/nobody/quota"), 404, "user_not_found")


def test_an_admin_key_works_without_a_master_key(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """With no master_key configured, admin keys made beforehand still open the admin API."""
    first = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    key = admin_key(first, "viewer")
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url, master_key=None))
    with as_key(gw, key) as viewer:
        assert viewer.get("/admin/keys").status_code == 200
    assert_openai_error(
        httpx.get(gw.url + "/admin/keys", headers={"Authorization": f"Bearer {MASTER_KEY}"}), 403, "admin_disabled"
    )


def test_a_team_admin_cannot_take_another_teams_user_or_raise_limits(gw: RunningGateway) -> None:
    """A team admin may not make or rename keys for a user with keys in another team (a user's
    limits and cache namespace span teams), nor set a limit above the key's tier's."""
    gw.create_key("bob", "free", team="sales")
    ours = gw.create_key("carol", "free", team="research")
    with as_key(gw, admin_key(gw, "team_admin", "research")) as lead:
        taken = lead.post("/admin/keys", json={"user": "bob", "tier": "free"})
        assert_openai_error(taken, 403, "permission_denied")
        assert "bob" in taken.json()["error"]["message"]
        assert_openai_error(lead.patch(f"/admin/keys/{ours['id']}", json={"user": "bob"}), 403, "permission_denied")
        raised = lead.patch(f"/admin/keys/{ours['id']}", json={"limits": {"rpm": 1000}})  # free's rpm is 60
        assert_openai_error(raised, 403, "permission_denied")
        made = lead.post("/admin/keys", json={"user": "dan", "tier": "free", "limits": {"rpm": 600}})
        assert_openai_error(made, 403, "permission_denied")
        # Lowering, adding one the tier lacks, and removing one are the team admin's to do.
        lowered = lead.patch(f"/admin/keys/{ours['id']}", json={"limits": {"rpm": 10, "tpm": 5000}})
        assert lowered.status_code == 200 and lowered.json()["limits"] == {"rpm": 10, "tpm": 5000}
        assert lead.patch(f"/admin/keys/{ours['id']}", json={"limits": {"rpm": None}}).status_code == 200
        assert lead.post("/admin/keys", json={"user": "carol", "tier": "paid"}).status_code == 201
    with gw.admin() as admin:  # an admin may do both
        assert admin.post("/admin/keys", json={"user": "bob", "tier": "free", "team": "research"}).status_code == 201


def test_the_audit_log_takes_odd_targets_and_a_failed_write_loses_no_change(gw: RunningGateway) -> None:
    """A purge of a long namespace is audited (its target cut to the column), a control character
    in it is a 400, and a rotation whose audit entry cannot be written still answers its secret."""
    made = gw.create_key("alice", "free")
    with gw.admin() as admin:
        long = "user:" + "x" * 300
        assert admin.delete("/admin/cache", params={"namespace": long}).status_code == 200
        assert admin.get("/admin/audit?limit=1").json()["data"][0]["target"] == long[:200]
        assert_openai_error(admin.delete("/admin/cache", params={"namespace": "user:a\x00b"}), 400, "invalid_value")

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("the audit table is gone")

        gw.gateway.audit.record = broken  # type: ignore[method-assign]
        rotated = admin.post(f"/admin/keys/{made['id']}/rotate")
        assert rotated.status_code == 200 and rotated.json()["key"].startswith("qg-")
    assert chat(gw, rotated.json()["key"]).status_code == 200
