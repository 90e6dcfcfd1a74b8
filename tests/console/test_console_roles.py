"""Roles, CSRF and the audit log in the console, in Chromium against a real gateway: a viewer sees
no write control and a write forced through the page is refused; a team admin sees and makes only
its team's keys; a cookie-borne write without the CSRF token is refused; the audit page lists what
was just done as GET /admin/audit does, page by page; an admin makes and deletes admin keys."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from .conftest import ConsoleGateway, SignIn, accessibility_problems

Screenshot = Callable[[Page, str], Awaitable[Path]]


def admin_key(gw: ConsoleGateway, role: str, team: str | None = None) -> dict[str, Any]:
    """An admin key of ``role`` made with the master key (POST /admin/admin-keys)."""
    with gw.admin() as admin:
        answer = admin.post(
            "/admin/admin-keys", json={"name": f"{role} {secrets.token_hex(2)}", "role": role, "team": team}
        )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def open_page(page: Page, hash_path: str) -> None:
    """Goes to #/hash_path and waits until the page has drawn (nothing is loading any more)."""
    await page.goto(f"/ui#/{hash_path}")
    name = hash_path.split("?")[0]
    # The page's module draws into .page-body, the router marks <main> busy until it is done.
    await expect(page.locator(f'section[data-page="{name}"] .page-body > *').first).to_be_attached()
    await expect(page.locator("main[aria-busy]")).to_have_count(0)


# A write forced through the page's own api.js: the session's CSRF token is sent, so only the
# role can refuse it.
FORCED_WRITE = """async ([method, path, body]) => {
  const { api } = await import("/ui/static/api.js");
  try {
    await api.send(method, path, body);
    return { status: 200 };
  } catch (error) {
    return { status: error.status, code: error.code, message: error.message };
  }
}"""


async def test_a_viewer_sees_no_write_control_and_a_forced_write_is_refused(
    signed_in: SignIn, console_gateway: ConsoleGateway
) -> None:
    """Signed in with a viewer key: no New key, row actions, overrides form or admin keys; every
    page still reads; a write sent through the page's api.js (CSRF token and all) gets 403."""
    viewer = admin_key(console_gateway, "viewer")
    page = await signed_in(viewer["key"])
    await expect(page.locator("#who-role")).to_have_text("viewer")
    keys = console_gateway.get("/admin/keys")["data"]
    await open_page(page, "keys")
    await expect(page.locator("tr[data-key]")).to_have_count(len(keys))
    await expect(page.get_by_role("button", name="New key")).to_have_count(0)
    await expect(page.locator("[data-action]")).to_have_count(0)
    await expect(page.get_by_role("form")).to_have_count(0)
    await open_page(page, f"keys?key={console_gateway.keys['alice']['id']}")
    await expect(page.locator(".key-limits li.limit").first).to_be_visible()
    await expect(page.locator("button:visible").filter(has_text="Rotate")).to_have_count(0)
    await expect(page.get_by_role("form", name="Limit overrides")).to_have_count(0)
    await open_page(page, "teams")
    await expect(page.locator("section.team")).to_have_count(len(console_gateway.get("/admin/teams")["data"]))
    await open_page(page, "audit")
    await expect(page.locator("tr[data-action]").first).to_be_visible()
    await expect(page.locator(".admin-keys-section")).to_have_count(0)

    before = len(console_gateway.get("/admin/keys")["data"])
    for method, path, body in (
        ("POST", "/admin/keys", {"user": "mallory", "tier": "free"}),
        ("POST", f"/admin/keys/{console_gateway.keys['carol']['id']}/disable", None),
        ("DELETE", f"/admin/keys/{console_gateway.keys['carol']['id']}", None),
        ("POST", "/admin/admin-keys", {"name": "mine", "role": "admin", "team": None}),
    ):
        refused = await page.evaluate(FORCED_WRITE, [method, path, body])
        assert (refused["status"], refused["code"]) == (403, "permission_denied"), (method, path, refused)
        assert "viewer" in refused["message"]
    assert len(console_gateway.get("/admin/keys")["data"]) == before
    assert console_gateway.get(f"/admin/keys/{console_gateway.keys['carol']['id']}")["disabled"] is False


