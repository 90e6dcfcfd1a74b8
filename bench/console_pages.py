"""The console's pages in a browser, end to end, over 1,000,000 ledger rows, in SQLite and in
PostgreSQL: from ``page.goto(url)`` to the moment the page's data is in the DOM.

    .venv/bin/python bench/console_pages.py [--rows 1000000]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres] [--only sqlite|postgresql]
        [--keep DIR]

The data: console_ledger.py's rows (``generate``: 30 days ending now, 50 users, six teams, three
tiers, eight models), written as the ledger writes them (SqlWriter, batches of 500) into a new
SQLite file and a PostgreSQL database of the script's own (``qg_bench_pages``, dropped at the
end; ANALYZEd after the fill, as console_ledger.py does). The rows' keys are in qg_api_keys
(made by KeyStore.create, then given the rows' key ids), each with its audit entry
(``key.create`` by "cli"), and two admin keys; the configuration has the rows' tiers, teams (with
limits, so the Teams page has live limits to show) and models (their deployments point at a
closed port: nothing is proxied).

Each database is then served by ``quotagate serve -c CONFIG`` (a subprocess, a free port, the
master key from the environment) and, once /ready answers, headless Chromium (Debian's
/usr/bin/chromium through Playwright, as tests/console/conftest.py launches it) signs in once
(POST /ui/login), opens the sign-in page once, untimed (the browser's own start is no page's),
then opens each page from about:blank, so that the whole console loads each time (index.html,
the modules, GET /ui/session, the page's module, its API calls): Overview (last hour, 24 hours,
30 days, by model), Ledger (its first page, then "Next (older)" clicked; the same filtered by the
user with the most rows and by the one with the fewest), Teams and users, Keys, Deployments,
Audit.

A page counts as shown when what only its loaded data makes is in the DOM (``READY`` below):
the overview's totals and its "Updated" line (set after the charts and the top table are
drawn), the ledger's rows and its "Rows 1-50" line ("Rows 51-100" after a click), the users'
table of Teams (appended after the teams' panels and their live limits), the keys' rows, the
deployments' cards and their "Updated" line, the audit log's rows and then the admin keys'
section.

Each page: its first load (the gateway just started; the rows were just written, so they are in
the OS page cache) and the best of the 3 loads after it, in ms, from ``page.goto`` (or the
click) to the data found by a check every 5 ms. For the best load also: "in page", the same as
the page saw it (from the navigation's start, or just before the click, to the DOM mutation that
completed the data: a MutationObserver installed before the page's scripts run); when its first
API call (/admin/...) began, how many it made and the longest one (the resource timings): the
time before the first call is the console's own loading.

``--keep DIR`` keeps the SQLite file (DIR/console-pages-ROWS.db) and the PostgreSQL database, and
reuses them on a later run with the same ``--rows`` (their rows then end at the first run's time:
the hour and day windows hold fewer rows). For debugging only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import sqlalchemy as sa
import yaml
from _common import free_port
from console_ledger import MODELS, TEAMS, fill, generate, make_keys, open_store
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from quotagate.accounting import UsageRow
from quotagate.keys import AdminKeyStore, AuditLog, KeyStore, Role

CHROMIUM = "/usr/bin/chromium"
# As tests/console/conftest.py launches it: no sandbox (containers have no user namespaces), and
# nothing the browser would fetch by itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PG_DATABASE = "qg_bench_pages"
REPEATS = 3
POLL_MS = 5.0

# When each page's data is shown: JavaScript expressions over the DOM, true only once the page's
# API answers are drawn. The overview sets "Updated ..." right after drawing the totals, charts and
# top table; the ledger "Rows a-b" (or "No rows.") after its table; Teams appends the users'
# table after the teams' panels and their live limits; the audit page appends the admin keys'
# section after the log.
READY = {
    "overview": """(() => {
        const s = document.querySelector("section.page-overview .status-line");
        return !!s && s.textContent.startsWith("Updated")
            && !!document.querySelector("section.page-overview .overview-body [data-card=requests]");
    })()""",
    "ledger": """(() => {
        const s = document.querySelector("section.page-ledger .status-line");
        return !!s && (s.textContent.startsWith("Rows 1\u2013") || s.textContent === "No rows.")
            && !!document.querySelector("section.page-ledger .ledger-results tbody tr");
    })()""",
    "ledger-next": """(() => {
        const s = document.querySelector("section.page-ledger .status-line");
        return !!s && s.textContent.startsWith("Rows 51\u2013");
    })()""",
    "teams": """!!document.querySelector("section.page-teams .users-section tbody tr[data-user]")""",
    "keys": """!!document.querySelector("section.page-keys .keys-table tbody tr[data-key]")""",
    "deployments": """(() => {
        const s = document.querySelector("#deployments-status");
        return !!s && s.textContent.startsWith("Updated")
            && !!document.querySelector("section.page-deployments .dep-grid");
    })()""",
    "audit": """!!document.querySelector("section.page-audit .audit-section tbody tr[data-id]")
        && !!document.querySelector("section.page-audit .admin-keys-section")""",
}

# Installed in every document before its scripts run: a MutationObserver that notes
# (window.__qgReady, performance.now()) the first mutation after which the current page's READY
# check holds. window.__qgArm(name) re-arms it for an in-page change (a click), from now.
OBSERVER = """(() => {
  const checks = {%s};
  let name = null, since = 0, observer = null;
  const watch = () => {
    if (observer) observer.disconnect();
    observer = new MutationObserver(() => {
      if (name && checks[name]()) {
        window.__qgReady = performance.now() - since;
        observer.disconnect();
      }
    });
    observer.observe(document, {childList: true, subtree: true, characterData: true, attributes: true});
  };
  window.__qgArm = (chosen) => {
    window.__qgReady = undefined;
    performance.clearResourceTimings();
    name = chosen;
    since = window.__qgSince = performance.now();
    watch();
  };
  const match = location.hash.match(/^#\\/([a-z]+)/);
  if (match && checks[match[1]]) {
    window.__qgReady = undefined;
    name = match[1];
    watch();
  }
})();"""


def observer_script() -> str:
    body = ",\n".join(f'"{name}": () => {check}' for name, check in READY.items())
    return OBSERVER % body


# -- the data --------------------------------------------------------------------------------


def config(database: str, closed_port: int) -> dict[str, Any]:
    """The rows' tiers, teams (with limits) and models (their deployments on a closed port)."""
    base_url = f"http://127.0.0.1:{closed_port}/v1"
    return {
        "database": database,
        "master_key": "env:QG_BENCH_MASTER_KEY",
        "tiers": {
            "free": {"rpm": 60, "tpd": 200_000, "usd_per_day": 1.0},
            "pro": {"rpm": 600, "tpm": 400_000},
            "enterprise": {"rpm": 3000},
        },
        "teams": {
            team: {"rpm": 300 * (n + 1), "usd_per_day": 50.0, "usd_per_month": 1000.0} for n, team in enumerate(TEAMS)
        },
        "models": [
            {
                "name": name,
                "deployments": [
                    {"provider": "openai-compatible", "base_url": base_url, "model": name, "priority": n}
                    for n in range(len(deployments))
                ],
            }
            for name, _, deployments, _ in MODELS
        ],
    }


def _rename_key(old: str, new: str) -> Callable[[sa.Connection], None]:
    def rename(conn: sa.Connection) -> None:
        conn.execute(sa.text("UPDATE qg_api_keys SET id = :new WHERE id = :old"), {"new": new, "old": old})

    return rename


def _count(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("SELECT count(*) FROM qg_usage").scalar_one())


async def add_keys(url: str) -> int:
    """The rows' keys (KeyStore.create, then the rows' key id), each with its audit entry, and
    two admin keys: how many gateway keys."""
    keys, _ = make_keys(random.Random(23))  # as generate(seed=23) makes them
    store = KeyStore.from_url(url)
    audit = AuditLog(store.database)
    try:
        for number, key in enumerate(keys):
            name = f"{key.user}'s key {number}"
            record, _ = await store.create(user=key.user, tier=key.tier, team=key.team, name=name)
            await store.database.run(_rename_key(record.id, key.key_id))
            details = {"user": key.user, "tier": key.tier, "team": key.team, "name": name}
            await audit.record("cli", "key.create", key.key_id, details, actor_name="bench")
        admins = AdminKeyStore(store.database)
        admin_keys: tuple[tuple[str, Role, str | None], ...] = (
            ("ops", "admin", None),
            ("research lead", "team_admin", "research"),
        )
        for name, role, team in admin_keys:
            made, _ = await admins.create(name=name, role=role, team=team)
            await audit.record("cli", "admin_key.create", made.id, {"name": name, "role": role, "team": team})
    finally:
        await store.close()
    return len(keys)


async def count_rows(url: str) -> int | None:
    """qg_usage's rows, or None if there is no such table (a new database)."""
    store = KeyStore.from_url(url)
    try:
        return await store.database.run(_count)
    except Exception:
        return None
    finally:
        await store.close()


async def build(url: str, rows: list[UsageRow], postgres: bool) -> str:
    """Fills ``url`` (an empty database): the rows, then the keys; a line saying what it took."""
    store = await open_store(url)
    try:
        seconds, _ = await fill(store.database, rows)
        if postgres:
            await store.database.run(lambda c: c.exec_driver_sql("ANALYZE"), deadline=None)
    finally:
        await store.close()
    keys = await add_keys(url)
    return f"{len(rows):,} rows written in {seconds:.0f} s, {keys} keys"


async def _admin(admin_url: str, sql: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


# -- the gateway -----------------------------------------------------------------------------


@contextlib.contextmanager
def gateway(database: str, work: Path, master_key: str) -> Iterator[str]:
    """``quotagate serve`` on ``database``; its URL once /ready answers 200."""
    closed = free_port()  # nothing listens there
    path = work / "quotagate.yaml"
    path.write_text(yaml.safe_dump(config(database, closed), sort_keys=False))
    port = free_port()
    log = (work / "gateway.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "quotagate", "serve", "-c", str(path), "--port", str(port)],
        env={**os.environ, "QG_BENCH_MASTER_KEY": master_key},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited ({process.returncode}); see {work / 'gateway.log'}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 120:
                raise RuntimeError(f"{url}/ready did not answer 200 within 120 s")
            time.sleep(0.05)
        print(f"  gateway ready in {time.monotonic() - started:.1f} s at {url}", flush=True)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- the pages -------------------------------------------------------------------------------


@dataclass
class Run:
    """One load: ms from the goto (or click) to the data shown, as this script saw it; and as the
    page saw it (from the navigation's start, or the click); when its first API call (/admin/...)
    began, how many it made and the longest's duration (ms), from the resource timings."""

    wall_ms: float
    in_page_ms: float
    api_start_ms: float
    api_calls: int
    api_longest_ms: float


@dataclass
class Timing:
    name: str
    first: Run
    best: Run  # the fastest of the repeats
    note: str = ""


# The observer's figure, and the API calls (/admin/...) among the resource timings, for Run.
_READINGS = """() => {
  const api = performance.getEntriesByType("resource").filter((e) => e.name.includes("/admin/"));
  return [
    window.__qgReady,
    api.length ? Math.min(...api.map((e) => e.startTime)) - (window.__qgSince || 0) : NaN,
    api.length,
    api.length ? Math.max(...api.map((e) => e.duration)) : NaN,
  ];
}"""


async def _wait_ready(page: Page, started: float) -> Run:
    """Until the page's observer has seen its data."""
    await page.wait_for_function("() => window.__qgReady !== undefined", polling=POLL_MS, timeout=60_000)
    wall = (time.perf_counter() - started) * 1000
    ready, api_start, calls, longest = await page.evaluate(_READINGS)
    return Run(wall, float(ready), float(api_start), int(calls), float(longest))


async def open_page(page: Page, path: str) -> Run:
    """``path`` opened from about:blank, until its data is shown."""
    await page.goto("about:blank")
    started = time.perf_counter()
    await page.goto(path, wait_until="commit")
    return await _wait_ready(page, started)


async def click_next(page: Page) -> Run:
    """The ledger's "Next (older)" clicked, until "Rows 51-..." is shown."""
    button = page.locator("section.page-ledger nav.pager button", has_text="Next")
    await button.wait_for()
    started = time.perf_counter()
    await page.evaluate("() => window.__qgArm('ledger-next')")
    await button.click()
    return await _wait_ready(page, started)


async def text(page: Page, selector: str) -> str:
    return (await page.locator(selector).first.text_content() or "").strip()


async def note(page: Page, kind: str) -> str:
    """What the page shows, to check that it is the data asked for."""
    if kind == "overview":
        requests = await page.locator("section.page-overview [data-card=requests] dd").get_attribute("data-value")
        groups = await page.locator("section.page-overview .overview-body tbody tr[data-group]").count()
        return f"{int(requests or 0):,} requests, {groups} models"
    if kind == "ledger":
        rows = page.locator("section.page-ledger .ledger-results tbody tr")
        names = set(
            await page.locator("section.page-ledger .ledger-results tbody tr td:nth-child(3)").all_inner_texts()
        )
        status = await text(page, "section.page-ledger .status-line")
        return f"{status}: {await rows.count()} rows" + (f", user {names.pop()}" if len(names) == 1 else "")
    if kind == "teams":
        teams = await page.locator("section.page-teams .team").count()
        limits = await page.locator("section.page-teams .team li.limit").count()
        users = await page.locator("section.page-teams .users-section tbody tr[data-user]").count()
        return f"{teams} teams ({limits} live limits), {users} users"
    if kind == "keys":
        return await text(page, "section.page-keys .status-line")
    if kind == "deployments":
        cards = await page.locator("section.page-deployments .dep-grid > *").count()
        return f"{cards} deployments"
    if kind == "audit":
        entries = await page.locator("section.page-audit .audit-section tbody tr[data-id]").count()
        admins = await page.locator("section.page-audit .admin-keys-section tbody tr").count()
        return f"{entries} entries shown, {admins} admin keys"
    return ""


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def signed_in(launched: Browser, url: str, master_key: str) -> tuple[BrowserContext, Page, list[str]]:
    context = await launched.new_context(
        base_url=url, viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC"
    )
    context.set_default_timeout(60_000)
    await context.add_init_script(script=observer_script())
    answer = await context.request.post("/ui/login", data={"key": master_key})
    if answer.status != 200:
        raise RuntimeError(f"sign-in failed: {answer.status} {await answer.text()}")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
    # The browser's own start (its renderer, the stylesheet) is not a page's: the sign-in page
    # once, untimed; it loads neither the console's modules nor its data.
    await page.goto("/ui/login")
    return context, page, errors


def _timing(name: str, runs: list[Run], shown: str) -> Timing:
    return Timing(name, runs[0], min(runs[1:], key=lambda r: r.wall_ms), shown)


async def measure_pages(url: str, master_key: str, users: tuple[str, str]) -> list[Timing]:
    """Every page: its first load and REPEATS more (see the module's docstring)."""
    busy, quiet = users
    timings: list[Timing] = []
    async with browser() as launched:
        context, page, errors = await signed_in(launched, url, master_key)
        try:
            for window in ("hour", "day", "month"):
                runs = [await open_page(page, f"/ui#/overview?window={window}&by=model") for _ in range(1 + REPEATS)]
                timings.append(_timing(f"Overview, {window} by model", runs, await note(page, "overview")))
            for label, query in (
                ("", ""),
                (f", user {busy} (busiest)", f"?user={busy}"),
                (f", user {quiet} (quietest)", f"?user={quiet}"),
            ):
                first: list[Run] = []
                following: list[Run] = []
                shown = ["", ""]
                for _ in range(1 + REPEATS):
                    first.append(await open_page(page, f"/ui#/ledger{query}"))
                    shown[0] = await note(page, "ledger")
                    following.append(await click_next(page))
                    shown[1] = await note(page, "ledger")
                timings.append(_timing(f"Ledger{label}, first page", first, shown[0]))
                timings.append(_timing(f"Ledger{label}, next page (click)", following, shown[1]))
            for name, kind in (
                ("Teams and users", "teams"),
                ("Keys", "keys"),
                ("Deployments", "deployments"),
                ("Audit", "audit"),
            ):
                runs = [await open_page(page, f"/ui#/{kind}") for _ in range(1 + REPEATS)]
                timings.append(_timing(name, runs, await note(page, kind)))
        finally:
            await context.close()
        if errors:
            raise RuntimeError(f"errors in the console's scripts: {errors}")
    return timings


def pick_users(rows: list[UsageRow]) -> tuple[str, str]:
    """The user with the most rows and the one with the fewest."""
    counts = Counter(row.user_id for row in rows).most_common()
    return str(counts[0][0]), str(counts[-1][0])


# -- the run ---------------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Result:
    label: str
    built: str
    load_before: str
    load_after: str
    timings: list[Timing]


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def summary(results: list[Result]) -> str:
    """First and best of 3 (ms, goto or click to the data shown), the databases side by side."""
    head, rule = "| page |", "|---|"
    for r in results:
        head += f" {r.label} first ms | {r.label} best ms |"
        rule += "---:|---:|"
    lines = [head, rule]
    for n, timing in enumerate(results[0].timings):
        cells = "".join(f" {_ms(r.timings[n].first.wall_ms)} | {_ms(r.timings[n].best.wall_ms)} |" for r in results)
        lines.append(f"| {timing.name} |{cells}")
    return "\n".join(lines)


def table(result: Result) -> str:
    """The timings of one database, and what the pages showed."""
    lines = [
        "| page | first ms | best of 3 ms | best, in page ms | best: first API call at ms | best: API calls, longest ms | shown |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in result.timings:
        b = t.best
        lines.append(
            f"| {t.name} | {_ms(t.first.wall_ms)} | {_ms(b.wall_ms)} | {_ms(b.in_page_ms)} | {_ms(b.api_start_ms)} "
            f"| {b.api_calls}, {_ms(b.api_longest_ms)} | {t.note} |"
        )
    return "\n".join(lines)


async def run_target(
    label: str, url: str, rows: list[UsageRow] | None, postgres: bool, work: Path, users: tuple[str, str]
) -> Result:
    print(f"{label}:", flush=True)
    if rows is not None:
        built = await build(url, rows, postgres)
    else:
        built = f"{await count_rows(url):,} rows (kept from an earlier run)"
    print(f"  {built}", flush=True)
    master_key = "sk-bench-master-" + secrets.token_hex(16)
    before = loadavg()
    with gateway(url, work, master_key) as served:
        timings = await measure_pages(served, master_key, users)
    after = loadavg()
    for t in timings:
        print(
            f"  {t.name}: first {t.first.wall_ms:,.0f} ms, best {t.best.wall_ms:,.0f} ms "
            f"({t.best.in_page_ms:,.0f} in page; API calls from {_ms(t.best.api_start_ms)} ms, "
            f"{t.best.api_calls}, longest {_ms(t.best.api_longest_ms)} ms); {t.note}"
        )
    return Result(label, built, before, after, timings)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the databases: the SQLite file in this directory")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"load average {loadavg()}", flush=True)
    rows = list(generate(args.rows, time.time()))
    users = pick_users(rows)
    print(f"{len(rows):,} rows generated in {time.perf_counter() - started:.0f} s", flush=True)
    results: list[Result] = []
    pg_url = f"{args.postgres.rsplit('/', 1)[0]}/{PG_DATABASE}"
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        store = args.keep or work
        store.mkdir(parents=True, exist_ok=True)
        try:
            if args.only in (None, "sqlite"):
                url = f"sqlite:///{store / f'console-pages-{args.rows}.db'}"
                reuse = args.keep is not None and await count_rows(url) == args.rows
                if not reuse:
                    (store / f"console-pages-{args.rows}.db").unlink(missing_ok=True)
                results.append(await run_target("SQLite", url, None if reuse else rows, False, work, users))
            if args.only in (None, "postgresql"):
                reuse = args.keep is not None and await count_rows(pg_url) == args.rows
                if not reuse:
                    await _admin(args.postgres, f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
                    await _admin(args.postgres, f'CREATE DATABASE "{PG_DATABASE}"')
                results.append(await run_target("PostgreSQL", pg_url, None if reuse else rows, True, work, users))
        finally:
            if args.keep is None and args.only in (None, "postgresql"):
                await _admin(args.postgres, f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
    print()
    for r in results:
        print(f"{r.label}: {r.built}; load average {r.load_before} before the pages, {r.load_after} after")
    print()
    print(summary(results))
    for r in results:
        print(f"\n{r.label}:\n")
        print(table(r))
    for r in results:
        for t in r.timings:
            if max(t.first.wall_ms, t.best.wall_ms) > 1000:
                print(f"over 1 s: {r.label}, {t.name}: first {t.first.wall_ms:,.0f} ms, best {t.best.wall_ms:,.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
