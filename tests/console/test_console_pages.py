"""The console in Chromium against a real gateway: signing in, that nothing is reachable without a
session, each page's figures next to what the admin API answers (overview, deployments, ledger),
the ledger's filters, paging and CSV, a phone's width, the keyboard alone, and accessibility."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from playwright.async_api import Browser, Page, Request, expect

from ..conftest import MASTER_KEY
from .conftest import ConsoleGateway, SignIn, accessibility_problems, new_context

Screenshot = Callable[[Page, str], Awaitable[Path]]
PAGES = ["overview", "keys", "teams", "deployments", "ledger", "audit"]


async def open_page(page: Page, name: str) -> None:
    """Goes to #/name and waits until the page has drawn its data."""
    await page.goto(f"/ui#/{name}")
    await expect(page.locator(f'section[data-page="{name}"]')).to_be_visible()
    await expect(page.locator("main")).not_to_have_attribute("aria-busy", "true")
    await expect(page.locator(".page-body")).not_to_have_attribute("aria-busy", "true")


async def ledger_ids(page: Page) -> list[str]:
    ids: list[str] = await page.locator("tbody tr[data-request-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.requestId)"
    )
    return ids


async def ledger_settled(page: Page) -> None:
    """Until the ledger page's last load has ended (its line under the filters says which rows)."""
    await expect(page.locator(".page-ledger .status-line")).not_to_have_text("Loading…")


def api_ids(gw: ConsoleGateway, **filters: Any) -> list[str]:
    """The request ids of GET /admin/ledger's first page with these filters."""
    return [row["request_id"] for row in gw.get("/admin/ledger", **filters)["data"]]


