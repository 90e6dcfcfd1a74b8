"""A soak: the gateway's memory and latency over a long run of mixed load (not a test, not in CI).

    .venv/bin/python bench/soak.py [--minutes 30] [--interval 60] [--rate 300] [--redis URL] [--workers N]

Starts the mock upstream (`quotagate mock-upstream`) and a gateway (`quotagate serve`) as
processes of their own, the gateway with its usage ledger in SQLite (and with --redis, its limits,
breakers and ledger stream in Redis: give it a database of its own), makes a key on a roomy tier
and one on a tight tier (120 requests a minute), and sends an open-loop mix at --rate requests/s:
chat completions plain and streamed, completions, embeddings, streams the client hangs up on after
their first bytes, bad requests (400) and the tight key's requests (429 past its limit).

Every --interval seconds it prints, and appends to --out as a JSON line: the gateway's resident
memory (VmRSS of its process and its workers' processes), requests done, outcomes by status, p50
and p99 latency of the interval's non-streamed answers and of its whole streams, and the gateway's
CPU. At the end: RSS at start, after warm-up and at the end, its growth per hour after warm-up
(a least-squares slope over the samples from warm-up on), latency percentiles of the intervals
after warm-up (and the worst of warm-up, apart), outcomes other than the expected ones (which must be 0: a 5xx, a timeout, a refused connection, a
stream that broke off, a 429 on the roomy key ...), ledger rows written against requests sent, the
gateway's error log lines, and a markdown table to paste into the README.

Everything (mock, gateway, this load generator) shares the machine's cores: keep --rate well
below saturation (200-400 req/s on 2 cores), so that what moves over time is the gateway, not
the queue in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from _common import cpu_seconds, free_port, pct, rss_mib, wait_ready
from run import QG, create_key

CHAT_MODEL, COMPLETION_MODEL, EMBEDDING_MODEL = "gpt-4o-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small"
MESSAGES = [{"role": "user", "content": "Say hello in three words."}]
# The mock's pause between stream chunks: a 16-token stream lasts ~35 ms, long enough for a client
# to hang up in the middle of it.
STREAM_CHUNK_MS = 2.0
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix, and the statuses it may be answered with."""

    name: str
    share: float  # percent of the requests
    path: str
    body: bytes
    tier: str = "roomy"
    stream: bool = False
    hang_up: bool = False  # the client leaves after the first bytes of the stream
    expected: frozenset[int] = frozenset({200})


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


