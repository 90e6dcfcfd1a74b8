"""The console in a real browser: Debian's Chromium (``/usr/bin/chromium``, nothing downloaded),
driven by Playwright's async API on the tests' session loop, against a real gateway.

Fixtures for every console test module:

- ``console_gateway``: one gateway for the session (a realistic configuration: three models, two
  mock providers, tiers with a response cache, a team with a budget), with a month of history in
  its ledger (written as the ledger writer writes rows) and then traffic sent through it by the
  OpenAI SDK: served, failed over, cached, streamed and refused requests, so every page has data.
  Its keys are in ``console_gateway.keys`` (name -> the admin API's answer, with ``key``); the
  live traffic began at ``console_gateway.started`` (``since``: as a ledger filter).
- ``browser``: Chromium, launched once; skips with a reason when /usr/bin/chromium is missing.
- ``signed_in(key=MASTER_KEY, width=1280, height=800, dark=False)``: a new browser context signed in with
  ``key`` (through POST /ui/login, as the sign-in page does) and a page on /ui; closed after the test.
- ``console_page``: ``signed_in()`` with the master key at 1280x800.
- ``accessibility_problems(page)``: labels, names, contrast and ids checked by hand (a list of
  problems; empty when none).
- ``screenshot(page, name)``: saves ``<name>.png`` in ``$QUOTAGATE_SCREENSHOTS`` if set (a
  directory), else in a temporary one; the README's screenshots are these.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import APIStatusError, AsyncOpenAI
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from quotagate.accounting import SqlWriter, UsageRow
from quotagate.config import parse_config
from quotagate.keys import KeyStore
from quotagate.mock import MockOptions, MockUpstream
from quotagate.server import Gateway

from ..conftest import MASTER_KEY, ServerThread

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FOUND = CHROMIUM.exists()
# No sandbox (containers have no user namespaces), and nothing the browser would fetch by itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UPSTREAM_KEY = "sk-upstream-test-key-123456"
# A prompt the flaky provider answers 500 (MockOptions.poison): errors in the ledger on demand.
POISON = "please-fail-this-request"


@dataclass
class ConsoleGateway:
    url: str
    gateway: Gateway
    database: str
    # When the live traffic began, to the minute: the history written before ends earlier.
    started: datetime
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: int = 0  # ledger rows: requests sent through the proxy, whatever their answer, and history

    @property
    def since(self) -> str:
        """``started`` as the ledger page's Since field gives it (ISO, UTC, to the minute)."""
        return self.started.strftime("%Y-%m-%dT%H:%M:00.000Z")

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)

    def get(self, path: str, **params: Any) -> Any:
        """The admin API's JSON answer to GET path (with the master key)."""
        with self.admin() as client:
            response = client.get(path, params={k: v for k, v in params.items() if v is not None})
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_ledger(self, timeout: float = 10.0) -> None:
        """Until every request sent is in the ledger (GET /admin/usage writes pending rows first)."""
        deadline = time.monotonic() + timeout
        while True:
            requests = self.get("/admin/usage", by="key")["totals"]["requests"]
            if requests >= self.sent:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the ledger has {requests} rows of the {self.sent} requests sent")
            time.sleep(0.1)


