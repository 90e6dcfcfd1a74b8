"""The console's keys page in Chromium against a real gateway: the list next to GET /admin/keys,
searching it, creating a key (shown once) and using it with the OpenAI SDK, rotating, disabling
and deleting from the page, and one key's live limit bars next to GET /admin/keys/{id}/quota."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from openai import APIStatusError, AsyncOpenAI
from playwright.async_api import Locator, Page, expect

from .conftest import ConsoleGateway, SignIn, accessibility_problems

Screenshot = Callable[[Page, str], Awaitable[Path]]


async def open_keys(page: Page, query: str = "") -> None:
    """Goes to the keys page (or one key's, with ?key=ID) and waits until it has drawn its data."""
    await page.goto(f"/ui#/keys{query}")
    await expect(page.locator('section[data-page="keys"]')).to_be_visible()
    if "key=" in query:
        await expect(page.locator(".limits-body .limits, .limits-body .limit-empty")).to_be_visible()
    else:
        await expect(page.locator("tr[data-key], tr.empty").first).to_be_visible()


async def chat_status(gw: ConsoleGateway, key: str) -> int:
    """The status a chat completion gets with ``key``, through the official OpenAI SDK."""
    client = AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    try:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello from the console tests"}], max_tokens=8
        )
    except APIStatusError as exc:
        return exc.status_code
    finally:
        await client.close()
    return 200