MIX = [
    Kind("chat", 35, "/v1/chat/completions", _json({"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 16})),
    Kind(
        "chat streamed",
        20,
        "/v1/chat/completions",
        _json({"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": True}),
        stream=True,
    ),
    Kind(
        "stream left midway",
        5,
        "/v1/chat/completions",
        _json({"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": True}),
        stream=True,
        hang_up=True,
    ),
    Kind(
        "completions",
        12,
        "/v1/completions",
        _json({"model": COMPLETION_MODEL, "prompt": "Say hello in three words.", "max_tokens": 16}),
    ),
    Kind("embeddings", 13, "/v1/embeddings", _json({"model": EMBEDDING_MODEL, "input": ["hello", "world"]})),
    Kind(
        "empty messages",
        3,
        "/v1/chat/completions",
        _json({"model": CHAT_MODEL, "messages": []}),
        expected=frozenset({400}),
    ),
    Kind(
        "broken JSON", 2, "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [', expected=frozenset({400})
    ),
    Kind(
        "tight tier",
        10,
        "/v1/chat/completions",
        _json({"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 16}),
        tier="tight",
        expected=frozenset({200, 429}),
    ),
]
TIERS = {"roomy": "{rpm: 1000000000, tpm: 1000000000000, tpd: 1000000000000}", "tight": "{rpm: 120}"}


@dataclass
class Tally:
    """Outcomes and latencies (ms) of the requests that ended in one interval, or in the whole run."""

    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    plain: list[float] = field(default_factory=list)  # non-streamed answers, whatever their status
    streams: list[float] = field(default_factory=list)  # whole streams, first byte to [DONE]

    def add(self, other: Tally) -> None:
        self.outcomes.update(other.outcomes)
        self.unexpected.update(other.unexpected)
        self.plain.extend(other.plain)
        self.streams.extend(other.streams)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())


class Load:
    """The open-loop load: requests start on schedule whether or not earlier ones have finished,
    so that a gateway that slows down shows as latency, not as a politely lowered rate."""

    def __init__(self, base: str, keys: dict[str, str], rate: float, seed: int) -> None:
        self.base = base
        self.headers = {
            tier: {"Authorization": f"Bearer {key}", "Content-Type": "application/json"} for tier, key in keys.items()
        }
        self.rate = rate
        self.rng = random.Random(seed)
        self.interval = Tally()
        self.sent = 0

    async def run(self, seconds: float) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            tasks: set[asyncio.Task[None]] = set()
            loop = asyncio.get_running_loop()
            start = loop.time()
            weights = [k.share for k in MIX]
            while True:
                due = start + self.sent / self.rate
                if due - start >= seconds:
                    break
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                kind = self.rng.choices(MIX, weights)[0]
                task = asyncio.ensure_future(self.one(session, kind))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
            if tasks:
                await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)

    async def one(self, session: aiohttp.ClientSession, kind: Kind) -> None:
        started = time.perf_counter()
        try:
            async with session.post(self.base + kind.path, data=kind.body, headers=self.headers[kind.tier]) as response:
                status = response.status
                if kind.hang_up and status == 200:
                    await response.content.readany()
                    response.close()  # drops the connection mid-stream
                    self.interval.outcomes["left"] += 1
                    return
                body = await response.read()
        except TimeoutError:
            self._unexpected(kind, "timeout")
            return
        except aiohttp.ClientError as exc:
            self._unexpected(kind, type(exc).__name__)
            return
        ms = (time.perf_counter() - started) * 1000
        tally = self.interval  # the interval may have turned while the request ran
        if status not in kind.expected:
            self._unexpected(kind, str(status))
            return
        if kind.stream and not body.rstrip().endswith(b"data: [DONE]"):
            self._unexpected(kind, "stream broke off")
            return
        tally.outcomes[str(status)] += 1
        (tally.streams if kind.stream else tally.plain).append(ms)

    def _unexpected(self, kind: Kind, what: str) -> None:
        self.interval.outcomes["unexpected"] += 1
        self.interval.unexpected[f"{kind.name}: {what}"] += 1

    def turn(self) -> Tally:
        """The interval's tally, and a fresh one for the next."""
        done, self.interval = self.interval, Tally()
        return done


@dataclass
class Sample:
    t: float  # seconds since the load began
    rss_mib: float
    cpu_percent: float  # of one core, over the interval
    tally: Tally

    def to_json(self) -> dict[str, Any]:
        return {
            "t_s": round(self.t, 1),
            "rss_mib": round(self.rss_mib, 2),
            "cpu_percent": round(self.cpu_percent, 1),
            "requests": self.tally.requests,
            "outcomes": dict(self.tally.outcomes),
            "unexpected": dict(self.tally.unexpected),
            "plain_p50_ms": round(pct(self.tally.plain, 0.5), 2),
            "plain_p99_ms": round(pct(self.tally.plain, 0.99), 2),
            "stream_p50_ms": round(pct(self.tally.streams, 0.5), 2),
            "stream_p99_ms": round(pct(self.tally.streams, 0.99), 2),
        }


def _ms(value: float, digits: int) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def _outcomes(counts: Counter[str]) -> str:
    return "  ".join(f"{name}: {counts[name]:,}" for name in sorted(counts))


def print_sample(sample: Sample, seconds: float) -> None:
    tally = sample.tally
    print(
        f"[{sample.t:6.0f} s] RSS {sample.rss_mib:6.1f} MiB | {tally.requests:,} req ({tally.requests / seconds:,.0f}/s) | "
        f"{_outcomes(tally.outcomes)} | plain p50 {pct(tally.plain, 0.5):.2f} p99 {pct(tally.plain, 0.99):.2f} ms | "
        f"stream p50 {pct(tally.streams, 0.5):.1f} p99 {pct(tally.streams, 0.99):.1f} ms | CPU {sample.cpu_percent:.0f} %",
        flush=True,
    )
    for what, count in sorted(tally.unexpected.items()):
        print(f"           unexpected: {what} x{count}", flush=True)


async def soak(args: argparse.Namespace, base: str, keys: dict[str, str], gateway: int, out: TextIO) -> list[Sample]:
    """Runs the load, sampling every interval; the samples."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    load = Load(base, keys, args.rate, args.seed)
    seconds = args.minutes * 60
    samples: list[Sample] = []

    async def sample_every_interval() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        cpu_before, at_before = cpu_seconds(gateway), start
        index = 1
        while True:
            await asyncio.sleep(max(0.0, start + index * args.interval - loop.time()))
            now = loop.time()
            cpu = cpu_seconds(gateway)
            sample = Sample(now - start, rss_mib(gateway), (cpu - cpu_before) / (now - at_before) * 100, load.turn())
            cpu_before, at_before = cpu, now
            samples.append(sample)
            print_sample(sample, now - (start + (index - 1) * args.interval))
            out.write(json.dumps(sample.to_json()) + "\n")
            out.flush()
            index += 1

    sampler = asyncio.ensure_future(sample_every_interval())
    try:
        await load.run(seconds)
    finally:
        sampler.cancel()
    # What ended after the last whole interval (requests still in flight at the end of the load).
    rest = load.turn()
    if rest.requests and samples:
        samples[-1].tally.add(rest)
    elif rest.requests:
        samples.append(Sample(seconds, rss_mib(gateway), float("nan"), rest))
    return samples


def growth_per_hour(samples: list[Sample]) -> float:
    """The least-squares slope of RSS over time, in MiB per hour (nan with fewer than 2 samples)."""
    if len(samples) < 2:
        return float("nan")
    ts = [s.t for s in samples]
    rs = [s.rss_mib for s in samples]
    mt, mr = sum(ts) / len(ts), sum(rs) / len(rs)
    var = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (r - mr) for t, r in zip(ts, rs, strict=True)) / var * 3600 if var else float("nan")


def ledger_rows(database: Path) -> int:
    try:
        with sqlite3.connect(database) as db:
            return int(db.execute("SELECT count(*) FROM qg_usage").fetchone()[0])
    except sqlite3.Error:
        return -1


def log_lines(log: Path, levels: tuple[str, ...]) -> list[str]:
    """The gateway's log lines at ``levels`` (its JSON lines, uvicorn's plain ones, tracebacks)."""
    marks = [f'"level":"{level}"' for level in levels] + [level.upper() + ":" for level in levels]
    if "error" in levels:
        marks.append("Traceback")
    return [line for line in log.read_text(errors="replace").splitlines() if any(mark in line for mark in marks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30, help="how long the load runs (default 30)")
    parser.add_argument("--interval", type=float, default=60, help="seconds between samples (default 60)")
    parser.add_argument("--rate", type=float, default=300, help="requests/s offered, all kinds together (default 300)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="minutes before RSS is taken as settled (default: 5, or a quarter of a shorter run); "
        "the growth per hour is measured from the first sample at or after it",
    )
    parser.add_argument(
        "--redis", help="redis://HOST:PORT/DB for limits, breakers and the ledger stream (a database of its own)"
    )
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (above 1 needs --redis)")
    parser.add_argument(
        "--upstream-ms", type=float, default=0.0, help="the mock's latency before each answer (default 0)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the mix's draws")
    parser.add_argument(
        "--out", type=Path, help="JSON lines of the samples and the summary (default: in the work directory)"
    )
    args = parser.parse_args()
    if args.workers > 1 and not args.redis:
        parser.error("--workers above 1 needs --redis")
    warmup_s = (args.warmup if args.warmup is not None else min(5.0, args.minutes / 4)) * 60

    work = Path(tempfile.mkdtemp(prefix="qg-soak-"))
    out_path = args.out or work / "soak.jsonl"
    mock_port, port = free_port(), free_port()
    mock_args = [
        "--port",
        str(mock_port),
        "--stream-chunk-delay-ms",
        str(STREAM_CHUNK_MS),
        "--latency-ms",
        str(args.upstream_ms),
    ]
    deployments = f"[{{provider: openai-compatible, base_url: 'http://127.0.0.1:{mock_port}/v1'}}]"
    database = work / "soak.db"
    config = work / "soak.yaml"
    config.write_text(
        f"database: sqlite:///{database}\n"
        + (f"redis: {args.redis}\n" if args.redis else "")
        + "tiers:\n"
        + "".join(f"  {name}: {limits}\n" for name, limits in TIERS.items())
        + "models:\n"
        + "".join(
            f"  - {{name: {m}, deployments: {deployments}}}\n" for m in (CHAT_MODEL, COMPLETION_MODEL, EMBEDDING_MODEL)
        )
    )
    keys = {tier: create_key(config, f"soak-{tier}", tier) for tier in TIERS}
    log = work / "gateway.log"
    procs: list[subprocess.Popen[bytes]] = []
    samples: list[Sample] = []
    rss_start = rss_end = cpu_total = float("nan")
    elapsed = 0.0
    with log.open("wb") as log_file, out_path.open("w") as out:
        try:
            procs.append(subprocess.Popen([*QG, "mock-upstream", *mock_args], stderr=subprocess.DEVNULL))
            wait_ready(f"http://127.0.0.1:{mock_port}/v1/models")
            gateway = subprocess.Popen(
                [*QG, "serve", "-c", str(config), "--port", str(port), "--workers", str(args.workers)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            procs.append(gateway)
            base = f"http://127.0.0.1:{port}"
            wait_ready(base + "/ready")
            time.sleep(1.0)  # RSS at start: serving, idle
            rss_start = rss_mib(gateway.pid)
            print(
                f"soak: {args.minutes:g} min at {args.rate:g} req/s, samples every {args.interval:g} s, warm-up "
                f"{warmup_s / 60:g} min; gateway pid {gateway.pid} ({args.workers} worker(s), "
                f"{'Redis ' + args.redis if args.redis else 'no Redis'}), work directory {work}",
                flush=True,
            )
            print(f"[     0 s] RSS {rss_start:6.1f} MiB (idle)", flush=True)
            started = time.monotonic()
            samples = asyncio.run(soak(args, base, keys, gateway.pid, out))
            elapsed = time.monotonic() - started
            rss_end = rss_mib(gateway.pid)
            cpu_total = cpu_seconds(gateway.pid)
        finally:
            for proc in reversed(procs):
                proc.terminate()  # the gateway stops gracefully and writes the ledger out
            for proc in reversed(procs):
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        summary = summarise(args, samples, rss_start, rss_end, warmup_s, elapsed, cpu_total)
        summary["ledger_rows"] = ledger_rows(database)
        summary["gateway_exit"] = gateway.returncode
        summary["gateway_error_lines"] = log_lines(log, ("error", "critical"))
        summary["gateway_warnings"] = len(log_lines(log, ("warning",)))
        out.write(json.dumps({"summary": summary}) + "\n")
    report(args, summary, warmup_s, out_path)
    if summary["unexpected"] or summary["gateway_error_lines"]:
        sys.exit(1)


def summarise(
    args: argparse.Namespace,
    samples: list[Sample],
    rss_start: float,
    rss_end: float,
    warmup_s: float,
    elapsed: float,
    cpu_total: float,
) -> dict[str, Any]:
    total, warming, warm = Tally(), Tally(), Tally()
    settled = [s for s in samples if s.t >= warmup_s - 1e-6]
    for sample in samples:
        total.add(sample.tally)
        # The latency of the run is read from the intervals that began after warm-up: the first
        # requests wait for what a gateway loads once (tokenizers, connections), which says
        # nothing about the hours after.
        (warm if sample.t - args.interval >= warmup_s - 1e-6 else warming).add(sample.tally)
    quantiles = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    return {
        "minutes": args.minutes,
        "rate": args.rate,
        "redis": bool(args.redis),
        "workers": args.workers,
        "requests": total.requests,
        "outcomes": dict(total.outcomes),
        "unexpected": dict(total.unexpected),
        "rss_start_mib": rss_start,
        "rss_warm_mib": settled[0].rss_mib if settled else float("nan"),
        "warm_at_s": settled[0].t if settled else float("nan"),
        "rss_end_mib": rss_end,
        "rss_max_mib": max([s.rss_mib for s in samples] + [rss_start, rss_end]),
        "growth_mib_per_hour": growth_per_hour(settled),
        "plain_ms": {q: pct(warm.plain, p) for q, p in quantiles},
        "stream_ms": {q: pct(warm.streams, p) for q, p in quantiles},
        "warmup_plain_ms": {q: pct(warming.plain, p) for q, p in quantiles},
        "warmup_stream_ms": {q: pct(warming.streams, p) for q, p in quantiles},
        "cpu_percent": cpu_total / elapsed * 100,
        "samples": [s.to_json() for s in samples],
    }


def report(args: argparse.Namespace, s: dict[str, Any], warmup_s: float, out_path: Path) -> None:
    sent = s["requests"]
    outcomes = Counter(s["outcomes"])
    unexpected = sum(s["unexpected"].values())
    plain, streams = s["plain_ms"], s["stream_ms"]
    mix = ", ".join(f"{k.name} {k.share:g} %" for k in MIX)
    setup = f"{args.workers} worker(s), SQLite ledger" + (
        ", Redis limits and ledger stream" if s["redis"] else ", in-process limits"
    )
    rows_note = f"{s['ledger_rows']:,} of {sent:,} requests" + (
        "" if s["ledger_rows"] == sent else f" ({sent - s['ledger_rows']:,} not in SQLite)"
    )
    lines = [
        "| soak | |",
        "|---|---|",
        f"| load | {args.minutes:g} min open loop at {args.rate:g} req/s on {os.cpu_count()} cores shared with the mock and the load ({mix}) |",
        f"| gateway | {setup} |",
        f"| requests | {sent:,}: " + ", ".join(f"{name} x{count:,}" for name, count in sorted(outcomes.items())) + " |",
        f"| unexpected outcomes | {unexpected}"
        + (": " + "; ".join(f"{k} x{v}" for k, v in s["unexpected"].items()) if unexpected else "")
        + " |",
        f"| RSS at start / after warm-up ({s['warm_at_s'] / 60:.1f} min) / end | {s['rss_start_mib']:.1f} / {s['rss_warm_mib']:.1f} / {s['rss_end_mib']:.1f} MiB (max {s['rss_max_mib']:.1f}) |",
        f"| RSS growth after warm-up | {s['growth_mib_per_hour']:+.1f} MiB/h (least-squares over {len([x for x in s['samples'] if x['t_s'] >= warmup_s - 0.1])} samples) |",
        f"| latency after warm-up, non-streamed p50 / p90 / p99 / max | {' / '.join(_ms(plain[q], 2) for q in ('p50', 'p90', 'p99', 'max'))} ms |",
        f"| latency after warm-up, whole streams p50 / p90 / p99 / max | {' / '.join(_ms(streams[q], 1) for q in ('p50', 'p90', 'p99', 'max'))} ms (the mock paces chunks {STREAM_CHUNK_MS:g} ms apart) |",
        f"| latency in warm-up, non-streamed p99 / max, streams p99 / max | {_ms(s['warmup_plain_ms']['p99'], 1)} / {_ms(s['warmup_plain_ms']['max'], 1)}, {_ms(s['warmup_stream_ms']['p99'], 1)} / {_ms(s['warmup_stream_ms']['max'], 1)} ms |",
        f"| gateway CPU | {s['cpu_percent']:.0f} % of one core |",
        f"| ledger rows | {rows_note} |",
        f"| gateway log | {len(s['gateway_error_lines'])} errors, {s['gateway_warnings']} warnings; exit status {s['gateway_exit']} |",
    ]
    print("\nsummary\n")
    print("\n".join(lines))
    for line in s["gateway_error_lines"][:20]:
        print("gateway log:", line)
    print(f"\nsamples and summary: {out_path}")


if __name__ == "__main__":
    main()
