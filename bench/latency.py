"""Added latency at one connection, each target's run bracketed by two runs of the mock directly.

    .venv/bin/python bench/latency.py [--targets bare,bare-own,qg-none,qg-redis] [--rounds 8]
                                      [--seconds 3]

What a gateway adds at one connection is a fraction of a millisecond, and this host's speed
moves by a third within minutes: the mock measured a minute before a gateway can come out slower
than the gateway in front of it (bench/run.py's table has shown a negative added latency). Here
every target runs at once against one mock; each round gives every target, in a fresh random
order, a wrk run at one connection, with a run against the mock directly before the first and
after each one. A target's added p50 in a round is its p50 minus the mean of the mock's p50s
just before and after it; its figure is the median over the rounds, with the range.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _common import free_port, wrk
from compare import start
from run import QG, wait_serving


@dataclass
class Added:
    label: str
    p50_ms: float  # the target's own p50, median over the rounds
    added_ms: float  # median over the rounds of its p50 minus the mock's around it
    added_range: tuple[float, float]
    mock_p50_ms: float  # the mock's p50, median over all its runs


def added_latency(names: list[str], mock: int, rounds: int = 8, seconds: int = 3, verbose: bool = True) -> list[Added]:
    """Start ``names`` against the mock on port ``mock``, run the rounds, stop them."""
    work = Path(tempfile.mkdtemp(prefix="qg-latency-"))
    mock_url = f"http://127.0.0.1:{mock}/v1/chat/completions"
    contenders = []
    p50s: dict[str, list[float]] = {}
    added: dict[str, list[float]] = {}
    mock_p50s: list[float] = []
    try:
        for name in names:
            contenders.append(start(name, mock, work))
        for contender in contenders:
            wrk(contender.url, 1, 1, contender.key)  # warm-up
            p50s[contender.name], added[contender.name] = [], []
        for number in range(1, rounds + 1):
            order = list(contenders)
            random.shuffle(order)
            before = wrk(mock_url, 1, seconds, None)["p50"]
            mock_p50s.append(before)
            for contender in order:
                mine = wrk(contender.url, 1, seconds, contender.key)["p50"]
                after = wrk(mock_url, 1, seconds, None)["p50"]
                mock_p50s.append(after)
                p50s[contender.name].append(mine)
                added[contender.name].append(mine - (before + after) / 2)
                before = after
            if verbose:
                print(
                    f"round {number}: " + ", ".join(f"{c.name} +{added[c.name][-1]:.3f} ms" for c in contenders),
                    flush=True,
                )
    finally:
        for contender in contenders:
            contender.process.terminate()
        for contender in contenders:
            contender.process.wait(15)
    return [
        Added(
            c.label,
            statistics.median(p50s[c.name]),
            statistics.median(added[c.name]),
            (min(added[c.name]), max(added[c.name])),
            statistics.median(mock_p50s),
        )
        for c in contenders
    ]


def table(results: list[Added]) -> str:
    lines = [
        "| target | p50 @1 ms (median) | added p50 @1 ms (median of rounds, min-max) |",
        "|---|---|---|",
    ]
    if results:
        lines.append(f"| mock directly | {results[0].mock_p50_ms:.3f} | — |")
    for r in results:
        lines.append(
            f"| {r.label} | {r.p50_ms:.3f} | {r.added_ms:.3f} ({r.added_range[0]:.3f} to {r.added_range[1]:.3f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="bare,bare-own,qg-none,qg-redis", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3, help="per run")
    args = parser.parse_args()
    mock = free_port()
    mock_process = subprocess.Popen([*QG, "mock-upstream", "--port", str(mock)], stderr=subprocess.DEVNULL)
    try:
        wait_serving(f"http://127.0.0.1:{mock}/v1/chat/completions", None)
        results = added_latency(args.targets.split(","), mock, args.rounds, args.seconds)
    finally:
        mock_process.terminate()
    print("\n" + table(results))


if __name__ == "__main__":
    main()
