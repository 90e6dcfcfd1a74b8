"""The response cache (issue 20): what it adds to a request, what it does to throughput, and what
it saves on a support workload. Four parts, each a few minutes, each printing its tables:

    .venv/bin/python bench/cache.py latency    [--rounds 6] [--seconds 2] [--targets off,exact,...]
    .venv/bin/python bench/cache.py throughput [--rounds 6] [--seconds 3] [--connections 64] [--targets ...]
    .venv/bin/python bench/cache.py stall      [--rounds 3] [--seconds 4] [--targets off,sem-0,sem-0-1k]
    .venv/bin/python bench/cache.py workload   [--requests 1500] [--concurrency 8] [--threshold T]

wrk must be on the PATH (Debian's package wrk). Results of a run are in bench/NOTES.md, "Response
cache (issue 20)".

Every part starts the mock upstream (`quotagate mock-upstream`, 0 ms) and its gateways (`quotagate
serve -c CONFIG`: one process, the SQLite usage ledger on, no limits, the memory cache store, the
shipped local embedding model), drives them with wrk and bench/cache.lua (which counts the
x-quotagate-cache header of every answer, so that a run that did not hit as it should shows it),
and stops them. A target name may end in "+blas1": that gateway runs with OPENBLAS_NUM_THREADS=1
(numpy's BLAS on one thread from the start; the gateway itself limits it to one thread when a
semantic rule exists, through threadpoolctl, since ResponseCache.start did so; before, a gateway
ran the index's search and the model on every core, see bench/NOTES.md).

latency: added latency at one connection, bracketed as bench/latency.py does: each round gives
  every target, in a fresh random order, a wrk run at one connection with a run against the mock
  directly before the first and after each one; a target's added p50 is its p50 minus the mean of
  the mock's p50 just before and after it, and its figure the median over the rounds. Targets:
    off           no cache rule (the tier has none)
    exact         mode: exact, the same request every time: an exact hit
    sem-hit       mode: semantic, the partition holding the ~460 texts of tests/data/semantic_pairs
                  (~440 stored: a text that is a semantic hit of an earlier one is not); a
                  reworded question ("Where's my order?" for the stored "Where is my order?") sent
                  with Cache-Control: no-store, so that its exact key is never stored and every
                  request is a semantic hit
    sem-miss      another such gateway; a question that matches nothing, with no-store: an exact
                  miss, an embedding, a search of the ~460 entries, and the provider
    sem-miss-10k  the same with the semantic index full (10,000 entries, cache.semantic_entries'
                  default): what the search costs at its largest
  Targets of issue 20: an exact hit's absolute p50 below the mock's own; a semantic miss adding at
  most 5 ms p50 over the cache off.

throughput: req/s at --connections, in interleaved rounds: each semantic target's run between two
  runs of `off` (the gateway without a cache rule, one fixed question), so that its share of off's
  req/s in a round is bracketed as bench/compare.py brackets the bare proxy. Targets:
    sem-0         mode: semantic, every question unique (random words and a counter, under the 64
                  columns up to which questions are compared semantically: 0 % hits; every answer
                  stored), the index first filled to its steady state (10,000)
    sem-0-1k      the same with cache.semantic_entries: 1000 (an index of 1,000, filled)
    sem-80        mode: semantic, 80 % of requests one of 8 cached questions (exact hits), 20 %
                  unique; the index filled to 10,000 first

stall: whether the event loop stalls while the model embeds: wrk at one connection on GET /health,
  alone and while a load runs on the same gateway (the 0 %-hit semantic load at 64 and at 8
  connections, with the index at 10,000 and at 1,000 entries, and the cache-off load at the same
  connections for comparison); health p50, p99 and max, medians over --rounds.

workload: the seed's scenario. --requests support questions (English and Chinese, from
  tests/data/semantic_pairs: a question is a class of texts linked by a "paraphrase" label), 20 %
  new (the first ask of a question), the rest paraphrases (a labelled paraphrase of an earlier
  question, worded so for the first time) and repeats (the same text as an earlier request, asked
  at least --gap requests earlier), sent at --concurrency through three fresh gateways in turn:
  no cache, mode: exact and mode: semantic (--threshold, or the gateway's default). Reports the
  hits (exact and semantic) by kind of request, the false hits (a semantic hit whose answer came from a
  question of another class: the answer's id tells which request it was first given to), and the
  provider cost from each gateway's SQLite ledger (qg_usage: cost_usd, cache_saved_usd) against the
  run without a cache. With 150 questions per language there are 300 new questions: --requests
  1500 keeps them at 20 %.

Load and this machine's speed are printed at the start and end of each part: everything shares
this machine's cores, so compare figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _common import HERE, cpu_seconds, cpu_speed_ms, free_port
from run import QG, create_key, wait_serving
from semantic_quality import load_pairs
from semantic_quality import question_classes as classes_of

from quotagate.config._models import DEFAULT_SEMANTIC_THRESHOLD

SCRIPT = HERE / "cache.lua"
MASTER_ENV = "QG_BENCH_CACHE_MASTER_KEY"
MASTER = "bench-cache-master-key"
QUESTION = "Say hello in three words."  # cache.lua's default, the question of off and exact
STORED = "Where is my order?"  # in the semantic latency targets' index (one of the pairs' texts)
REWORDED = "Where's my order?"  # its semantic hit (0.97 with the shipped model)
UNMATCHED = "Which planets can I see from my garden tonight?"  # a semantic miss
HIT_QUESTIONS = [  # sem-80's cached questions
    "Where is my order?",
    "How do I reset my password?",
    "How can I cancel my subscription?",
    "Do you ship internationally?",
    "我的订单到哪里了？",  # noqa: RUF001 (Chinese text ends in a full-width question mark)
    "怎么重置密码？",  # noqa: RUF001
    "How long does a refund take?",
    "Can I change my delivery address?",
]
SYSTEM = "You are the support assistant of an online shop."  # the workload's context (its partition)


def load_now() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores)"


def code_version() -> str:
    """The cache's code as measured (it changes while issue 20 is under way): the SHA-256 of
    src/quotagate/cache/*.py and server/_proxy.py, and when the newest of them was written."""
    files = sorted((HERE.parent / "src" / "quotagate" / "cache").glob("*.py"))
    files.append(HERE.parent / "src" / "quotagate" / "server" / "_proxy.py")
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]
    newest = max(f.stat().st_mtime for f in files)
    return f"cache code {digest} (newest file {time.strftime('%H:%M:%S', time.gmtime(newest))} UTC)"


def machine(when: str) -> str:
    line = (
        f"{when} ({time.strftime('%H:%M', time.gmtime())} UTC): {load_now()}; Python loop {cpu_speed_ms():.0f} ms "
        f"(bench/_common.py's, best of 3); {code_version()}"
    )
    print(line, flush=True)
    return line


def run_line(before: str) -> str:
    """The line above a part's results: the command, and the machine before and after the run."""
    return f"`{' '.join(['.venv/bin/python bench/cache.py', *sys.argv[1:]])}`; {before}; {machine('after')}."


# --- wrk ------------------------------------------------------------------------------------------


def wrk(url: str, connections: int, seconds: float, env: dict[str, str] | None = None, script: bool = True) -> dict:
    """One wrk run (with bench/cache.lua unless ``script`` is False): req/s, requests, non-2xx,
    latency p50/p90/p99/max in ms, and the answers' x-quotagate-cache counts."""
    return parse_wrk(
        subprocess.run(
            wrk_args(url, connections, seconds, script),
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            check=True,
        ).stdout
    )


def wrk_args(url: str, connections: int, seconds: float, script: bool = True) -> list[str]:
    args = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    return [*args, *(["-s", str(SCRIPT)] if script else []), url]


def parse_wrk(out: str) -> dict:
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def ms(label: str) -> float:
        found = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(found.group(1)) * unit[found.group(2)] if found else float("nan")

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out, re.M)
    counts = re.search(r"cache: hit=(\d+) semantic-hit=(\d+) miss=(\d+) none=(\d+) non-200=(\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "p50": ms("50%"),
        "p90": ms("90%"),
        "p99": ms("99%"),
        "max": float(latency.group(1)) * unit[latency.group(2)] if latency else float("nan"),
        "cache": dict(zip(("hit", "semantic-hit", "miss", "none", "non-200"), map(int, counts.groups()), strict=True))
        if counts
        else {},
    }


# --- gateways -------------------------------------------------------------------------------------


@dataclass
class Gateway:
    name: str
    port: int
    key: str
    process: subprocess.Popen[bytes]
    db: Path
    env: dict[str, str] = field(default_factory=dict)  # cache.lua's environment for this target

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    @property
    def health(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def cache_stats(self) -> dict:
        answer = httpx.get(f"http://127.0.0.1:{self.port}/admin/cache", headers={"Authorization": f"Bearer {MASTER}"})
        answer.raise_for_status()
        return dict(answer.json())

    def ask(self, question: str, cache_control: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        if cache_control:
            headers["Cache-Control"] = cache_control
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], "max_tokens": 16}
        answer = httpx.post(self.url, json=body, headers=headers, timeout=30)
        answer.raise_for_status()
        return answer

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def write_config(
    work: Path,
    name: str,
    mock: int,
    mode: str | None,
    threshold: float | None = None,
    semantic_entries: int | None = None,
) -> Path:
    """A gateway with one tier, ``bench``, cached as ``mode`` says (None: no cache rule)."""
    rule = "{}"
    if mode is not None:
        rule = f"{{cache: {{mode: {mode}" + (f", threshold: {threshold}" if threshold is not None else "") + "}}"
    settings = "{store: memory" + (f", semantic_entries: {semantic_entries}" if semantic_entries else "") + "}"
    config = work / f"{name}.yaml"
    config.write_text(
        f"database: sqlite:///{work}/{name}.db\n"
        f"master_key: env:{MASTER_ENV}\n"
        f"cache: {settings}\n"
        f"tiers: {{bench: {rule}}}\n"
        "models:\n"
        f"  - {{name: gpt-4o-mini, deployments: [{{provider: openai-compatible, base_url: 'http://127.0.0.1:{mock}/v1'}}]}}\n"
    )
    return config


def start_gateways(specs: dict[str, dict], mock: int, work: Path) -> dict[str, Gateway]:
    """Start one gateway per spec (mode, threshold, semantic_entries, blas1), all at once; wait
    until each serves."""
    started: dict[str, Gateway] = {}
    try:
        for name, spec in specs.items():
            safe = name.replace("+", "_")
            config = write_config(
                work, safe, mock, spec.get("mode"), spec.get("threshold"), spec.get("semantic_entries")
            )
            key = create_key(config, "bench", "bench")
            env = {**os.environ, MASTER_ENV: MASTER}
            if spec.get("blas1"):
                env["OPENBLAS_NUM_THREADS"] = "1"
            port = free_port()
            process = subprocess.Popen(
                [*QG, "serve", "-c", str(config), "--port", str(port)], stderr=subprocess.DEVNULL, env=env
            )
            started[name] = Gateway(name, port, key, process, work / f"{safe}.db", {"KEY": key})
        for gateway in started.values():
            wait_serving(gateway.url, gateway.key)
    except BaseException:
        stop_all(started.values())
        raise
    return started


def stop_all(gateways) -> None:  # type: ignore[no-untyped-def]
    for gateway in gateways:
        gateway.process.terminate()
    for gateway in gateways:
        gateway.stop()


class Mock:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([*QG, "mock-upstream", "--port", str(self.port)], stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        wait_serving(self.url, None)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


def split_target(name: str) -> tuple[str, bool]:
    base, _, option = name.partition("+")
    if option not in ("", "blas1"):
        sys.exit(f"unknown option {option!r} in {name!r} (only +blas1)")
    return base, option == "blas1"


def dataset_texts() -> list[str]:
    return sorted(question_classes())


async def ask_all(gateway: Gateway, questions: list[str], concurrency: int = 8) -> None:
    """Ask each question once (answers stored), ``concurrency`` at a time."""
    queue = list(questions)
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {gateway.key}"}) as client:

        async def worker() -> None:
            while queue:
                question = queue.pop()
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], "max_tokens": 16}
                (await client.post(gateway.url, json=body)).raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def fill_index(gateway: Gateway, entries: int, run: int) -> float:
    """Unique questions through ``gateway`` until its semantic index holds ``entries`` (or stops
    growing at its bound); the seconds it took."""
    started = time.monotonic()
    last = -1
    while True:
        held = int(gateway.cache_stats().get("semantic_entries", 0))
        if held >= entries:
            return time.monotonic() - started
        if held == last:
            sys.exit(f"{gateway.name}: the semantic index stopped growing at {held} entries (of {entries})")
        last = held
        wrk(gateway.url, 32, 3, {**gateway.env, "UNIQUE": "1", "RUN": str(run)})
        run += 1000


def settle(gateway: Gateway) -> None:
    """Give the background writes of the last answers time to land."""
    time.sleep(0.5)


# --- latency --------------------------------------------------------------------------------------

LATENCY_TARGETS = "off,exact,sem-hit,sem-miss,sem-miss-10k"
# What every answer of each latency target must say in x-quotagate-cache.
EXPECTED = {"off": "none", "exact": "hit", "sem-hit": "semantic-hit", "sem-miss": "miss", "sem-miss-10k": "miss"}


def latency(args: argparse.Namespace) -> None:
    names = args.targets.split(",")
    specs: dict[str, dict] = {}
    for name in names:
        base, blas1 = split_target(name)
        if base not in EXPECTED:
            sys.exit(f"unknown latency target {name!r} ({LATENCY_TARGETS}, with +blas1)")
        mode = {"off": None, "exact": "exact"}.get(base, "semantic")
        specs[name] = {"mode": mode, "blas1": blas1}
    work = Path(tempfile.mkdtemp(prefix="qg-cache-latency-"))
    before = machine("before")
    mock = Mock()
    gateways: dict[str, Gateway] = {}
    try:
        gateways = start_gateways(specs, mock.port, work)
        texts = dataset_texts()
        if STORED not in texts:
            sys.exit(f"{STORED!r}, which the semantic hit rewords, is no longer one of the pairs' texts")
        if REWORDED in texts or UNMATCHED in texts:
            sys.exit("the reworded or unmatched question is one of the stored texts: it would be an exact hit")
        for name, gateway in gateways.items():
            base = split_target(name)[0]
            if base == "exact":
                gateway.ask(QUESTION)
            elif base.startswith("sem-"):
                asyncio.run(ask_all(gateway, texts))
                if base == "sem-miss-10k":
                    took = fill_index(gateway, 10_000, run=random.randrange(10**6))
                    print(f"{name}: index filled in {took:.0f} s", flush=True)
                gateway.env.update(
                    {"QUESTION": REWORDED if base == "sem-hit" else UNMATCHED, "CACHE_CONTROL": "no-store"}
                )
            settle(gateway)
            if "QUESTION" in gateway.env:
                said = gateway.ask(gateway.env["QUESTION"], gateway.env.get("CACHE_CONTROL"))
            else:
                said = gateway.ask(QUESTION)
            kind = said.headers.get("x-quotagate-cache", "none")
            similarity = said.headers.get("x-quotagate-cache-similarity")
            print(
                f"{name}: x-quotagate-cache: {kind}"
                + (f" (similarity {similarity})" if similarity else "")
                + f", semantic index {gateway.cache_stats().get('semantic_entries', 0)} entries",
                flush=True,
            )
            if kind != EXPECTED[base]:
                sys.exit(f"{name} answered {kind}, not {EXPECTED[base]}")
        for gateway in gateways.values():
            wrk(gateway.url, 1, 1, gateway.env)  # warm-up
        p50s: dict[str, list[float]] = {n: [] for n in gateways}
        p99s: dict[str, list[float]] = {n: [] for n in gateways}
        added: dict[str, list[float]] = {n: [] for n in gateways}
        unexpected: Counter[str] = Counter()
        mock_p50s: list[float] = []
        for number in range(1, args.rounds + 1):
            order = list(gateways.values())
            random.shuffle(order)
            previous = wrk(mock.url, 1, args.seconds)["p50"]
            mock_p50s.append(previous)
            for gateway in order:
                mine = wrk(gateway.url, 1, args.seconds, gateway.env)
                after = wrk(mock.url, 1, args.seconds)["p50"]
                mock_p50s.append(after)
                expected = EXPECTED[split_target(gateway.name)[0]]
                unexpected[gateway.name] += sum(v for k, v in mine["cache"].items() if k != expected)
                p50s[gateway.name].append(mine["p50"])
                p99s[gateway.name].append(mine["p99"])
                added[gateway.name].append(mine["p50"] - (previous + after) / 2)
                previous = after
            print(f"round {number}: " + ", ".join(f"{n} {added[n][-1]:+.3f} ms" for n in gateways), flush=True)
    finally:
        stop_all(gateways.values())
        mock.stop()
    header = run_line(before)
    mock_p50 = statistics.median(mock_p50s)
    lines = [
        header,
        "",
        "| target | x-quotagate-cache | p50 @1 ms (median) | p99 @1 ms (median) | added p50 ms (median of rounds, min to max) |",
        "|---|---|---:|---:|---:|",
        f"| mock directly | — | {mock_p50:.3f} | — | — |",
    ]
    for name in gateways:
        expected = EXPECTED[split_target(name)[0]]
        wrong = f", {unexpected[name]} answers not {expected}" if unexpected[name] else ""
        lines.append(
            f"| {name} | {expected}{wrong} | {statistics.median(p50s[name]):.3f} | {statistics.median(p99s[name]):.3f} "
            f"| {statistics.median(added[name]):+.3f} ({min(added[name]):+.3f} to {max(added[name]):+.3f}) |"
        )
    lines.append("")
    for name in gateways:
        base = split_target(name)[0]
        if base == "exact":
            below = sum(a < 0 for a in added[name])
            lines.append(
                f"- {name}: p50 {statistics.median(p50s[name]):.3f} ms against the mock's own {mock_p50:.3f} ms; "
                f"below the mock's (bracketed) in {below} of {len(added[name])} rounds "
                f"(target: an exact hit faster than the mock at 0 ms)"
            )
        if base.startswith("sem-miss") and "off" in gateways:
            over = [mine - off for mine, off in zip(added[name], added["off"], strict=True)]
            lines.append(
                f"- {name}: {statistics.median(over):+.3f} ms p50 over the cache off (median of the rounds' "
                f"differences, {min(over):+.3f} to {max(over):+.3f}; target <= 5 ms)"
            )
    print("\n" + "\n".join(lines))


# --- throughput -----------------------------------------------------------------------------------

THROUGHPUT_TARGETS = "sem-0,sem-0-1k,sem-80"


def semantic_loads(names: list[str], mock: int, work: Path, with_off: bool = True) -> dict[str, Gateway]:
    """Start off and the semantic load targets, their indexes filled, their env set."""
    specs: dict[str, dict] = {"off": {"mode": None}} if with_off else {}
    for name in names:
        base, blas1 = split_target(name)
        if base not in ("sem-0", "sem-0-1k", "sem-80"):
            sys.exit(f"unknown load target {name!r} ({THROUGHPUT_TARGETS}, with +blas1)")
        specs[name] = {"mode": "semantic", "blas1": blas1, "semantic_entries": 1000 if base == "sem-0-1k" else None}
    gateways = start_gateways(specs, mock, work)
    try:
        for name, gateway in gateways.items():
            base = split_target(name)[0]
            if base == "off":
                continue
            entries = 1000 if base == "sem-0-1k" else 10_000
            took = fill_index(gateway, entries, run=random.randrange(10**6))
            if base == "sem-80":
                asyncio.run(ask_all(gateway, HIT_QUESTIONS))
                settle(gateway)
                gateway.env.update({"QUESTIONS": "|".join(HIT_QUESTIONS), "UNIQUE": "0.2"})
            else:
                gateway.env["UNIQUE"] = "1"
            print(
                f"{name}: index filled to {gateway.cache_stats().get('semantic_entries')} entries in {took:.0f} s",
                flush=True,
            )
    except BaseException:
        stop_all(gateways.values())
        raise
    return gateways


def throughput(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="qg-cache-throughput-"))
    before = machine("before")
    mock = Mock()
    gateways: dict[str, Gateway] = {}
    rps: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    p99: dict[str, list[float]] = defaultdict(list)
    shares: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    run = random.randrange(10**6)
    try:
        gateways = semantic_loads(args.targets.split(","), mock.port, work)
        off = gateways["off"]

        def measure(gateway: Gateway) -> float:
            nonlocal run
            run += 1
            used = cpu_seconds(gateway.process.pid)
            result = wrk(gateway.url, args.connections, args.seconds, {**gateway.env, "RUN": str(run)})
            used = cpu_seconds(gateway.process.pid) - used
            rps[gateway.name].append(result["rps"])
            p99[gateway.name].append(result["p99"])
            cpu[gateway.name].append(used / max(1, result["requests"]) * 1e6)
            counts[gateway.name].update(result["cache"])
            return float(result["rps"])

        for gateway in gateways.values():
            wrk(gateway.url, args.connections, 1, {**gateway.env, "RUN": str(run)})  # warm-up
            run += 1
        for number in range(1, args.rounds + 1):
            order = [g for g in gateways.values() if g is not off]
            random.shuffle(order)
            previous = measure(off)
            for gateway in order:
                mine = measure(gateway)
                after = measure(off)
                shares[gateway.name].append(mine / ((previous + after) / 2))
                previous = after
            print(f"round {number}: " + ", ".join(f"{n} {rps[n][-1]:,.0f}/s" for n in gateways), flush=True)
        entries = {name: g.cache_stats().get("semantic_entries", 0) for name, g in gateways.items() if g is not off}
    finally:
        stop_all(gateways.values())
        mock.stop()
    header = run_line(before)
    lines = [
        header,
        "",
        f"| target | req/s @{args.connections} (median) | vs off (median of rounds, min-max) | CPU µs/request | "
        "p99 ms (median) | answers: hit / semantic-hit / miss / non-200 | hit share |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name in gateways:
        c = counts[name]
        total = sum(c.values())
        share = (
            f"{statistics.median(shares[name]):.0%} ({min(shares[name]):.0%}-{max(shares[name]):.0%})"
            if shares[name]
            else "—"
        )
        hit_share = f"{(c['hit'] + c['semantic-hit']) / total:.1%}" if total and name != "off" else "—"
        lines.append(
            f"| {name} | {statistics.median(rps[name]):,.0f} | {share} | {statistics.median(cpu[name]):.0f} | "
            f"{statistics.median(p99[name]):.1f} | {c['hit']} / {c['semantic-hit']} / {c['miss']} / {c['non-200']} "
            f"| {hit_share} |"
        )
    lines.append("")
    lines.append("Semantic index entries at the end: " + ", ".join(f"{n} {e:,}" for n, e in entries.items()) + ".")
    print("\n" + "\n".join(lines))


# --- stall ----------------------------------------------------------------------------------------


def stall(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="qg-cache-stall-"))
    before = machine("before")
    mock = Mock()
    gateways: dict[str, Gateway] = {}
    names = args.targets.split(",")
    results: dict[tuple[str, int], list[dict]] = defaultdict(list)
    loads: dict[tuple[str, int], list[dict]] = defaultdict(list)
    run = random.randrange(10**6)
    try:
        gateways = semantic_loads([n for n in names if n != "off"], mock.port, work, with_off="off" in names)
        conditions = [(name, connections) for name in gateways for connections in (0, 8, args.connections)]
        for number in range(1, args.rounds + 1):
            random.shuffle(conditions)
            for name, connections in conditions:
                gateway = gateways[name]
                load = None
                if connections:
                    run += 1
                    load = subprocess.Popen(
                        wrk_args(gateway.url, connections, args.seconds + 1),
                        text=True,
                        stdout=subprocess.PIPE,
                        env={**os.environ, **gateway.env, "RUN": str(run)},
                    )
                    time.sleep(0.5)  # the load under way before the probe starts
                probe = wrk(gateway.health, 1, args.seconds, script=False)
                results[(name, connections)].append(probe)
                if load is not None:
                    loads[(name, connections)].append(parse_wrk(load.communicate()[0]))
            print(f"round {number} done", flush=True)
    finally:
        stop_all(gateways.values())
        mock.stop()
    header = run_line(before)
    lines = [
        header,
        "",
        "| gateway | load on it | load req/s | GET /health p50 ms | p99 ms | max ms (worst run) | health req/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in gateways:
        for connections in (0, 8, args.connections):
            probes = results[(name, connections)]
            load_runs = loads.get((name, connections), [])
            described = (
                "none"
                if not connections
                else (
                    f"{connections} connections, "
                    + (
                        "one fixed question (cache off)"
                        if name == "off"
                        else "unique questions (0 % hits)"
                        if "sem-0" in name
                        else "80 % hits"
                    )
                )
            )
            load_rps = f"{statistics.median(r['rps'] for r in load_runs):,.0f}" if load_runs else "—"
            lines.append(
                f"| {name} | {described} | {load_rps} | {statistics.median(p['p50'] for p in probes):.2f} | "
                f"{statistics.median(p['p99'] for p in probes):.2f} | {max(p['max'] for p in probes):.1f} | "
                f"{statistics.median(p['rps'] for p in probes):,.0f} |"
            )
    print("\n" + "\n".join(lines))


# --- workload -------------------------------------------------------------------------------------


@dataclass
class Request:
    number: int
    text: str
    language: str
    question: int  # the class: texts linked by a paraphrase label share one
    kind: str  # new, paraphrase or repeat
    # What the gateway said.
    cache: str = ""
    similarity: float | None = None
    answer_id: str = ""
    status: int = 0
    ms: float = 0.0


def question_classes() -> dict[str, tuple[str, int]]:
    """Every text of the pairs: its language and its class (texts linked by a "paraphrase" label
    share a class, every other text is a class of its own)."""
    pairs = {language: load_pairs(language) for language in ("en", "zh")}
    language_of = {text: language for language, found in pairs.items() for pair in found for text in (pair.a, pair.b)}
    return {text: (language_of[text], number) for text, number in classes_of([*pairs["en"], *pairs["zh"]]).items()}


def build_workload(requests: int, new_share: float, gap: int, seed: int) -> list[Request]:
    """``requests`` questions: ``new_share`` new (the first ask of a class), then as many
    paraphrases (another wording of a class asked at least ``gap`` requests earlier, asked in it for
    the first time) as the pairs hold, and repeats (the text of an earlier request, at least
    ``gap`` earlier) for the rest; the kinds drawn in proportion to what is left of each."""
    rng = random.Random(seed)
    classes = question_classes()
    texts_of: dict[int, list[str]] = defaultdict(list)
    for text, (_, number) in classes.items():
        texts_of[number].append(text)
    unasked = sorted(texts_of)
    rng.shuffle(unasked)
    new_left = min(round(requests * new_share), len(unasked))
    if new_left < round(requests * new_share):
        print(f"only {len(unasked)} questions in the pairs: {new_left} new ({new_left / requests:.0%})", flush=True)
    unasked = unasked[:new_left]  # the questions this workload asks
    paraphrase_left = min(sum(len(texts_of[q]) - 1 for q in unasked), requests - new_left)
    repeat_left = requests - new_left - paraphrase_left
    out: list[Request] = []
    unused: dict[int, list[str]] = {}  # a class asked: its wordings not asked yet
    first_asked: dict[int, int] = {}
    for number in range(requests):
        old = [q for q, at in first_asked.items() if at <= number - gap and unused[q]]
        can = {
            "new": new_left > 0 and bool(unasked),
            "paraphrase": paraphrase_left > 0 and bool(old),
            "repeat": repeat_left > 0 and number >= gap,
        }
        weights = {"new": new_left, "paraphrase": paraphrase_left, "repeat": repeat_left}
        # A kind whose budget is spent, or not possible yet, only when nothing else is.
        possible = {"repeat": number >= gap, "paraphrase": bool(old), "new": bool(unasked)}
        choices = [k for k in weights if can[k]] or [k for k in ("repeat", "paraphrase", "new") if possible[k]][:1]
        choices = choices or ["repeat"]
        kind = rng.choices(choices, [max(1, weights[k]) for k in choices])[0]
        if kind == "new":
            question = unasked.pop()
            wordings = list(texts_of[question])
            rng.shuffle(wordings)
            text = wordings.pop()
            unused[question], first_asked[question] = wordings, number
            new_left -= 1
        elif kind == "paraphrase":
            question = rng.choice(old)
            text = unused[question].pop(rng.randrange(len(unused[question])))
            paraphrase_left -= 1
        else:
            earlier = out[rng.randrange(max(1, number - gap + 1))] if number >= gap else rng.choice(out)
            text, question = earlier.text, earlier.question
            repeat_left -= 1
        out.append(Request(number, text, classes[text][0], question, kind))
    return out


async def send_workload(gateway: Gateway, workload: list[Request], concurrency: int) -> float:
    """Each request in order, ``concurrency`` at a time; the seconds it took."""
    queue = iter(workload)
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {gateway.key}"}) as client:

        async def worker() -> None:
            for request in queue:
                body = {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request.text}],
                    "max_tokens": 16,
                }
                started = time.perf_counter()
                answer = await client.post(
                    gateway.url, json=body, headers={"x-client-request-id": f"wl-{request.number}"}
                )
                request.ms = (time.perf_counter() - started) * 1000
                request.status = answer.status_code
                request.cache = answer.headers.get("x-quotagate-cache", "none")
                similarity = answer.headers.get("x-quotagate-cache-similarity")
                request.similarity = float(similarity) if similarity else None
                if answer.status_code == 200:
                    request.answer_id = answer.json()["id"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def ledger_totals(db: Path) -> dict[str, float]:
    with sqlite3.connect(db) as connection:
        row = connection.execute(
            "SELECT count(*), coalesce(sum(cache_hit), 0), coalesce(sum(cost_usd), 0), "
            "coalesce(sum(cache_saved_usd), 0), coalesce(sum(status != 200), 0) "
            "FROM qg_usage WHERE client_request_id LIKE 'wl-%'"
        ).fetchone()
    return dict(zip(("rows", "hits", "cost", "saved", "errors"), row, strict=True))


def workload(args: argparse.Namespace) -> None:
    requests = build_workload(args.requests, 0.2, args.gap, args.seed)
    kinds = Counter(r.kind for r in requests)
    languages = Counter(r.language for r in requests)
    print(
        f"workload: {len(requests)} requests, "
        + ", ".join(f"{k} {v}" for k, v in kinds.items())
        + "; "
        + ", ".join(f"{k} {v}" for k, v in languages.items()),
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="qg-cache-workload-"))
    before = machine("before")
    mock = Mock()
    runs: dict[str, tuple[list[Request], dict[str, float], float, dict]] = {}
    threshold = args.threshold if args.threshold is not None else DEFAULT_SEMANTIC_THRESHOLD
    modes = {"off": None, "exact": "exact", f"semantic {threshold:g}": "semantic"}
    try:
        for label, mode in modes.items():
            gateway = start_gateways(
                {
                    label.split()[0] + ("+blas1" if args.blas1 else ""): {
                        "mode": mode,
                        "threshold": args.threshold if mode == "semantic" else None,
                        "blas1": args.blas1,
                    }
                },
                mock.port,
                work,
            )
            gw = next(iter(gateway.values()))
            try:
                mine = [Request(r.number, r.text, r.language, r.question, r.kind) for r in requests]
                took = asyncio.run(send_workload(gw, mine, args.concurrency))
                stats = gw.cache_stats() if mode else {}
            finally:
                gw.stop()  # the ledger is written out at shutdown
            runs[label] = (mine, ledger_totals(gw.db), took, stats)
            print(f"{label}: {took:.1f} s", flush=True)
    finally:
        mock.stop()
    header = run_line(before)
    off_cost = runs["off"][1]["cost"]
    lines = [
        header,
        "",
        f"Workload: {len(requests)} requests ({', '.join(f'{v} {k}' for k, v in kinds.items())}; "
        f"{', '.join(f'{v} {k}' for k, v in languages.items())}), {args.concurrency} at a time, seed {args.seed}.",
        "",
        "| gateway | exact hits | semantic hits | hit rate | false hits | non-200 | provider cost (ledger) | "
        "cache_saved_usd (ledger) | cost + saved | saved vs the run without cache | wall s | p50 ms hit / miss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    details: list[str] = []
    for label, (done, ledger, took, stats) in runs.items():
        by_id = {r.answer_id: r for r in done if r.cache in ("miss", "none") and r.answer_id}
        hits = sum(r.cache == "hit" for r in done)
        semantic = [r for r in done if r.cache == "semantic-hit"]
        false_hits = []
        unknown = 0
        for r in done:
            if r.cache not in ("hit", "semantic-hit"):
                continue
            source = by_id.get(r.answer_id)
            if source is None:
                unknown += 1
            # An exact hit may carry another wording's answer too: a semantic hit is stored under
            # its own wording's key. Wrong is an answer to another question.
            elif source.question != r.question:
                false_hits.append((r, source))
        errors = sum(r.status != 200 for r in done)
        hit_ms = [r.ms for r in done if r.cache in ("hit", "semantic-hit")]
        miss_ms = [r.ms for r in done if r.cache not in ("hit", "semantic-hit")]
        saved_share = f"{ledger['saved'] / off_cost:.1%}" if off_cost else "—"
        lines.append(
            f"| {label} | {hits} | {len(semantic)} | {(hits + len(semantic)) / len(done):.1%} | "
            f"{len(false_hits)}{f' ({unknown} unknown)' if unknown else ''} | {errors} | "
            f"${ledger['cost']:.6f} | ${ledger['saved']:.6f} | ${ledger['cost'] + ledger['saved']:.6f} | "
            f"{saved_share} | {took:.1f} | "
            f"{statistics.median(hit_ms) if hit_ms else float('nan'):.1f} / "
            f"{statistics.median(miss_ms) if miss_ms else float('nan'):.1f} |"
        )
        if ledger["rows"] != len(done) or ledger["hits"] != hits + len(semantic):
            details.append(
                f"- {label}: the ledger has {ledger['rows']} rows, {ledger['hits']} hits "
                f"(the client saw {len(done)} requests, {hits + len(semantic)} hits)"
            )
        if stats:
            node = stats.get("node", {})
            details.append(
                f"- {label}: /admin/cache node counts {node}, semantic entries {stats.get('semantic_entries', 0)}"
            )
        for r, source in false_hits:
            details.append(
                f'- {label}: FALSE HIT ({r.cache}, similarity {r.similarity}) "{r.text}" '
                f'answered with the answer to "{source.text}"'
            )
    lines.append("")
    lines.append("By kind of request (hit / semantic-hit / miss):")
    lines.append("")
    header = "| kind | lang | requests | " + " | ".join(runs) + " |"
    lines += [header, "|---|---|---:|" + "---|" * len(runs)]
    for kind in ("new", "paraphrase", "repeat"):
        for language in ("en", "zh"):
            cells = []
            for done, *_ in runs.values():
                mine = [r for r in done if r.kind == kind and r.language == language]
                c = Counter(r.cache for r in mine)
                cells.append(f"{c['hit']} / {c['semantic-hit']} / {c['miss'] + c['none']}")
            count = sum(r.kind == kind and r.language == language for r in requests)
            lines.append(f"| {kind} | {language} | {count} | " + " | ".join(cells) + " |")
    semantic_run = runs[list(runs)[-1]][0]
    by_id = {r.answer_id: r for r in semantic_run if r.cache == "miss" and r.answer_id}
    sims = sorted(r.similarity for r in semantic_run if r.cache == "semantic-hit" and r.similarity is not None)
    if sims:
        lines.append("")
        lines.append(
            f"Semantic hits' similarity: min {sims[0]:.4f}, median {statistics.median(sims):.4f}, max {sims[-1]:.4f}."
        )
        lines.append("")
        lines.append("Paraphrases served by a semantic hit (first wordings of an earlier question):")
        for r in semantic_run:
            if r.kind == "paraphrase" and r.cache == "semantic-hit":
                source = by_id.get(r.answer_id)
                lines.append(f'- {r.similarity:.4f} "{r.text}" <- "{source.text if source else "?"}"')
    print("\n" + "\n".join([*lines, "", *details]))


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    part = parts.add_parser("latency", help="added latency at one connection, bracketed by the mock")
    part.add_argument("--targets", default=LATENCY_TARGETS, help=f"comma-separated, of {LATENCY_TARGETS} (+blas1)")
    part.add_argument("--rounds", type=int, default=6)
    part.add_argument("--seconds", type=float, default=2, help="per wrk run")
    part.set_defaults(run=latency)
    part = parts.add_parser("throughput", help="req/s with the semantic cache, interleaved with the cache off")
    part.add_argument(
        "--targets", default=THROUGHPUT_TARGETS, help=f"comma-separated, of {THROUGHPUT_TARGETS} (+blas1)"
    )
    part.add_argument("--rounds", type=int, default=6)
    part.add_argument("--seconds", type=float, default=3, help="per wrk run")
    part.add_argument("--connections", type=int, default=64)
    part.set_defaults(run=throughput)
    part = parts.add_parser("stall", help="GET /health latency while the semantic cache embeds")
    part.add_argument(
        "--targets", default="off,sem-0,sem-0-1k", help="comma-separated: off, sem-0, sem-0-1k, sem-80 (+blas1)"
    )
    part.add_argument("--rounds", type=int, default=3)
    part.add_argument("--seconds", type=float, default=4, help="per probe")
    part.add_argument("--connections", type=int, default=64, help="the heavier load (the lighter is 8)")
    part.set_defaults(run=stall)
    part = parts.add_parser("workload", help="hit rate, false hits and savings on support questions")
    part.add_argument("--requests", type=int, default=1500)
    part.add_argument("--concurrency", type=int, default=8)
    part.add_argument("--gap", type=int, default=32, help="a repeat or paraphrase refers this many requests back")
    part.add_argument(
        "--threshold", type=float, help=f"the semantic gateway's (default: the gateway's, {DEFAULT_SEMANTIC_THRESHOLD})"
    )
    part.add_argument("--seed", type=int, default=1)
    part.add_argument("--blas1", action="store_true", help="the gateways with OPENBLAS_NUM_THREADS=1")
    part.set_defaults(run=workload)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