def console_config(database: str, steady_url: str, flaky_url: str) -> dict[str, Any]:
    """Three models on two providers (one of them failing on demand, its breaker kept open once
    tripped), tiers (one with the response cache), a team with a budget."""
    steady = {"base_url": steady_url + "/v1", "api_key": "env:TEST_UPSTREAM_KEY"}
    flaky = {"base_url": flaky_url + "/v1", "api_key": "env:TEST_UPSTREAM_KEY"}
    return {
        "database": database,
        "master_key": "env:TEST_MASTER_KEY",
        "ledger": {"flush_seconds": 0.1},
        "tiers": {
            "free": {"rpm": 60, "tpd": 200000, "usd_per_day": 1.0},
            "pro": {"rpm": 600, "cache": {"mode": "exact", "ttl": 3600, "namespace": "user"}},
            "trial": {"rpm": 3},
        },
        "teams": {"research": {"rpm": 300, "usd_per_day": 5.0, "usd_per_month": 50.0}},
        "models": [
            {
                "name": "gpt-4o-mini",
                "deployments": [
                    {"provider": "openai", "rpm": 600, "tpm": 400000, "burst": 100, **steady},
                    {"provider": "openai", "priority": 1, "rpm": 300, "burst": 50, **flaky},
                ],
            },
            {
                "name": "house-model",
                "deployments": [
                    {"provider": "openai-compatible", "model": "gpt-4.1", "rpm": 300, "burst": 50, **flaky},
                    {"provider": "openai-compatible", "model": "gpt-4.1", "priority": 1, **steady},
                ],
            },
            {"name": "text-embedding-3-small", "deployments": [{"provider": "openai", **steady}]},
        ],
        # A tripped breaker stays open for the whole session: the pages show the same state as
        # the admin API whenever each is asked.
        "router": {"max_attempts": 2, "breaker": {"failures": 3, "window_seconds": 600, "cooldown_seconds": 3600}},
    }


async def send_traffic(gw: ConsoleGateway) -> None:
    """Requests of every kind the pages show: served, streamed, cached, embedded, failed, refused."""

    def client(name: str) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.keys[name]["key"], max_retries=0)

    async def chat(name: str, model: str, text: str, **extra: Any) -> None:
        gw.sent += 1
        try:
            answer = await client(name).chat.completions.create(
                model=model, messages=[{"role": "user", "content": text}], max_tokens=40, **extra
            )
            if extra.get("stream"):
                async for _ in answer:
                    pass
        except APIStatusError:
            pass  # refused or failed: a ledger row all the same

    for i in range(6):
        await chat("alice", "gpt-4o-mini", f"Summarise report {i}")
    for i in range(4):
        await chat("bob", "house-model", f"Translate sentence {i}")
    await chat(
        "bob", "house-model", "Translate the first sentence", stream=True, stream_options={"include_usage": True}
    )
    for _ in range(3):
        await chat("carol", "gpt-4o-mini", "What is our refund policy?")  # the pro tier's cache answers 2 of them
    for i in range(3):
        # The flaky provider answers 500, the steady one serves instead; the third trips the breaker.
        await chat("bob", "house-model", f"Translate {POISON} {i}")
    await chat("alice", "gpt-5-nano", "No such model")  # 404
    for i in range(5):
        await chat("dave", "gpt-4o-mini", f"Hello {i}")  # the trial tier's rpm 3 refuses 2
    gw.sent += 1
    await client("alice").embeddings.create(model="text-embedding-3-small", input="a sentence to embed")


# The shape of the history: a working day's traffic, and the models' list prices (USD per million
# tokens, input and output) as the gateway's shipped pricing has them.
_PRICES = {"gpt-4o-mini": (0.15, 0.60), "house-model": (2.0, 8.0), "text-embedding-3-small": (0.02, 0.0)}
_PEOPLE = [("alice", 5), ("bob", 3), ("carol", 2)]
_MODELS = [("gpt-4o-mini", 6), ("house-model", 3), ("text-embedding-3-small", 1)]