def all_api_ids(gw: ConsoleGateway, **filters: Any) -> list[str]:
    """Every matching request id, following next_cursor to the end."""
    ids: list[str] = []
    cursor = None
    while True:
        page = gw.get("/admin/ledger", limit=500, cursor=cursor, **filters)
        ids += [row["request_id"] for row in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


# ---- signing in ----


async def test_the_master_key_signs_in_through_the_form(browser: Browser, console_gateway: ConsoleGateway) -> None:
    """/ui without a session goes to the sign-in page; the master key there opens the console as admin."""
    context = await new_context(browser, console_gateway)
    try:
        page = await context.new_page()
        await page.goto("/ui")
        await expect(page).to_have_url(re.compile(r"/ui/login$"))
        await page.get_by_label("Admin key").fill(MASTER_KEY)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(re.compile(r"/ui/?(#/overview)?$"))
        await expect(page.locator("#who-role")).to_have_text("admin")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    finally:
        await context.close()


async def test_a_wrong_key_shows_the_error_and_signs_nobody_in(
    browser: Browser, console_gateway: ConsoleGateway
) -> None:
    """A wrong key leaves the user on the sign-in page with the server's message, and no session."""
    context = await new_context(browser, console_gateway)
    try:
        page = await context.new_page()
        await page.goto("/ui/login")
        key = page.get_by_label("Admin key")
        await key.fill("qg-not-a-real-key")
        await key.press("Enter")
        error = page.locator("#login-error")
        await expect(error).not_to_be_empty()
        await expect(error).to_have_attribute("role", "alert")
        await expect(key).to_have_attribute("aria-invalid", "true")
        await expect(key).to_be_focused()
        assert page.url.endswith("/ui/login")
        assert (await context.request.get("/ui/session")).status == 401
        await page.goto("/ui")
        await expect(page).to_have_url(re.compile(r"/ui/login$"))
    finally:
        await context.close()


async def test_nothing_of_the_console_is_reachable_without_a_session(
    browser: Browser, console_gateway: ConsoleGateway
) -> None:
    """Without a session: /ui redirects to sign in, the console's scripts and the admin API answer
    401; only the sign-in page and what it loads are public."""
    async with httpx.AsyncClient(base_url=console_gateway.url, timeout=10) as client:
        answer = await client.get("/ui")
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
        for private in ("/ui/static/app.js", "/ui/static/api.js", "/ui/static/pages/ledger.js", "/ui/session"):
            assert (await client.get(private)).status_code == 401, private
        for public in ("/ui/login", "/ui/static/login.js", "/ui/static/app.css"):
            assert (await client.get(public)).status_code == 200, public
        for admin in ("/admin/deployments", "/admin/usage?by=model", "/admin/keys"):
            assert (await client.get(admin)).status_code == 401, admin
    context = await new_context(browser, console_gateway)
    try:
        page = await context.new_page()
        await page.goto("/ui#/deployments")
        await expect(page).to_have_url(re.compile(r"/ui/login#/deployments$"))
        status = await page.evaluate("fetch('/admin/ledger', {credentials: 'same-origin'}).then(r => r.status)")
        assert status == 401
        # Signing in there returns to the page asked for.
        await page.get_by_label("Admin key").fill(MASTER_KEY)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Deployments")
    finally:
        await context.close()


async def test_signing_out_ends_the_session(signed_in: SignIn) -> None:
    """Sign out goes to the sign-in page, and /ui then needs signing in again."""
    page = await signed_in()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/ui/login$"))
    await page.goto("/ui")
    await expect(page).to_have_url(re.compile(r"/ui/login$"))


# ---- overview ----


async def check_overview(page: Page, gw: ConsoleGateway, window: str, by: str) -> None:
    """The overview's cards, charts and top table against GET /admin/usage/series and /admin/usage."""
    series = gw.get("/admin/usage/series", window=window, by=by)
    totals = series["totals"]
    for name in ("requests", "tokens", "errors"):
        card = page.locator(f'[data-card="{name}"] dd')
        await expect(card).to_have_attribute("data-value", str(totals[name]))
        await expect(card).to_contain_text(f"{totals[name]:,}")
    for name in ("cost_usd", "saved_usd", "hit_rate"):
        shown = await page.locator(f'[data-card="{name}"] dd').get_attribute("data-value")
        assert float(shown or "nan") == pytest.approx(totals[name], abs=1e-9), name
    await expect(page.locator('[data-card="hit_rate"] dd')).to_have_text(f"{totals['hit_rate'] * 100:.1f} %")
    charts = page.locator("figure.chart")
    await expect(charts).to_have_count(4)
    for index, field in enumerate(("requests", "tokens", "cost_usd", "errors")):
        drawn = float(await charts.nth(index).get_attribute("data-total") or "nan")
        assert drawn == pytest.approx(sum(sum(s[field]) for s in series["series"]), abs=1e-9), field
    assert drawn == pytest.approx(totals["errors"])
    legend = await charts.first.locator(".legend li").all_text_contents() if len(series["series"]) > 1 else []
    assert legend == [s["group"] for s in series["series"]][: len(legend)]
    report = gw.get("/admin/usage", by=by, since=series["buckets"][0])
    expected = {str(row[by]): row["requests"] for row in report["data"]}
    rows = page.locator("tbody tr[data-group]")
    await expect(rows).to_have_count(len(expected))
    shown_rows = await rows.evaluate_all(
        "rows => rows.map(r => [r.dataset.group, r.querySelectorAll('td')[0].textContent])"
    )
    assert {group: int(requests.replace(",", "")) for group, requests in shown_rows} == expected
    counts = [int(requests.replace(",", "")) for _, requests in shown_rows]
    assert counts == sorted(counts, reverse=True)


async def test_overview_matches_the_usage_series_and_report(
    console_page: Page, console_gateway: ConsoleGateway, screenshot: Screenshot
) -> None:
    """The overview's totals, charts and top table are the admin API's figures, for the window
    and grouping chosen; the choice is kept in the address."""
    page = console_page
    await open_page(page, "overview")
    await expect(page.get_by_label("Window", exact=True)).to_have_value("day")
    await expect(page.get_by_label("Group by")).to_have_value("model")
    await check_overview(page, console_gateway, "day", "model")
    assert console_gateway.sent > 0
    await expect(page.locator('[data-card="requests"] dd')).not_to_have_text("0")
    await screenshot(page, "overview")
    await page.get_by_label("Window", exact=True).select_option("hour")
    await page.get_by_label("Group by").select_option("user")
    await expect(page.locator(".page-body")).not_to_have_attribute("aria-busy", "true")
    await check_overview(page, console_gateway, "hour", "user")
    assert "window=hour" in page.url and "by=user" in page.url
    await page.reload()
    await expect(page.get_by_label("Group by")).to_have_value("user")


# ---- deployments ----


async def test_deployments_match_the_admin_api(
    console_page: Page, console_gateway: ConsoleGateway, screenshot: Screenshot
) -> None:
    """A card per deployment with its model, breaker, provider, error rate, traffic and provider
    limits, as GET /admin/deployments has them."""
    page = console_page
    await open_page(page, "deployments")
    deployments = console_gateway.get("/admin/deployments")["data"]
    cards = page.locator("article[data-deployment]")
    await expect(cards).to_have_count(len(deployments))
    breaker_names = {"closed": "closed", "open": "open", "half_open": "half-open"}
    for d in deployments:
        card = page.locator(f'article[data-deployment="{d["id"]}"]')
        await expect(card.locator("h3")).to_have_text(d["label"])
        await expect(card.locator(".dep-state")).to_have_text(f"breaker {breaker_names[d['breaker']]}")
        await expect(card.locator('[data-field="provider"]')).to_have_text(d["provider"])
        await expect(card.locator('[data-field="requests"]')).to_have_text(
            f"{d['requests']:,} ({d['failures']:,} failed)"
        )
        await expect(card.locator('[data-field="error_rate"]')).to_have_text(f"{d['error_rate'] * 100:.1f} %")
        await expect(card.locator('[data-field="in_flight"]')).to_have_text(str(d["in_flight"]))
        for name in d["remaining"]:
            await expect(card.locator(".bar-label", has_text=name.upper())).to_have_count(1)
        if not d["remaining"]:
            await expect(card).to_contain_text("No provider limits configured.")
        await expect(card).to_have_attribute("data-model", d["model"])
        await expect(card.locator('[data-field="id"]')).to_have_text(d["id"])
    await screenshot(page, "deployments")


async def test_deployments_refresh_while_shown_and_stop_on_leaving(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """The deployments page shows new traffic within one 5 s refresh, without a reload, and asks
    nothing more once the user has gone to another page."""
    page = console_page
    await open_page(page, "deployments")
    primary = next(
        d for d in console_gateway.get("/admin/deployments")["data"] if d["label"].startswith("gpt-4o-mini#0")
    )
    card = page.locator(f'article[data-deployment="{primary["id"]}"] [data-field="requests"]')
    await expect(card).to_have_text(re.compile(rf"^{primary['requests']:,} "))
    client = AsyncOpenAI(
        base_url=console_gateway.url + "/v1", api_key=console_gateway.keys["carol"]["key"], max_retries=0
    )
    console_gateway.sent += 1
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a fresh question"}], max_tokens=10
    )
    await expect(card).to_have_text(re.compile(rf"^{primary['requests'] + 1:,} "), timeout=8000)
    await expect(page.locator("#deployments-status")).to_contain_text("refreshes every 5 s")

    asked: list[str] = []

    def note(request: Request) -> None:
        if "/admin/deployments" in request.url:
            asked.append(request.url)

    await page.get_by_role("link", name="Overview").click()
    await expect(page.locator('section[data-page="overview"]')).to_be_visible()
    page.on("request", note)
    await asyncio.sleep(6)
    assert asked == []


# ---- ledger ----


async def test_ledger_rows_match_the_admin_api(
    console_page: Page, console_gateway: ConsoleGateway, screenshot: Screenshot
) -> None:
    """The ledger page lists GET /admin/ledger's rows, newest first, with their key, user,
    model, deployment, tokens, status and error."""
    page = console_page
    await open_page(page, "ledger")
    rows = console_gateway.get("/admin/ledger")["data"]
    assert rows, "the traffic left no ledger rows"
    assert await ledger_ids(page) == [row["request_id"] for row in rows]
    headers = await page.locator("thead th").all_text_contents()
    assert headers == ["Time", "Key", "User", "Model", "Deployment", "Tokens", "Cost", "Latency", "Status", "Error"]
    for row in rows[:8]:
        cells = page.locator(f'tr[data-request-id="{row["request_id"]}"] td')
        await expect(cells.nth(1)).to_have_text(row["key_id"])
        await expect(cells.nth(2)).to_have_text(row["user"])
        model = row["model_served"] or row["model_requested"]
        await expect(cells.nth(3)).to_contain_text(model)
        if row["deployment"]:  # shown short, the whole label in its tooltip
            await expect(cells.nth(4).locator("[title]")).to_have_attribute("title", row["deployment"])
            assert row["deployment"].startswith(await cells.nth(4).locator("[aria-hidden]").inner_text())
        else:
            await expect(cells.nth(4)).to_have_text("—")
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        await expect(cells.nth(5)).to_contain_text(f"{tokens:,}")
        await expect(cells.nth(8)).to_contain_text(str(row["status"]))
        await expect(cells.nth(9)).to_have_text(row["error_type"] or "")
        time_text = row["ts"].replace("T", " ")[:19]  # the browser runs in UTC
        await expect(cells.nth(0)).to_have_text(time_text)
    await screenshot(page, "ledger")


async def test_ledger_filters_and_pages_through_the_cursor(console_page: Page, console_gateway: ConsoleGateway) -> None:
    """Filters narrow the rows as the admin API does, and Next / Newer walk the pages by cursor."""
    page = console_page
    # Today's live traffic only (the month of history before it would be a hundred pages).
    await page.goto(f"/ui#/ledger?limit=10&since={console_gateway.since}")
    await expect(page.get_by_label("Rows per page")).to_have_value("10")
    await ledger_settled(page)
    everything = all_api_ids(console_gateway, since=console_gateway.since)
    assert len(everything) > 20, "the paging test needs three pages of rows"
    next_button = page.get_by_role("button", name=re.compile("^Next"))
    newer_button = page.get_by_role("button", name=re.compile("Newer"))
    await expect(newer_button).to_be_disabled()
    pages = [await ledger_ids(page)]
    while await next_button.is_enabled():
        await next_button.click()
        await ledger_settled(page)
        pages.append(await ledger_ids(page))
    assert [i for p in pages for i in p] == everything
    assert all(len(p) == 10 for p in pages[:-1]) and len(pages) == (len(everything) + 9) // 10
    await newer_button.click()
    await ledger_settled(page)
    assert await ledger_ids(page) == pages[-2]

    await page.get_by_label("Since").fill("")
    await page.get_by_label("User").fill("dave")
    await page.get_by_label("Status").fill("error")
    await page.get_by_role("button", name="Apply filters").click()
    await ledger_settled(page)
    refused = api_ids(console_gateway, user="dave", status="error", limit=10)
    assert refused and await ledger_ids(page) == refused  # the trial tier's 429s
    assert "user=dave" in page.url and "status=error" in page.url
    await expect(newer_button).to_be_disabled()

    await page.get_by_label("Status").fill("")
    await page.get_by_label("User").fill("bob")
    await page.get_by_label("Model").fill("house-model")
    await page.get_by_role("button", name="Apply filters").click()
    await ledger_settled(page)
    bobs = api_ids(console_gateway, user="bob", model="house-model", limit=10)
    assert bobs and await ledger_ids(page) == bobs

    await page.get_by_role("button", name="Clear").click()
    await ledger_settled(page)
    assert await ledger_ids(page) == api_ids(console_gateway, limit=10)


async def test_ledger_csv_export_downloads_the_rows_shown(console_page: Page, console_gateway: ConsoleGateway) -> None:
    """Export CSV downloads GET /admin/ledger?format=csv with the page's filters: the rows shown
    and those of every later page."""
    page = console_page
    await open_page(page, "ledger")
    await page.get_by_label("User").fill("alice")
    await page.get_by_role("button", name="Apply filters").click()
    await ledger_settled(page)
    expected = all_api_ids(console_gateway, user="alice")
    assert len(expected) > 50 and await ledger_ids(page) == expected[:50]
    export = page.get_by_role("link", name="Export CSV")
    assert "user=alice" in (await export.get_attribute("href") or "")
    async with page.expect_download() as download_info:
        await export.click()
    download = await download_info.value
    text = await asyncio.to_thread(Path(await download.path()).read_text, "utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["request_id"] for row in rows] == expected
    assert {row["user"] for row in rows} == {"alice"}


# ---- every width, the keyboard, accessibility ----


async def test_a_phone_width_has_no_sideways_scroll_and_a_working_menu(
    signed_in: SignIn, screenshot: Screenshot
) -> None:
    """At 390x844 no page scrolls sideways (wide tables scroll inside their box), and the nav
    folds into a Menu button that opens it and closes after a choice."""
    page = await signed_in(width=390, height=844)
    for name in PAGES:
        await open_page(page, name)
        await page.wait_for_timeout(300)  # charts redraw at the measured width
        widths = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], f"#/{name} is {widths[0]} px wide on a {widths[1]} px screen"
        if name in ("overview", "ledger"):
            await screenshot(page, f"phone-{name}")
    nav = page.get_by_role("navigation", name="Console")
    menu = page.get_by_role("button", name="Menu")
    await expect(nav).to_be_hidden()
    await expect(menu).to_have_attribute("aria-expanded", "false")
    await menu.click()
    await expect(nav).to_be_visible()
    await expect(menu).to_have_attribute("aria-expanded", "true")
    await nav.get_by_role("link", name="Deployments").click()
    await expect(page.locator('section[data-page="deployments"]')).to_be_visible()
    await expect(nav).to_be_hidden()
    await expect(page.locator("article[data-deployment]").first).to_be_in_viewport()


async def focused(page: Page) -> dict[str, Any]:
    """What has the keyboard focus: its tag, text, label and whether a focus outline is drawn."""
    info: dict[str, Any] = await page.evaluate(
        """() => {
          const el = document.activeElement;
          const style = getComputedStyle(el);
          return {
            tag: el.tagName.toLowerCase(),
            text: el.textContent.trim(),
            id: el.id,
            label: el.labels && el.labels.length ? el.labels[0].textContent : el.getAttribute("aria-label"),
            outline: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
          };
        }"""
    )
    return info


async def tab_to(page: Page, matches: Callable[[dict[str, Any]], bool], limit: int = 40) -> dict[str, Any]:
    """Presses Tab until the focused element matches (failing after ``limit`` presses)."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        info = await focused(page)
        if matches(info):
            return info
    raise AssertionError(f"Tab never reached it; last focused: {await focused(page)}")


async def test_the_keyboard_alone_reaches_the_nav_and_every_control(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """With the keyboard only: the skip link comes first and moves to the content, Tab reaches
    the nav and each page's controls with a visible focus outline, Enter opens and applies."""
    page = console_page
    await open_page(page, "overview")
    await page.reload()  # nothing focused yet: the keyboard starts at the top of the document
    await expect(page.locator("#who-role")).not_to_be_empty()
    await expect(page.locator("main")).not_to_have_attribute("aria-busy", "true")
    await page.keyboard.press("Tab")
    first = await focused(page)
    assert first["text"] == "Skip to content" and first["outline"]
    await page.keyboard.press("Enter")
    assert (await focused(page))["id"] == "main"
    assert "#/overview" in page.url  # the page stayed
    window = await tab_to(page, lambda f: f["tag"] == "select")
    assert window["label"] == "Window" and window["outline"]

    await page.locator("#main").focus()
    await page.keyboard.press("Shift+Tab")  # back up into the header
    link = await page.evaluate("document.activeElement.textContent")
    assert link == "Sign out"
    await page.locator(".skip-link").focus()  # from the top again
    nav = await tab_to(page, lambda f: f["tag"] == "a" and f["text"] == "Ledger")
    assert nav["outline"]
    await page.keyboard.press("Enter")
    await expect(page.locator('section[data-page="ledger"]')).to_be_visible()
    await ledger_settled(page)
    user = await tab_to(page, lambda f: f["label"] == "User")
    assert user["outline"]
    await page.keyboard.type("alice")
    await tab_to(page, lambda f: f["text"] == "Apply filters")
    await page.keyboard.press("Enter")
    await expect(page.locator("tbody tr[data-request-id]").first).to_be_visible()
    await ledger_settled(page)
    assert await ledger_ids(page) == api_ids(console_gateway, user="alice")
    export = await tab_to(page, lambda f: f["text"] == "Export CSV")
    assert export["outline"]

    await page.get_by_role("link", name="Deployments").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator('section[data-page="deployments"]')).to_be_visible()
    pause = await tab_to(page, lambda f: f["text"].startswith("Pause"))
    assert pause["outline"]
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="Resume live updates")).to_have_attribute("aria-pressed", "true")


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
@pytest.mark.parametrize("name", ["overview", "deployments", "ledger"])
async def test_pages_pass_a_hand_run_accessibility_check(signed_in: SignIn, name: str, dark: bool) -> None:
    """Every control has a label, every button and link a name, every chart a text alternative,
    text meets WCAG AA contrast (in both colour schemes) and no id repeats, on each of these
    pages and the shell."""
    page = await signed_in(dark=dark)
    await open_page(page, name)
    assert await accessibility_problems(page) == []


