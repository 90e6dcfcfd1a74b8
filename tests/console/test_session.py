"""The console's sign-in and session over HTTP: the cookie's attributes, CSRF on writes, what is
reachable without a session, and when a session ends."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import httpx
import pytest

from quotagate.console._session import SessionCodec

from ..conftest import MASTER_KEY, RunningGateway, ServerThread, gateway_config
from ..server.test_errors import assert_openai_error


@pytest.fixture
def gw(start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str) -> RunningGateway:
    return start_gateway(gateway_config(sqlite_url, mock_upstream.url, teams={"research": {"rpm": 100}}))


def sign_in(gw: RunningGateway, key: str = MASTER_KEY) -> tuple[httpx.Client, str]:
    """A client holding a session cookie, and the session's CSRF token."""
    client = httpx.Client(base_url=gw.url, timeout=10)
    answer = client.post("/ui/login", json={"key": key})
    assert answer.status_code == 200, answer.text
    return client, answer.json()["csrf"]


def test_signing_in_sets_a_locked_down_session_cookie(gw: RunningGateway) -> None:
    """The cookie is HttpOnly, SameSite=Strict, for the whole site; the answer says who signed in."""
    answer = httpx.post(gw.url + "/ui/login", json={"key": MASTER_KEY})
    assert answer.status_code == 200
    assert answer.json()["role"] == "admin" and answer.json()["csrf"]
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("qg_session=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP here; behind an HTTPS proxy it is set (next test)
    behind_tls = httpx.post(gw.url + "/ui/login", json={"key": MASTER_KEY}, headers={"X-Forwarded-Proto": "https"})
    assert "; Secure" in behind_tls.headers["set-cookie"]


def test_a_wrong_key_does_not_sign_in(gw: RunningGateway) -> None:
    """A wrong key, a gateway key, and no key are refused without a cookie."""
    user_key = gw.create_key("alice", "free")["key"]
    for body, status in (({"key": "nope"}, 401), ({"key": user_key}, 401), ({}, 400), ({"key": ""}, 400)):
        answer = httpx.post(gw.url + "/ui/login", json=body)
        assert answer.status_code == status
        assert "set-cookie" not in answer.headers
    assert httpx.post(gw.url + "/ui/login", content=b"not json").status_code == 400
    # Another site's page posting the master key (say, from a password manager) signs no one in.
    elsewhere = httpx.post(gw.url + "/ui/login", json={"key": MASTER_KEY}, headers={"Origin": "https://evil.example"})
    assert_openai_error(elsewhere, 403, "csrf_failed")
    assert "set-cookie" not in elsewhere.headers


def test_nothing_of_the_console_is_reachable_without_a_session(gw: RunningGateway) -> None:
    """Without a session: /ui redirects to sign-in, its scripts and the session are 401, and the sign-in page is served."""
    plain = httpx.Client(base_url=gw.url, timeout=10)
    redirect = plain.get("/ui")
    assert redirect.status_code == 303 and redirect.headers["location"] == "/ui/login"
    assert plain.get("/ui/").status_code == 303
    assert_openai_error(plain.get("/ui/session"), 401, "not_signed_in")
    assert_openai_error(plain.get("/ui/static/app.js"), 401, "not_signed_in")
    assert_openai_error(plain.get("/admin/keys"), 401, "missing_api_key")
    login = plain.get("/ui/login")
    assert login.status_code == 200 and login.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in login.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in login.headers["content-security-policy"]
    assert plain.get("/ui/static/login.js").headers["content-type"].startswith("text/javascript")
    forged = httpx.Client(base_url=gw.url, cookies={"qg_session": "e30.AAAA"}, timeout=10)
    assert forged.get("/ui").status_code == 303
    assert_openai_error(forged.get("/admin/keys"), 401, "missing_api_key")


def test_a_session_reads_the_admin_api_and_writes_only_with_its_csrf_token(gw: RunningGateway) -> None:
    """A cookie alone reads; a write needs X-CSRF-Token of this session and the gateway's own origin."""
    client, csrf = sign_in(gw)
    with contextlib.closing(client):
        assert client.get("/ui").status_code == 200
        assert client.get("/ui/session").json()["csrf"] == csrf
        assert client.get("/admin/keys").status_code == 200
        body = {"user": "alice", "tier": "free"}
        assert_openai_error(client.post("/admin/keys", json=body), 403, "csrf_failed")
        assert_openai_error(client.post("/admin/keys", json=body, headers={"X-CSRF-Token": "x"}), 403, "csrf_failed")
        _, other_csrf = sign_in(gw)
        wrong = client.post("/admin/keys", json=body, headers={"X-CSRF-Token": other_csrf})
        assert_openai_error(wrong, 403, "csrf_failed")
        elsewhere = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
        assert_openai_error(client.post("/admin/keys", json=body, headers=elsewhere), 403, "csrf_failed")
        same_origin = {"X-CSRF-Token": csrf, "Origin": gw.url}
        assert client.post("/admin/keys", json=body, headers=same_origin).status_code == 201
        # Behind a reverse proxy that names the browser's host in X-Forwarded-Host.
        proxied = {"X-CSRF-Token": csrf, "Origin": "https://gw.example", "X-Forwarded-Host": "gw.example"}
        assert client.post("/admin/keys", json=body, headers=proxied).status_code == 201
        with gw.admin() as admin:
            sign_ins = [e for e in admin.get("/admin/audit").json()["data"] if e["action"] == "console.sign_in"]
        assert len(sign_ins) == 2 and sign_ins[0]["actor"] == "master"


def test_signing_out_ends_the_session_in_the_browser(gw: RunningGateway) -> None:
    """POST /ui/logout (with the token) clears the cookie; without the token it is refused."""
    client, csrf = sign_in(gw)
    with contextlib.closing(client):
        assert_openai_error(client.post("/ui/logout"), 403, "csrf_failed")
        out = client.post("/ui/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert client.get("/ui").status_code == 303


def test_a_deleted_admin_key_ends_its_sessions(gw: RunningGateway) -> None:
    """Sessions of an admin key stop working once the key is deleted; a viewer's session cannot write."""
    with gw.admin() as admin:
        made = admin.post("/admin/admin-keys", json={"name": "ops", "role": "viewer"}).json()
    client, csrf = sign_in(gw, made["key"])
    with contextlib.closing(client):
        assert client.get("/ui/session").json()["role"] == "viewer"
        refused = client.post("/admin/keys", json={"user": "a", "tier": "free"}, headers={"X-CSRF-Token": csrf})
        assert_openai_error(refused, 403, "permission_denied")
        with gw.admin() as admin:
            assert admin.delete(f"/admin/admin-keys/{made['id']}").status_code == 200
        assert_openai_error(client.get("/admin/keys"), 401, "session_ended")
        assert client.get("/ui").status_code == 303


def test_console_files_are_served_from_the_package_only(gw: RunningGateway) -> None:
    """Unknown files, other kinds of file and paths that climb out of static/ are 404s."""
    client, _ = sign_in(gw)
    with contextlib.closing(client):
        assert client.get("/ui/static/app.js").status_code == 200
        for name in ("nope.js", "../_console.py", "..%2F_console.py", "pages/../../_session.py", "README.md"):
            assert client.get("/ui/static/" + name).status_code == 404, name
        assert client.get("/ui/elsewhere").status_code == 404


def test_a_session_is_signed_expires_and_ends_when_the_master_key_changes() -> None:
    """A session cookie read back is the one made; past its time, tampered, or under another master key it is nothing."""
    codec = SessionCodec("master-one", seconds=60)
    session, cookie = codec.new("master", now=1000.0)
    assert codec.read(cookie, now=1059.0) == session
    assert codec.read(cookie, now=1061.0) is None
    payload, _, signature = cookie.partition(".")
    assert codec.read(payload + "x." + signature, now=1001.0) is None
    assert codec.read(cookie + "x", now=1001.0) is None
    assert SessionCodec("master-two").read(cookie, now=1001.0) is None
    assert SessionCodec("master-one").read(cookie, now=1001.0) == session  # another node, same key


def test_a_session_survives_a_proxys_basic_auth_and_without_a_master_key_a_reload(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Behind a proxy's Basic auth the cookie still signs the console's calls in; with no master
    key, a session made before a reload's new AdminAuth is still good after it."""
    first = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    with first.admin() as admin:
        made = admin.post("/admin/admin-keys", json={"name": "ops", "role": "admin"}).json()
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url, master_key=None))
    client, _ = sign_in(gw, made["key"])
    with contextlib.closing(client):
        basic = client.get("/admin/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 200 and basic.json()["id"] == made["id"]
        # What a reload does: a new AdminAuth for the admin API.
        gw.gateway.admin = gw.gateway._make_admin(gw.gateway.config, gw.gateway.authenticator, gw.gateway.router)
        assert client.get("/admin/whoami").json()["role"] == "admin"
    assert_openai_error(httpx.get(gw.url + "/admin/keys", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, None)