def new_key(gw: ConsoleGateway, user: str, **extra: Any) -> dict[str, Any]:
    """A key made with the admin API (a user of the test's own, so other tests' keys stay as they are)."""
    with gw.admin() as admin:
        answer = admin.post("/admin/keys", json={"user": user, "tier": "free", **extra})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def secret_from_dialog(page: Page) -> str:
    """The key the one-time dialog shows; closes the dialog."""
    dialog = page.locator("dialog.secret-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("will not be shown again")
    secret = await dialog.locator(".secret-value").input_value()
    await dialog.get_by_role("button", name="Done").click()
    await expect(dialog).to_have_count(0)
    return secret


async def confirm(page: Page, label: str) -> None:
    """Answers the confirmation dialog with its ``label`` button."""
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    # This dialog, not any: the answer may open the next one (a rotated key's secret) at once.
    asked = await dialog.element_handle()
    await dialog.get_by_role("button", name=label, exact=True).click()
    await asked.wait_for_element_state("hidden")


def row(page: Page, key_id: str) -> Locator:
    return page.locator(f'tr[data-key="{key_id}"]')


def cells(key: dict[str, Any]) -> list[str]:
    """The texts the keys table shows for ``key`` from the admin API (up to Expires)."""
    return [key["id"], key["name"] or "—", key["user"], key["team"] or "—", key["tier"], key["key_hint"]]


async def test_the_keys_page_lists_every_key_the_admin_api_lists(
    console_page: Page, console_gateway: ConsoleGateway, screenshot: Screenshot
) -> None:
    """Each key of GET /admin/keys has a row with its id, name, user, team, tier, hint and state."""
    page = console_page
    await open_keys(page)
    keys = console_gateway.get("/admin/keys")["data"]
    await expect(page.locator("tr[data-key]")).to_have_count(len(keys))
    for key in keys:
        texts = [text.strip() for text in await row(page, key["id"]).locator("td").all_inner_texts()]
        assert texts[:6] == cells(key)
        state = "disabled" if key["disabled"] else "active"
        await expect(row(page, key["id"])).to_have_attribute("data-status", state)
        await expect(row(page, key["id"]).locator(".badge")).to_have_text(state)
    await expect(page.locator(".status-line")).to_have_text(f"{len(keys)} keys")
    await screenshot(page, "keys")


async def test_searching_keeps_the_keys_whose_user_name_id_or_team_match(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """The search box filters the rows by user, name, id or team, and keeps the search in the address."""
    page = console_page
    await open_keys(page)
    keys = console_gateway.get("/admin/keys")["data"]
    alice = console_gateway.keys["alice"]
    search = page.get_by_label("Search keys")
    await search.fill("carol")
    await expect(page.locator("tr[data-key]")).to_have_count(sum(k["user"] == "carol" for k in keys))
    await search.fill(alice["id"])
    await expect(page.locator("tr[data-key]")).to_have_count(1)
    await expect(row(page, alice["id"])).to_be_visible()
    await search.fill("research")
    await expect(page.locator("tr[data-key]")).to_have_count(sum(k["team"] == "research" for k in keys))
    assert page.url.endswith("#/keys?q=research")
    await search.fill("no such key anywhere")
    await expect(page.locator("tr.empty")).to_have_text("No key matches.")


async def test_a_key_created_in_the_console_is_shown_once_and_works_with_the_openai_sdk(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """The form makes the key (user, tier, team, name, an override); the dialog shows it once; the
    OpenAI SDK gets a 200 with it; the admin API has the key as it was filled in."""
    page = console_page
    user = unique("erin")
    await open_keys(page)
    await page.get_by_role("button", name="New key").click()
    form = page.get_by_role("form", name="Create a key")
    await form.get_by_label("User").fill(user)
    await form.get_by_label("Tier").select_option("free")
    await form.get_by_label("Team").select_option("research")
    await form.get_by_label("Name").fill("erin's notebook")
    await form.get_by_text("Limit overrides").click()
    await form.get_by_label("Requests per day", exact=True).fill("500")
    await form.get_by_role("button", name="Create key").click()
    key = await secret_from_dialog(page)
    assert key.startswith("qg-")
    assert await chat_status(console_gateway, key) == 200

    made = [k for k in console_gateway.get("/admin/keys")["data"] if k["user"] == user]
    assert len(made) == 1
    assert (made[0]["tier"], made[0]["team"], made[0]["name"], made[0]["limits"]) == (
        "free",
        "research",
        "erin's notebook",
        {"rpd": 500},
    )
    await expect(row(page, made[0]["id"])).to_be_visible()
    # Shown once: nothing on the page holds the key any more.
    assert key not in await page.content()


async def test_rotating_in_the_console_keeps_the_id_and_usage_and_retires_the_old_secret(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """Rotate (confirmed) shows a new secret once: the old one gets 401, the new one 200, and the
    key keeps its id and its usage (the quota's used counts carry over)."""
    page = console_page
    made = new_key(console_gateway, unique("frank"), name="to rotate")
    assert await chat_status(console_gateway, made["key"]) == 200
    path = f"/admin/keys/{made['id']}/quota"
    before = {entry["name"]: entry for entry in console_gateway.get(path)["limits"]}

    await open_keys(page)
    await row(page, made["id"]).get_by_role("button", name=f"Rotate key to rotate ({made['id']})").click()
    await confirm(page, "Rotate")
    rotated = await secret_from_dialog(page)

    assert rotated != made["key"] and rotated.startswith("qg-")
    after = {entry["name"]: entry for entry in console_gateway.get(path)["limits"]}
    for name, entry in before.items():
        if entry["algorithm"] == "calendar":  # quotas and budgets: no refill between the two reads
            assert after[name]["used"] == entry["used"] > 0, name
    assert await chat_status(console_gateway, made["key"]) == 401
    assert await chat_status(console_gateway, rotated) == 200
    record = console_gateway.get(f"/admin/keys/{made['id']}")
    assert record["id"] == made["id"] and record["key_hint"] != made["key_hint"]
    await expect(row(page, made["id"]).locator("td").nth(5)).to_have_text(record["key_hint"])


async def test_disabling_enabling_and_deleting_from_the_console_take_effect(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """Disable refuses the key at once (401), Enable lets it in again, Delete (confirmed) removes it."""
    page = console_page
    made = new_key(console_gateway, unique("gus"))
    await open_keys(page)
    await row(page, made["id"]).get_by_role("button", name=f"Disable key {made['id']}").click()
    await expect(row(page, made["id"])).to_have_attribute("data-status", "disabled")
    assert console_gateway.get(f"/admin/keys/{made['id']}")["disabled"] is True
    assert await chat_status(console_gateway, made["key"]) == 401

    await row(page, made["id"]).get_by_role("button", name=f"Enable key {made['id']}").click()
    await expect(row(page, made["id"])).to_have_attribute("data-status", "active")
    assert await chat_status(console_gateway, made["key"]) == 200

    await row(page, made["id"]).get_by_role("button", name=f"Delete key {made['id']}").click()
    await confirm(page, "Delete")
    await expect(row(page, made["id"])).to_have_count(0)
    assert made["id"] not in {k["id"] for k in console_gateway.get("/admin/keys")["data"]}
    assert await chat_status(console_gateway, made["key"]) == 401


async def test_cancelling_a_confirmation_changes_nothing(console_page: Page, console_gateway: ConsoleGateway) -> None:
    """Delete answered with Cancel (or Escape) leaves the key in place and working."""
    page = console_page
    made = new_key(console_gateway, unique("hal"))
    await open_keys(page)
    await row(page, made["id"]).get_by_role("button", name=f"Delete key {made['id']}").click()
    await confirm(page, "Cancel")
    await row(page, made["id"]).get_by_role("button", name=f"Delete key {made['id']}").click()
    await expect(page.get_by_role("dialog")).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(page.get_by_role("dialog")).to_have_count(0)
    await expect(row(page, made["id"])).to_be_visible()
    assert await chat_status(console_gateway, made["key"]) == 200


async def limit_figures(item: Locator) -> dict[str, str | None]:
    return {name: await item.get_attribute(f"data-{name}") for name in ("scope", "max", "used", "remaining")}


async def test_a_keys_limit_bars_match_its_quota_api(
    console_page: Page, console_gateway: ConsoleGateway, screenshot: Screenshot
) -> None:
    """A key's page draws one bar per entry of GET /admin/keys/{id}/quota (its own, its team's),
    with the same limit and, for quotas and budgets, the same use; it shows the key's settings."""
    page = console_page
    alice = console_gateway.keys["alice"]
    await open_keys(page, f"?key={alice['id']}")
    quota = console_gateway.get(f"/admin/keys/{alice['id']}/quota")
    items = page.locator(".key-limits li.limit")
    await expect(items).to_have_count(len(quota["limits"]))
    for entry in quota["limits"]:
        item = page.locator(".key-limits li.limit").filter(has=page.get_by_text(entry["name"], exact=True))
        figures = await limit_figures(item)
        assert (figures["scope"], figures["max"]) == (entry["scope"], str(entry["limit"]))
        meter_max = await item.get_by_role("meter", name=entry["name"]).get_attribute("aria-valuemax")
        assert float(meter_max or "nan") == entry.get("limit_usd", entry["limit"])  # budgets in dollars
        if entry["algorithm"] == "calendar":
            assert figures["used"] == str(entry["used"]), entry["name"]
    assert {e["scope"] for e in quota["limits"]} >= {"key", "team"}
    details = page.locator(".details-list")
    await expect(details.locator('[data-field="user"]')).to_have_text("alice")
    await expect(details.locator('[data-field="team"]')).to_have_text("research")
    await expect(details.locator('[data-field="key_hint"]')).to_have_text(alice["key_hint"])
    await screenshot(page, "key-detail")


async def test_a_keys_bars_follow_its_use_while_the_page_is_open(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """The limits refresh by themselves (every 5 s): a request sent meanwhile shows in the RPD bar."""
    page = console_page
    made = new_key(console_gateway, unique("ida"), limits={"rpd": 40})
    await open_keys(page, f"?key={made['id']}")
    rpd = page.locator('.key-limits li.limit[data-scope="key"]').filter(has_text="requests per day")
    await expect(rpd).to_have_attribute("data-used", "0")
    assert await chat_status(console_gateway, made["key"]) == 200
    await expect(rpd).to_have_attribute("data-used", "1", timeout=8000)
    await expect(rpd.locator(".bar-text")).to_have_text("1 of 40 requests")
    await expect(rpd.locator(".limit-remaining")).to_have_text("39 requests remaining")


async def test_limit_overrides_saved_on_a_keys_page_change_its_limits(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """The overrides form patches the key's limits (set one, clear another) and the bars follow."""
    page = console_page
    made = new_key(console_gateway, unique("jo"), limits={"rpd": 40, "tpm": 9000})
    await open_keys(page, f"?key={made['id']}")
    form = page.get_by_role("form", name="Limit overrides")
    await expect(form.get_by_label("Requests per day", exact=True)).to_have_value("40")
    await form.get_by_label("Requests per day", exact=True).fill("77")
    await form.get_by_label("Tokens per minute", exact=True).fill("")
    await form.get_by_role("button", name="Save limits").click()
    await expect(page.locator('.key-limits li.limit[data-scope="key"][data-max="77"]')).to_have_count(1)
    assert console_gateway.get(f"/admin/keys/{made['id']}")["limits"] == {"rpd": 77}
    audit = console_gateway.get("/admin/audit", limit=5)["data"]
    assert any(e["action"] == "key.update" and e["target"] == made["id"] for e in audit)


async def test_the_keys_pages_fit_a_phone_and_pass_the_accessibility_checks(
    signed_in: SignIn, console_gateway: ConsoleGateway
) -> None:
    """At 390 px the list and a key's page do not scroll sideways (rows become cards), and both
    pass the hand-run accessibility checks (labels, names, contrast) at both widths."""
    alice = console_gateway.keys["alice"]
    for width, height in ((390, 844), (1280, 800)):
        page = await signed_in(width=width, height=height)
        for query in ("", f"?key={alice['id']}"):
            await open_keys(page, query)
            widths = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert widths[0] <= widths[1], f"#/keys{query} is {widths[0]} px wide on a {widths[1]} px screen"
            assert await accessibility_problems(page) == [], f"#/keys{query} at {width} px"
        await open_keys(page)
        await page.get_by_role("button", name="New key").click()
        assert await accessibility_problems(page) == [], f"the create form at {width} px"
