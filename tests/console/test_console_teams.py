"""The console's teams and users page in Chromium against a real gateway: each team's live limits
next to GET /admin/teams/{name}/quota, its keys and its spend this month; the users next to GET
/admin/users and their own limits; and a team budget that refuses a request, shown used up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import APIStatusError, AsyncOpenAI
from playwright.async_api import Browser, Locator, Page, expect

from quotagate.config import parse_config
from quotagate.mock import MockOptions, MockUpstream
from quotagate.server import Gateway

from ..conftest import MASTER_KEY, ServerThread
from .conftest import UPSTREAM_KEY, ConsoleGateway, SignIn, accessibility_problems

Screenshot = Callable[[Page, str], Awaitable[Path]]
# A day's budget that one request of the tests spends: it reserves its prompt and one output
# token (limiter.expected_output_tokens), about $0.000002, and costs, with the mock's 16
# completion tokens, about $0.000011.
TINY_BUDGET_USD = 0.000005


async def open_teams(page: Page) -> None:
    """Goes to the teams page and waits until every team's live limits and the users are drawn."""
    await page.goto("/ui#/teams")
    await expect(page.locator('section[data-page="teams"]')).to_be_visible()
    await expect(page.locator(".users-section")).to_be_visible()
    await expect(page.locator(".team .limits-body .loading")).to_have_count(0)


def team_panel(page: Page, team: str) -> Locator:
    return page.locator(f'section.team[data-team="{team}"]')


async def assert_matches_quota(page: Page, panel: Locator, quota: dict[str, Any]) -> None:
    """The panel's bars are the quota answer's entries: same names, scope and limit, and the same
    use for quotas and budgets (rates refill between two reads, so their use is not compared)."""
    items = panel.locator("li.limit")
    await expect(items).to_have_count(len(quota["limits"]))
    for entry in quota["limits"]:
        item = panel.locator("li.limit").filter(has=page.get_by_text(entry["name"], exact=True))
        assert await item.get_attribute("data-scope") == entry["scope"]
        assert await item.get_attribute("data-max") == str(entry["limit"])
        if entry["algorithm"] == "calendar":
            assert await item.get_attribute("data-used") == str(entry["used"]), entry["name"]


async def test_the_teams_page_matches_the_team_quota_keys_and_spend(
    console_page: Page, console_gateway: ConsoleGateway, screenshot: Screenshot
) -> None:
    """Each configured team shows GET /admin/teams/{name}/quota as bars, its number of keys (GET
    /admin/keys), and its spend and requests since the month began (GET /admin/usage?by=team)."""
    page = console_page
    await open_teams(page)
    teams = console_gateway.get("/admin/teams")["data"]
    keys = console_gateway.get("/admin/keys")["data"]
    since = await page.locator(".page-body").get_attribute("data-since")
    usage = {row["team"]: row for row in console_gateway.get("/admin/usage", by="team", since=since)["data"]}
    await expect(page.locator("section.team")).to_have_count(len(teams))
    for name in teams:
        panel = team_panel(page, name)
        await assert_matches_quota(page, panel, console_gateway.get(f"/admin/teams/{name}/quota"))
        await expect(panel.locator('[data-figure="keys"]')).to_have_attribute(
            "data-value", str(sum(k["team"] == name for k in keys))
        )
        spent = usage.get(name, {"cost_usd": 0, "requests": 0})
        assert float(
            await panel.locator('[data-figure="spend"]').get_attribute("data-value") or "nan"
        ) == pytest.approx(spent["cost_usd"])
        await expect(panel.locator('[data-figure="requests"]')).to_have_attribute("data-value", str(spent["requests"]))
    await expect(team_panel(page, "research").locator(".team-config")).to_contain_text("usd_per_day $5.00")
    await screenshot(page, "teams")


async def test_the_users_section_matches_the_users_api_and_opens_to_a_users_keys(
    console_page: Page, console_gateway: ConsoleGateway
) -> None:
    """Every user of GET /admin/users has a row with its keys, teams and spend this month; opening
    one shows its limits of scope user and its keys."""
    page = console_page
    await open_teams(page)
    users = console_gateway.get("/admin/users")["data"]
    since = await page.locator(".page-body").get_attribute("data-since")
    spend = {
        row["user"]: row["cost_usd"] for row in console_gateway.get("/admin/usage", by="user", since=since)["data"]
    }
    await expect(page.locator("tr[data-user]")).to_have_count(len(users))
    for entry in users:
        row = page.locator(f'tr[data-user="{entry["user"]}"]')
        await expect(row).to_have_attribute("data-keys", str(entry["keys"]))
        await expect(row.locator("td").nth(2)).to_have_text(", ".join(entry["teams"]) or "—")
        assert float(await row.get_attribute("data-spend") or "nan") == pytest.approx(spend.get(entry["user"], 0))
    toggle = page.locator('tr[data-user="alice"] .user-toggle')
    await expect(toggle).to_have_accessible_name("alice: show limits and keys")
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    details = page.locator('tr[data-details-of="alice"]')
    alice_keys = [k for k in console_gateway.get("/admin/keys")["data"] if k["user"] == "alice"]
    await expect(details.locator("tbody tr")).to_have_count(len(alice_keys))
    quota = console_gateway.get("/admin/users/alice/quota")
    if not quota["limits"]:
        await expect(details.locator(".limit-empty")).to_be_visible()
    await expect(toggle).to_have_accessible_name("alice: hide limits and keys")
    await toggle.click()
    await expect(details).to_be_hidden()