def history_rows(gw: ConsoleGateway, end: float) -> list[UsageRow]:
    """A month of earlier requests by alice, bob and carol (dave is new today), busier in working
    hours and in the last day, with the odd refusal, upstream failure and cache hit: rows as the
    gateway writes them, so that the charts have a shape and the ledger pages to walk through."""
    rng = random.Random(23)
    labels: dict[str, list[str]] = {}
    for d in gw.get("/admin/deployments")["data"]:
        labels.setdefault(d["model"], []).append(d["label"])
    rows: list[UsageRow] = []
    t = end - 30 * 86400
    while True:
        hour = datetime.fromtimestamp(t, UTC).hour
        per_hour = (24.0 if t > end - 86400 else 3.0) * (1.0 if 8 <= hour < 19 else 0.25)
        t += rng.expovariate(per_hour / 3600)
        if t >= end:
            return rows
        user = rng.choices([p for p, _ in _PEOPLE], [w for _, w in _PEOPLE])[0]
        key = gw.keys[user]
        model = rng.choices([m for m, _ in _MODELS], [w for _, w in _MODELS])[0]
        chat = model != "text-embedding-3-small"
        prompt = rng.randint(150, 2500) if chat else rng.randint(5, 400)
        completion = rng.randint(40, 900) if chat else 0
        cost = (prompt * _PRICES[model][0] + completion * _PRICES[model][1]) / 1e6
        deployment: str | None = labels[model][0 if len(labels[model]) == 1 or rng.random() < 0.8 else 1]
        latency = rng.lognormvariate(6.3 if chat else 4.2, 0.45)
        status, error, served, hit, saved = 200, None, model, False, 0.0
        roll = rng.random()
        if roll < 0.03:
            status, error, served, deployment = 429, "rate_limit_exceeded", None, None
            prompt = completion = 0
            cost, latency = 0.0, rng.uniform(0.3, 2.0)
        elif roll < 0.04:
            status, error, completion, cost = 502, "upstream_error", 0, 0.0
        elif key["tier"] == "pro" and chat and roll < 0.16:
            hit, saved, cost, deployment, latency = True, cost, 0.0, None, rng.uniform(2.0, 6.0)
        rows.append(
            UsageRow(
                request_id=f"req_hist{len(rows):08x}",
                ts=t,
                day=datetime.fromtimestamp(t, UTC).date().isoformat(),
                key_id=key["id"],
                user_id=user,
                tier=key["tier"],
                model_requested=model,
                model_served=served,
                deployment=deployment,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=0,
                cost_usd=round(cost, 10),
                latency_ms=latency,
                upstream_ms=latency * 0.97 if deployment else None,
                overhead_ms=min(latency, 1.5),
                status=status,
                error_type=error,
                stream=chat and rng.random() < 0.3,
                cache_hit=hit,
                cache_saved_usd=round(saved, 10),
                team=key["team"],
            )
        )


async def write_history(gw: ConsoleGateway) -> None:
    """Writes history_rows() ending five minutes before the live traffic, as the ledger writer does."""
    rows = history_rows(gw, gw.started.timestamp() - 300)
    store = KeyStore.from_url(gw.database)
    try:
        await SqlWriter(store.database).write(rows)
    finally:
        await store.close()
    gw.sent += len(rows)


@pytest.fixture(scope="session")
def console_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        patch.setenv("TEST_MASTER_KEY", MASTER_KEY)
        yield


