"""The admin API: master key required; keys managed over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ..conftest import MASTER_KEY, RunningGateway, ServerThread, gateway_config
from .test_errors import assert_openai_error

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_admin_requires_the_master_key(gateway: RunningGateway, api_key: str) -> None:
    """No key, a wrong key, or a user's key: refused."""
    assert_openai_error(httpx.get(gateway.url + "/admin/keys"), 401, "missing_api_key")
    assert_openai_error(
        httpx.get(gateway.url + "/admin/keys", headers={"Authorization": "Bearer nope"}),
        401,
        "invalid_master_key",
    )
    assert_openai_error(
        httpx.get(gateway.url + "/admin/keys", headers={"Authorization": f"Bearer {api_key}"}),
        401,
        "invalid_master_key",
    )
    assert httpx.get(gateway.url + "/admin/keys", headers={"x-api-key": MASTER_KEY}).status_code == 200


def test_admin_disabled_without_master_key(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """With no master_key configured the admin API is closed."""
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url, master_key=None))
    assert_openai_error(httpx.get(gw.url + "/admin/keys", headers={"Authorization": "Bearer x"}), 403, "admin_disabled")


def test_key_lifecycle_over_http(gateway: RunningGateway) -> None:
    """Create, list, read, change, disable, enable and delete a key; each takes effect at once."""
    with gateway.admin() as admin:
        created = admin.post(
            "/admin/keys", json={"user": "dave", "tier": "paid", "models": ["gpt-4o-mini"], "name": "laptop"}
        )
        assert created.status_code == 201
        body = created.json()
        key, key_id = body["key"], body["id"]
        assert body["user"] == "dave" and body["tier"] == "paid" and body["models"] == ["gpt-4o-mini"]

        def use() -> httpx.Response:
            return httpx.post(gateway.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT)

        assert use().status_code == 200

        listed = admin.get("/admin/keys", params={"user": "dave"}).json()["data"]
        assert [k["id"] for k in listed] == [key_id]
        assert "key" not in listed[0] and key not in str(listed)
        assert admin.get(f"/admin/keys/{key_id}").json()["name"] == "laptop"

        patched = admin.patch(f"/admin/keys/{key_id}", json={"models": ["house-model"]})
        assert patched.json()["models"] == ["house-model"]
        assert use().status_code == 403

        assert admin.patch(f"/admin/keys/{key_id}", json={"models": None}).status_code == 200
        assert admin.post(f"/admin/keys/{key_id}/disable").json()["disabled"] is True
        assert use().status_code == 401
        assert admin.post(f"/admin/keys/{key_id}/enable").json()["disabled"] is False
        assert use().status_code == 200

        assert admin.delete(f"/admin/keys/{key_id}").json() == {
            "id": key_id,
            "object": "key",
            "deleted": True,
        }
        assert use().status_code == 401
        assert_openai_error(admin.get(f"/admin/keys/{key_id}"), 404, "key_not_found")
        assert_openai_error(admin.delete(f"/admin/keys/{key_id}"), 404, "key_not_found")


def test_bad_admin_payloads_get_400(gateway: RunningGateway) -> None:
    """Unknown tiers, unknown models, bad dates and unknown fields are refused with a reason."""
    with gateway.admin() as admin:
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "platinum"}), 400, "unknown_tier", "tier"
        )
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "models": ["gpt-9"]}),
            400,
            "unknown_model",
        )
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "expires_at": "soon"}),
            400,
            param="expires_at",
        )
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "expires_at": "2030-01-01T00:00:00"}),
            400,
            param="expires_at",
        )
        assert_openai_error(admin.post("/admin/keys", json={"tier": "free"}), 400, param="user")
        assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "colour": "red"}),
            400,
            param="colour",
        )
        assert_openai_error(admin.post("/admin/keys", content=b"{oops"), 400, "invalid_json")
        assert_openai_error(admin.put("/admin/keys"), 405)
        assert_openai_error(admin.get("/admin/nothing"), 404)
        tiers = admin.get("/admin/tiers").json()["data"]
        assert tiers["free"] == {
            "rpm": 60,
            "tpd": 100000,
            "algorithm": "gcra",
            "max_wait": 0.0,
            "priority": 0,
        }
        assert tiers["paid"]["rpm"] == 600


def test_a_key_cannot_be_created_already_expired(gateway: RunningGateway) -> None:
    """POST /admin/keys with an expiry in the past is a 400 naming expires_at; a future one is fine."""
    with gateway.admin() as admin:
        error = assert_openai_error(
            admin.post("/admin/keys", json={"user": "x", "tier": "free", "expires_at": "2020-01-01T00:00:00Z"}),
            400,
            "invalid_value",
            "expires_at",
        )
        assert error["message"] == (
            "Invalid 'expires_at': 2020-01-01T00:00:00+00:00 is in the past; a new key must expire in the future."
        )
        assert admin.get("/admin/keys").json()["data"] == []
        assert (
            admin.post(
                "/admin/keys", json={"user": "x", "tier": "free", "expires_at": "2999-01-01T00:00:00Z"}
            ).status_code
            == 201
        )


def test_patch_limits_merges_as_the_cli_does(gateway: RunningGateway, sqlite_url: str, tmp_path: Path) -> None:
    """PATCH {"limits": ...} is a merge patch (a value sets, null removes one, "limits": null removes
    all), and `keys update --limit` gives the same overrides step by step."""
    from typer.testing import CliRunner

    from quotagate.cli import app

    config = tmp_path / "cli.yaml"
    config.write_text(f"database: {sqlite_url}\ntiers: {{free: {{}}, paid: {{}}}}\nmodels: []\n")
    by_http, by_cli = gateway.create_key(limits={"rpm": 100}), gateway.create_key(limits={"rpm": 100})
    steps: list[tuple[dict[str, Any] | None, list[str]]] = [
        ({"tpm": 5000}, ["--limit", "tpm=5000"]),
        ({"rpm": None, "tpd": 9000}, ["--limit", "rpm=none", "--limit", "tpd=9000"]),
        ({}, []),
        (None, ["--clear-limits"]),
    ]
    expected = [{"rpm": 100, "tpm": 5000}, {"tpm": 5000, "tpd": 9000}, {"tpm": 5000, "tpd": 9000}, None]
    with gateway.admin() as admin:
        for (patch, options), limits in zip(steps, expected, strict=True):
            patched = admin.patch(f"/admin/keys/{by_http['id']}", json={"limits": patch})
            assert patched.status_code == 200 and patched.json()["limits"] == limits
            if options:
                result = CliRunner().invoke(app, ["keys", "update", by_cli["id"], *options, "-c", str(config)])
                assert result.exit_code == 0, result.output
            assert admin.get(f"/admin/keys/{by_cli['id']}").json()["limits"] == limits
        assert_openai_error(
            admin.patch(f"/admin/keys/{by_http['id']}", json={"limits": {"rpx": None}}), 400, param="limits.rpx"
        )