async def test_the_sign_in_page_passes_the_accessibility_check(
    browser: Browser, console_gateway: ConsoleGateway
) -> None:
    """The sign-in page's key field is labelled, its error region announced, its contrast AA."""
    context = await new_context(browser, console_gateway)
    try:
        page = await context.new_page()
        await page.goto("/ui/login")
        assert await accessibility_problems(page) == []
        await expect(page.get_by_label("Admin key")).to_have_attribute("type", "password")
        await expect(page.locator("#login-error")).to_have_attribute("aria-live", "assertive")
    finally:
        await context.close()


async def test_a_page_left_while_its_script_loads_does_not_take_the_address_back(signed_in: SignIn) -> None:
    """The address moves to another page while the first one's module is still loading: the first,
    once loaded, leaves the address alone, and the other page is what shows."""
    page = await signed_in()
    overview_loading = asyncio.Event()
    release = asyncio.Event()

    async def hold(route: Any) -> None:
        overview_loading.set()
        await release.wait()
        await route.continue_()

    # A second page of the same session, whose overview module arrives only when released.
    second = await page.context.new_page()
    await second.route("**/ui/static/pages/overview.js", hold)
    opening = asyncio.ensure_future(second.goto("/ui"))
    await asyncio.wait_for(overview_loading.wait(), 10)
    # The operator follows a link to the keys page; the browser's hashchange for it comes after the
    # overview has run (as when both are queued in the same turn): pushState moves the address
    # without the event, which is then sent by hand once the overview has drawn.
    await second.evaluate("history.pushState(null, '', '#/keys')")
    release.set()
    await opening
    await expect(second.locator(".overview-body, .page-overview .status-line").first).to_be_attached()
    await second.evaluate("window.dispatchEvent(new HashChangeEvent('hashchange'))")
    await expect(second.locator('section[data-page="keys"]')).to_be_visible()
    assert second.url.endswith("#/keys")