@pytest.fixture(scope="session")
async def console_gateway(console_env: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConsoleGateway]:
    steady = ServerThread(MockUpstream(MockOptions(api_key=UPSTREAM_KEY, latency_ms=15, seed=1))).start()
    flaky = ServerThread(MockUpstream(MockOptions(api_key=UPSTREAM_KEY, latency_ms=40, seed=2, poison=POISON))).start()
    database = f"sqlite:///{tmp_path_factory.mktemp('console') / 'quotagate.db'}"
    gateway = Gateway(parse_config(console_config(database, steady.url, flaky.url)))
    server = ServerThread(gateway).start()
    gw = ConsoleGateway(server.url, gateway, database, datetime.now(UTC).replace(second=0, microsecond=0))
    try:
        with gw.admin() as admin:
            for name, tier, team in (
                ("alice", "free", "research"),
                ("bob", "pro", "research"),
                ("carol", "pro", None),
                ("dave", "trial", None),
            ):
                created = admin.post(
                    "/admin/keys", json={"user": name, "tier": tier, "team": team, "name": f"{name}'s laptop"}
                )
                assert created.status_code == 201, created.text
                gw.keys[name] = created.json()
        await write_history(gw)
        await send_traffic(gw)
        await asyncio.to_thread(gw.wait_for_ledger)
        yield gw
    finally:
        server.stop()
        steady.stop()
        flaky.stop()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM_FOUND:
        pytest.skip(f"the console tests drive Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


SignIn = Callable[..., Awaitable[Page]]


async def new_context(
    browser: Browser, gw: ConsoleGateway, width: int = 1280, height: int = 800, dark: bool = False
) -> BrowserContext:
    """A browser context on the gateway, signed in to nothing: English, UTC, downloads kept, the
    light colour scheme unless ``dark``."""
    context = await browser.new_context(
        base_url=gw.url,
        viewport={"width": width, "height": height},
        color_scheme="dark" if dark else "light",
        locale="en-US",
        timezone_id="UTC",
        accept_downloads=True,
    )
    context.set_default_timeout(10_000)
    return context


# What a page should never have: a control without a label, an unnamed button or link, a chart
# (SVG) without a name, an image without alt, text below WCAG AA contrast, a duplicated id.
_PROBLEMS_JS = r"""() => {
  const problems = [];
  const text = (el) => (el ? el.textContent : "").trim();
  const nameOf = (el) => {
    const labelledby = (el.getAttribute("aria-labelledby") || "").split(" ").filter(Boolean);
    return (
      (el.getAttribute("aria-label") || "").trim() ||
      labelledby.map((id) => text(document.getElementById(id))).join(" ").trim() ||
      [...(el.labels || [])].map(text).join(" ").trim() ||
      (el.getAttribute("title") || "").trim()
    );
  };
  const short = (el) => el.outerHTML.slice(0, 140);
  const hidden = (el) => el.closest("[aria-hidden=true], .visually-hidden, [hidden]") !== null;
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type !== "hidden" && !nameOf(el)) problems.push("control without a label: " + short(el));
  }
  for (const el of document.querySelectorAll("button, a[href]")) {
    if (!text(el) && !nameOf(el)) problems.push("button or link without a name: " + short(el));
  }
  for (const el of document.querySelectorAll("svg")) {
    if (hidden(el)) continue;
    if (el.getAttribute("role") !== "img" || !nameOf(el)) problems.push("svg without role=img and a name: " + short(el));
  }
  for (const el of document.querySelectorAll("img:not([alt])")) problems.push("img without alt: " + short(el));
  const ids = new Set();
  for (const el of document.querySelectorAll("[id]")) {
    if (ids.has(el.id)) problems.push("duplicate id " + el.id);
    ids.add(el.id);
  }
  const rgb = (value) => (value.match(/[\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const c = [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const background = (el) => {
    for (let node = el; node; node = node.parentElement) {
      const colour = rgb(getComputedStyle(node).backgroundColor);
      if (colour.length === 3 || (colour.length === 4 && colour[3] === 1)) return colour.slice(0, 3);
    }
    return rgb(getComputedStyle(document.documentElement).backgroundColor).slice(0, 3);
  };
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest("svg") || hidden(el) || el.closest("option, :disabled")) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const [a, b] = [luminance(rgb(style.color)), luminance(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < (large ? 3 : 4.5)) problems.push(`contrast ${ratio.toFixed(2)}: ` + short(el));
  }
  return problems;
}"""


async def accessibility_problems(page: Page) -> list[str]:
    """What a hand-run, axe-like check finds wrong on the page as it is now (empty: nothing)."""
    problems: list[str] = await page.evaluate(_PROBLEMS_JS)
    return problems


@pytest.fixture
async def signed_in(browser: Browser, console_gateway: ConsoleGateway) -> AsyncIterator[SignIn]:
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    async def sign_in(key: str = MASTER_KEY, width: int = 1280, height: int = 800, dark: bool = False) -> Page:
        context = await new_context(browser, console_gateway, width, height, dark)
        contexts.append(context)
        answer = await context.request.post("/ui/login", data={"key": key})
        assert answer.status == 200, await answer.text()
        page = await context.new_page()
        # Any uncaught error in the console's scripts fails the test that caused it.
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        await page.goto("/ui")
        await expect(page.locator("#who-role")).not_to_have_text("")
        return page

    yield sign_in
    for context in contexts:
        await context.close()
    assert not errors, f"errors in the console's scripts: {errors}"


@pytest.fixture
async def console_page(signed_in: SignIn) -> Page:
    return await signed_in()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("QUOTAGATE_SCREENSHOTS")
    if chosen:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def screenshot(screenshot_dir: Path) -> Callable[[Page, str], Awaitable[Path]]:
    async def save(page: Page, name: str) -> Path:
        path = screenshot_dir / f"{name}.png"
        await page.screenshot(path=str(path), full_page=False)
        return path

    return save
