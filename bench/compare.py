"""Targets side by side in interleaved rounds: the ratios that one run of each cannot give here.

    .venv/bin/python bench/compare.py [--targets bare,qg-none,qg-memory,qg-redis] [--rounds 10]
                                      [--seconds 3] [--connections 64]

This host's speed moves by a third within minutes (bench/run.py's calibration loop has read
75 to 144 ms in one afternoon), so two targets measured one after the other, a minute apart, can
differ by more than what tells them apart. Here every target runs at once, idle but for its
turn, and each round gives every target a short wrk run (64 connections, non-streaming chat
completions against the 0 ms mock) in a fresh random order, with a run of the bare proxy before
the first and after each one. A target's ratio to the bare proxy in a round is its req/s over the
mean of the two bare runs around it, so a drift of the host's speed within the round weighs on
both sides alike; its figures are the medians over the rounds (the bare proxy's over all its runs).

Targets: bare (the bare proxy on uvicorn + aiohttp, the reference), the other bare proxies of
bench/run.py (bare-own: on quotagate's own upstream client) and qg-none, qg-memory, qg-redis (as
in bench/run.py; add +noledger, e.g. qg-none+noledger, to run without the usage ledger).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from _common import cpu_seconds, free_port, wrk
from run import BARE, QG, bare_command, bare_name, quotagate_config, quotagate_label, wait_serving


@dataclass
class Contender:
    name: str
    label: str
    url: str
    key: str | None
    process: subprocess.Popen[bytes]
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: int = 0


@dataclass
class Comparison:
    """Per target: median req/s, median CPU µs per request, and the median ratio of its req/s to
    the bare proxy's within a round (None for the bare proxy itself, or without one)."""

    label: str
    rps: float
    cpu_us: float
    share_of_bare: float | None
    share_range: tuple[float, float] | None
    errors: int
    # Its CPU per request over the bare proxy's, bracketed as the req/s share is (median of rounds).
    cpu_vs_bare: float | None = None


def start(name: str, mock: int, work: Path) -> Contender:
    port = free_port()
    key: str | None = None
    if name in BARE:
        command, label = bare_command(mock, port, *BARE[name]), bare_name(*BARE[name])
    elif name.startswith("qg-"):
        variant, _, option = name[3:].partition("+")
        if option not in ("", "noledger"):
            sys.exit(f"unknown option {option!r} in {name!r}")
        extra = "ledger: {enabled: false}\n" if option == "noledger" else ""
        config, key = quotagate_config(variant, mock, mock, work, extra)
        command = [*QG, "serve", "-c", str(config), "--port", str(port)]
        label = quotagate_label(variant) + (", no ledger" if option else "")
    else:
        sys.exit(f"unknown target {name!r} (bare, bare-own, ..., qg-none, qg-memory, qg-redis, with +noledger)")
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    wait_serving(url, key)
    return Contender(name, label, url, key, process)


def compare(
    names: list[str], mock: int, rounds: int = 10, seconds: int = 3, connections: int = 64, verbose: bool = True
) -> list[Comparison]:
    """Start ``names`` against the mock on port ``mock``, run the rounds, stop them."""
    work = Path(tempfile.mkdtemp(prefix="qg-compare-"))
    contenders: list[Contender] = []
    try:
        for name in names:
            contenders.append(start(name, mock, work))
        for contender in contenders:
            wrk(contender.url, connections, 2, contender.key)  # warm-up
        bare = next((c for c in contenders if c.name == "bare"), None)
        # Per target: its req/s over the mean of the bare runs just before and after it, by round.
        shares: dict[str, list[float]] = {c.name: [] for c in contenders}
        cpu_ratios: dict[str, list[float]] = {c.name: [] for c in contenders}
        for number in range(1, rounds + 1):
            order = [c for c in contenders if c is not bare]
            random.shuffle(order)
            before = _run(bare, connections, seconds) if bare is not None else None
            for contender in order:
                mine = _run(contender, connections, seconds)
                if bare is not None and before is not None:
                    after = _run(bare, connections, seconds)
                    shares[contender.name].append(mine / ((before + after) / 2))
                    cpu_ratios[contender.name].append(contender.cpu_us[-1] / statistics.mean(bare.cpu_us[-2:]))
                    before = after
            if verbose:
                print(f"round {number}: " + ", ".join(f"{c.name} {c.rps[-1]:,.0f}/s" for c in contenders), flush=True)
    finally:
        for contender in contenders:
            contender.process.terminate()
        for contender in contenders:
            contender.process.wait(15)
    out = []
    for c in contenders:
        share: float | None = None
        spread: tuple[float, float] | None = None
        cpu_ratio: float | None = None
        if shares.get(c.name):
            share, spread = statistics.median(shares[c.name]), (min(shares[c.name]), max(shares[c.name]))
            cpu_ratio = statistics.median(cpu_ratios[c.name])
        out.append(
            Comparison(
                c.label, statistics.median(c.rps), statistics.median(c.cpu_us), share, spread, c.errors, cpu_ratio
            )
        )
    return out


def _run(contender: Contender, connections: int, seconds: int) -> float:
    """One wrk run against ``contender``, recorded; its req/s."""
    before = cpu_seconds(contender.process.pid)
    result = wrk(contender.url, connections, seconds, contender.key)
    used = cpu_seconds(contender.process.pid) - before
    contender.rps.append(result["rps"])
    contender.cpu_us.append(used / max(1, result["requests"]) * 1e6)
    contender.errors += int(result["errors"])
    return float(result["rps"])


def table(results: list[Comparison]) -> str:
    lines = [
        "| target | req/s (median) | CPU µs/request (median) | req/s vs bare proxy (median of rounds, min-max) "
        "| CPU vs bare proxy (median of rounds) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        share = (
            f"{r.share_of_bare:.0%} ({r.share_range[0]:.0%}-{r.share_range[1]:.0%})"
            if r.share_of_bare is not None and r.share_range is not None
            else "—"
        )
        errors = f" ({r.errors} non-2xx)" if r.errors else ""
        cpu = f"{r.cpu_vs_bare:.2f}x" if r.cpu_vs_bare is not None else "—"
        lines.append(f"| {r.label} | {r.rps:,.0f}{errors} | {r.cpu_us:.0f} | {share} | {cpu} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="bare,qg-none,qg-memory,qg-redis", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=3, help="per target per round")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    mock = free_port()
    mock_process = subprocess.Popen([*QG, "mock-upstream", "--port", str(mock)], stderr=subprocess.DEVNULL)
    try:
        wait_serving(f"http://127.0.0.1:{mock}/v1/chat/completions", None)
        results = compare(args.targets.split(","), mock, args.rounds, args.seconds, args.connections)
    finally:
        mock_process.terminate()
    print("\n" + table(results))


if __name__ == "__main__":
    main()