async def test_a_team_admin_sees_and_makes_only_its_teams_keys(
    signed_in: SignIn, console_gateway: ConsoleGateway
) -> None:
    """A team admin of research: the keys page lists GET /admin/keys?team=research only, the create
    form's team is fixed to research, another team's key is not found, and the teams page shows
    research alone; the audit log is not for it."""
    lead = admin_key(console_gateway, "team_admin", "research")
    page = await signed_in(lead["key"])
    await expect(page.locator("#who-name")).to_contain_text("(research)")
    theirs = console_gateway.get("/admin/keys", team="research")["data"]
    await open_page(page, "keys")
    await expect(page.locator("tr[data-key]")).to_have_count(len(theirs))
    for key in theirs:
        await expect(page.locator(f'tr[data-key="{key["id"]}"]')).to_be_visible()

    await page.get_by_role("button", name="New key").click()
    form = page.get_by_role("form", name="Create a key")
    team = form.get_by_label("Team")
    await expect(team).to_be_disabled()
    await expect(team).to_have_value("research")
    user = f"tess-{secrets.token_hex(2)}"
    await form.get_by_label("User").fill(user)
    await form.get_by_role("button", name="Create key").click()
    await expect(page.locator("dialog.secret-dialog")).to_be_visible()
    await page.locator("dialog.secret-dialog").get_by_role("button", name="Done").click()
    made = [k for k in console_gateway.get("/admin/keys")["data"] if k["user"] == user]
    assert [k["team"] for k in made] == ["research"]
    await expect(page.locator(f'tr[data-key="{made[0]["id"]}"]')).to_be_visible()

    await open_page(page, f"keys?key={console_gateway.keys['carol']['id']}")  # carol has no team
    await expect(page.get_by_role("alert")).to_contain_text("in your team")
    await open_page(page, "teams")
    await expect(page.locator("section.team")).to_have_count(1)
    await expect(page.locator('section.team[data-team="research"]')).to_be_visible()
    users = {u["user"] for u in console_gateway.get("/admin/keys", team="research")["data"]}
    await expect(page.locator("tr[data-user]")).to_have_count(len(users))
    await open_page(page, "audit")
    await expect(page.locator(".audit-section [role=note]")).to_contain_text("admins and viewers")


async def test_a_cookie_borne_write_needs_the_csrf_token(signed_in: SignIn, console_gateway: ConsoleGateway) -> None:
    """With the session cookie alone a POST is 403 csrf_failed (and makes nothing); with the
    session's X-CSRF-Token it is made."""
    page = await signed_in()
    request = page.context.request
    user = f"csrf-{secrets.token_hex(2)}"
    refused = await request.post("/admin/keys", data={"user": user, "tier": "free"})
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "csrf_failed"
    wrong = await request.post("/admin/keys", data={"user": user, "tier": "free"}, headers={"X-CSRF-Token": "nope"})
    assert wrong.status == 403
    assert not [k for k in console_gateway.get("/admin/keys")["data"] if k["user"] == user]
    csrf = (await (await request.get("/ui/session")).json())["csrf"]
    made = await request.post("/admin/keys", data={"user": user, "tier": "free"}, headers={"X-CSRF-Token": csrf})
    assert made.status == 201
    with console_gateway.admin() as admin:
        assert admin.delete(f"/admin/keys/{(await made.json())['id']}").status_code == 200


async def audit_rows(page: Page) -> list[dict[str, str | None]]:
    rows = page.locator(".audit-section tr[data-id]")
    return [
        {name: await rows.nth(i).get_attribute(f"data-{name}") for name in ("id", "action", "target")}
        for i in range(await rows.count())
    ]


def api_rows(entries: list[dict[str, Any]]) -> list[dict[str, str | None]]:
    return [{"id": str(e["id"]), "action": e["action"], "target": e["target"] or ""} for e in entries]


async def test_the_audit_page_lists_what_was_just_done_as_the_audit_api_does(
    console_page: Page, console_gateway: ConsoleGateway, screenshot: Screenshot
) -> None:
    """Keys created, rotated, changed and disabled show at the top of the audit page, newest first,
    row for row as GET /admin/audit answers, with who did it."""
    with console_gateway.admin() as admin:
        made = admin.post("/admin/keys", json={"user": "audited", "tier": "free", "name": "audit me"}).json()
        admin.post(f"/admin/keys/{made['id']}/rotate")
        admin.patch(f"/admin/keys/{made['id']}", json={"limits": {"rpm": 30}})
        admin.post(f"/admin/keys/{made['id']}/disable")
    page = console_page
    await open_page(page, "audit")
    api = console_gateway.get("/admin/audit", limit=25)
    assert await audit_rows(page) == api_rows(api["data"])
    top = [(e["action"], e["target"]) for e in api["data"][:4]]
    assert top == [(a, made["id"]) for a in ("key.disable", "key.update", "key.rotate", "key.create")]
    newest = page.locator(f'.audit-section tr[data-id="{api["data"][0]["id"]}"]')
    await expect(newest.locator("td").nth(1)).to_have_text("master key")
    await expect(newest.locator("td").nth(3)).to_have_text(made["id"])
    await expect(page.locator(".audit-section tr[data-action='key.update'] td").nth(4)).to_contain_text('"rpm":30')
    await screenshot(page, "audit")