@dataclass
class BudgetGateway:
    url: str

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)

    def get(self, path: str) -> Any:
        with self.admin() as client:
            response = client.get(path)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
async def budget_gateway(console_env: None, tmp_path: Path) -> AsyncIterator[BudgetGateway]:
    """A gateway of its own with a team whose day budget one request spends, and a user limit."""
    mock = ServerThread(MockUpstream(MockOptions(api_key=UPSTREAM_KEY))).start()
    config = parse_config(
        {
            "database": f"sqlite:///{tmp_path / 'quotagate.db'}",
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {"rpm": 60}},
            "teams": {"tiny": {"usd_per_day": TINY_BUDGET_USD}, "roomy": {"usd_per_month": 100}},
            "limits": [{"scope": "user", "unit": "requests", "amount": 1000, "per": "day"}],
            "limiter": {"expected_output_tokens": 1},
            "models": [
                {
                    "name": "gpt-4o-mini",
                    "deployments": [{"base_url": mock.url + "/v1", "api_key": "env:TEST_UPSTREAM_KEY"}],
                }
            ],
        }
    )
    server = ServerThread(Gateway(config)).start()
    try:
        yield BudgetGateway(server.url)
    finally:
        server.stop()
        mock.stop()


async def test_a_team_budget_refuses_the_next_request_and_shows_used_up(
    browser: Browser, budget_gateway: BudgetGateway, screenshot: Screenshot
) -> None:
    """A team's day budget spent by one request refuses the next (429 insufficient_quota, naming
    the team); the teams page draws that budget full, nothing remaining, and the user's limit."""
    gw = budget_gateway
    with gw.admin() as admin:
        made = admin.post("/admin/keys", json={"user": "uma", "tier": "free", "team": "tiny"}).json()
    client = AsyncOpenAI(base_url=gw.url + "/v1", api_key=made["key"], max_retries=0)
    messages: Any = [{"role": "user", "content": "Spend the team's budget"}]
    await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    with pytest.raises(APIStatusError) as refused:
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    await client.close()
    assert refused.value.status_code == 429
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "insufficient_quota" and "team tiny" in error["message"]

    context = await browser.new_context(
        base_url=gw.url, viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC"
    )
    context.set_default_timeout(10_000)
    try:
        assert (await context.request.post("/ui/login", data={"key": MASTER_KEY})).status == 200
        page = await context.new_page()
        await open_teams(page)
        quota = gw.get("/admin/teams/tiny/quota")
        panel = team_panel(page, "tiny")
        await assert_matches_quota(page, panel, quota)
        budget = panel.locator("li.limit").filter(has_text="USD per day")
        await expect(budget.locator(".bar")).to_have_class("bar bar-full")
        await expect(budget).to_have_attribute("data-remaining", "0")
        await expect(budget.locator(".limit-remaining")).to_have_text("$0.00 remaining")
        await expect(panel.locator('[data-figure="requests"]')).to_have_attribute("data-value", "2")
        await expect(team_panel(page, "roomy").locator('[data-figure="keys"]')).to_have_attribute("data-value", "0")

        await page.get_by_role("button", name="uma: show limits and keys").click()
        details = page.locator('tr[data-details-of="uma"]')
        user_quota = gw.get("/admin/users/uma/quota")
        assert [e["scope"] for e in user_quota["limits"]] == ["user"]
        await expect(details.locator("li.limit")).to_have_count(1)
        await expect(details.locator("li.limit")).to_have_attribute("data-used", str(user_quota["limits"][0]["used"]))
        await expect(details.locator(f'tr a[href="#/keys?key={made["id"]}"]')).to_be_visible()
        await screenshot(page, "team-budget-used-up")
    finally:
        await context.close()


async def test_the_teams_page_fits_a_phone_and_passes_the_accessibility_checks(signed_in: SignIn) -> None:
    """At 390 px the page does not scroll sideways, and with a user opened it passes the checks."""
    for width, height in ((390, 844), (1280, 800)):
        page = await signed_in(width=width, height=height)
        await open_teams(page)
        await page.get_by_role("button", name="alice: show limits and keys").click()
        await expect(page.locator('tr[data-details-of="alice"] table')).to_be_visible()
        widths = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], f"#/teams is {widths[0]} px wide on a {widths[1]} px screen"
        assert await accessibility_problems(page) == [], f"#/teams at {width} px"