async def test_the_audit_page_pages_older_and_back_with_before(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """Older shows GET /admin/audit?before=<last id shown>; Newer comes back to the first page."""
    with console_gateway.admin() as admin:
        made = admin.post("/admin/keys", json={"user": "paged", "tier": "free"}).json()
        for _ in range(14):  # at least 28 entries more: more than a page of 25
            admin.post(f"/admin/keys/{made['id']}/disable")
            admin.post(f"/admin/keys/{made['id']}/enable")
    page = console_page
    await open_page(page, "audit")
    first = console_gateway.get("/admin/audit", limit=25)
    assert first["has_more"]
    older = page.get_by_role("button", name="Older")
    newer = page.get_by_role("button", name="Newer")
    await expect(newer).to_be_disabled()
    await older.click()
    second = console_gateway.get("/admin/audit", limit=25, before=first["data"][-1]["id"])
    await expect(page.locator(f'.audit-section tr[data-id="{second["data"][0]["id"]}"]')).to_be_visible()
    assert await audit_rows(page) == api_rows(second["data"])
    assert f"before={first['data'][-1]['id']}" in page.url
    await newer.click()
    await expect(page.locator(f'.audit-section tr[data-id="{first["data"][0]["id"]}"]')).to_be_visible()
    assert await audit_rows(page) == api_rows(first["data"])
    await expect(newer).to_be_disabled()


async def test_an_admin_makes_and_deletes_admin_keys_on_the_audit_page(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """The admin keys section lists GET /admin/admin-keys; the form makes a team admin (its key
    shown once, and good for signing in as one); Delete (confirmed) removes it."""
    page = console_page
    await open_page(page, "audit")
    section = page.locator(".admin-keys-section")
    listed = console_gateway.get("/admin/admin-keys")["data"]
    await expect(section.locator("tr[data-admin-key]")).to_have_count(len(listed))
    form = page.get_by_role("form", name="Create an admin key")
    name = f"ops {secrets.token_hex(2)}"
    await form.get_by_label("Name").fill(name)
    await expect(form.get_by_label("Team")).to_be_disabled()
    await form.get_by_label("Role").select_option("team_admin")
    await form.get_by_label("Team").select_option("research")
    await form.get_by_role("button", name="Create admin key").click()
    dialog = page.locator("dialog.secret-dialog")
    await expect(dialog).to_contain_text("will not be shown again")
    secret = await dialog.locator(".secret-value").input_value()
    await dialog.get_by_role("button", name="Done").click()
    assert secret.startswith("qga-")
    made = [k for k in console_gateway.get("/admin/admin-keys")["data"] if k["name"] == name]
    assert [(k["role"], k["team"]) for k in made] == [("team_admin", "research")]
    with console_gateway.admin() as admin:
        whoami = admin.get("/admin/whoami", headers={"Authorization": f"Bearer {secret}"}).json()
    assert (whoami["role"], whoami["team"], whoami["name"]) == ("team_admin", "research", name)

    await section.get_by_role("button", name=f"Delete admin key {name} ({made[0]['id']})").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete", exact=True).click()
    await expect(section.locator(f'tr[data-admin-key="{made[0]["id"]}"]')).to_have_count(0)
    assert made[0]["id"] not in {k["id"] for k in console_gateway.get("/admin/admin-keys")["data"]}
    actions = [e["action"] for e in console_gateway.get("/admin/audit", limit=2)["data"]]
    assert actions == ["admin_key.delete", "admin_key.create"]


async def test_the_audit_page_fits_a_phone_and_passes_the_accessibility_checks(signed_in: SignIn) -> None:
    """At 390 px the audit page (log and admin keys) does not scroll sideways and passes the checks."""
    for width, height in ((390, 844), (1280, 800)):
        page = await signed_in(width=width, height=height)
        await open_page(page, "audit")
        await expect(page.locator(".admin-keys-section")).to_be_visible()
        widths = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], f"#/audit is {widths[0]} px wide on a {widths[1]} px screen"
        assert await accessibility_problems(page) == [], f"#/audit at {width} px"
