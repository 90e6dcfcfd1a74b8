"""Model tiering (issue 21): what classifying a request adds to it, and a downgrade under load.

    .venv/bin/python bench/routing.py latency   [--rounds 6] [--seconds 2]
    .venv/bin/python bench/routing.py downgrade [--seconds 30] [--connections 16] [--upstream-ms 500]

wrk must be on the PATH (Debian's package wrk). Results of a run are in bench/NOTES.md, "Model
tiering (issue 21)".

latency: added latency at one connection, bracketed as bench/cache.py's latency part is (each
  round, every target in a fresh random order, each wrk run between two runs against the mock
  directly; a target's added p50 is its p50 minus the mean of the mock's just before and after,
  its figure the median over the rounds). One gateway process (`quotagate serve`, SQLite ledger
  on, no limits) serves every target; the question is a routine one of 42 characters:
    plain           the class's model asked directly (no routed model)
    rules           a routed model whose rules decide: the strongest class's keywords do not match,
                    the cheapest class's max_prompt_tokens does (the prompt's tokens are counted)
    semantic        a routed model with examples only (the 72 of tests/data/route_prompts): every
                    request embedded by the shipped model and compared with the examples
    semantic+cache  the same, on a tier with a semantic cache rule whose partition holds entries
                    (an exact miss, then a semantic lookup): the cache uses the classifier's vector,
                    so the question is embedded once, not twice
  Targets of issue 21: rules < 0.1 ms and semantic <= 5 ms p50 over plain; semantic+cache no more
  than semantic.

downgrade: the issue's tenant at its TPM limit for the strong model under load. Two mock upstreams,
  one per model, each answering in --upstream-ms with 100 tokens and counting the tokens it served;
  a key on a tier with `on_limit: {downgrade: gemini-2.5-flash}` and key+model limits of 20,000
  tokens per minute on the strong model (claude-sonnet-4.5) and 200,000 on the cheap one; wrk at
  --connections asks the strong model for --seconds (max_tokens 100). Reports the answers (none
  may be refused), what each mock served, and the strong model's tokens against the most its limit
  admits in that time (a GCRA: its 20,000 burst, plus 20,000 a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import HERE, free_port
from run import QG, create_key, wait_serving

from cache import MASTER, MASTER_ENV, Mock, machine, wrk

PROMPTS = HERE.parent / "tests" / "data" / "route_prompts" / "prompts.jsonl"
QUESTION = "How do I change the address on my order?"
TARGETS = ("plain", "rules", "semantic", "semantic+cache")


def examples() -> dict[str, list[str]]:
    by_class: dict[str, list[str]] = {"simple": [], "routine": [], "complex": []}
    for line in PROMPTS.read_text().splitlines():
        prompt = json.loads(line)
        if prompt["split"] == "example":
            by_class[prompt["label"]].append(prompt["prompt"])
    return by_class


def latency_config(work: Path, mock: int) -> Path:
    served = "".join(
        f"  - {{name: {name}, deployments: [{{provider: openai-compatible, base_url: 'http://127.0.0.1:{mock}/v1'}}]}}\n"
        for name in ("m-simple", "m-routine", "m-complex")
    )
    learned = examples()
    semantic_classes = "".join(
        f"        - {{name: {name}, model: m-{name}, examples: {json.dumps(texts, ensure_ascii=False)}}}\n"
        for name, texts in learned.items()
    )
    config = work / "routing.yaml"
    config.write_text(
        f"database: sqlite:///{work}/routing.db\n"
        f"master_key: env:{MASTER_ENV}\n"
        "tiers: {bench: {}, cached: {cache: {mode: semantic}}}\n"
        "models:\n"
        f"{served}"
        "  - name: auto-rules\n"
        "    route:\n"
        "      classes:\n"
        "        - {name: simple, model: m-simple, rules: {max_prompt_tokens: 300}}\n"
        "        - {name: routine, model: m-routine}\n"
        "        - {name: complex, model: m-complex, rules: {keywords: [why, 为什么]}}\n"
        "  - name: auto-semantic\n"
        "    route:\n"
        "      default: routine\n"
        "      classes:\n"
        f"{semantic_classes}"
    )
    return config


def serve(config: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """`quotagate serve -c CONFIG` on a free port, as an operator runs it: its port and process."""
    port = free_port()
    process = subprocess.Popen(
        [*QG, "serve", "-c", str(config), "--port", str(port)],
        stderr=subprocess.DEVNULL,
        env={**os.environ, MASTER_ENV: MASTER},
    )
    return port, process


def ask(port: int, key: str, model: str, question: str, cache_control: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **({"Cache-Control": cache_control} if cache_control else {})}
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 16}
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers, timeout=30)
    answer.raise_for_status()
    return answer


def latency(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="qg-routing-latency-"))
    before = machine("before")
    mock = Mock()
    config = latency_config(work, mock.port)
    keys = {tier: create_key(config, "bench", tier) for tier in ("bench", "cached")}
    port, process = serve(config)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    envs = {
        "plain": {"KEY": keys["bench"], "MODEL": "m-routine"},
        "rules": {"KEY": keys["bench"], "MODEL": "auto-rules"},
        "semantic": {"KEY": keys["bench"], "MODEL": "auto-semantic"},
        "semantic+cache": {"KEY": keys["cached"], "MODEL": "auto-semantic", "CACHE_CONTROL": "no-store"},
    }
    try:
        wait_serving(url, keys["bench"], model="m-routine")
        # The cached tier's partition (auto-semantic, no system prompt) gets entries, so that each
        # measured request is looked up semantically after its exact miss.
        for text in ("Do you ship to Norway?", "What is your phone number?", "Can I pay with PayPal?"):
            ask(port, keys["cached"], "auto-semantic", text)
        time.sleep(0.5)  # the answers are kept in the background
        for name, env in envs.items():
            said = ask(port, env["KEY"], env["MODEL"], QUESTION, env.get("CACHE_CONTROL"))
            print(
                f"{name}: x-quotagate-route: {said.headers.get('x-quotagate-route')}, "
                f"x-quotagate-cache: {said.headers.get('x-quotagate-cache')}",
                flush=True,
            )
            wrk(url, 1, 1, {**env, "QUESTION": QUESTION})  # warm-up
        p50s: dict[str, list[float]] = {name: [] for name in TARGETS}
        added: dict[str, list[float]] = {name: [] for name in TARGETS}
        mock_p50s: list[float] = []
        for number in range(1, args.rounds + 1):
            order = list(TARGETS)
            random.shuffle(order)
            previous = wrk(mock.url, 1, args.seconds)["p50"]
            mock_p50s.append(previous)
            for name in order:
                mine = wrk(url, 1, args.seconds, {**envs[name], "QUESTION": QUESTION})
                if mine["errors"]:
                    sys.exit(f"{name}: {mine['errors']} answers were not 200")
                after = wrk(mock.url, 1, args.seconds)["p50"]
                mock_p50s.append(after)
                p50s[name].append(mine["p50"])
                added[name].append(mine["p50"] - (previous + after) / 2)
                previous = after
            print(f"round {number}: " + ", ".join(f"{n} {added[n][-1]:+.3f} ms" for n in TARGETS), flush=True)
    finally:
        process.terminate()
        process.wait(30)
        mock.stop()
    lines = [
        f"`.venv/bin/python bench/routing.py {' '.join(sys.argv[1:])}`; {before}; {machine('after')}.",
        "",
        "| target | p50 @1 ms (median) | added p50 ms (median of rounds, min to max) | over plain ms (median) |",
        "|---|---:|---:|---:|",
        f"| mock directly | {statistics.median(mock_p50s):.3f} | — | — |",
    ]
    for name in TARGETS:
        over = [mine - plain for mine, plain in zip(added[name], added["plain"], strict=True)]
        lines.append(
            f"| {name} | {statistics.median(p50s[name]):.3f} | {statistics.median(added[name]):+.3f} "
            f"({min(added[name]):+.3f} to {max(added[name]):+.3f}) | "
            + ("—" if name == "plain" else f"{statistics.median(over):+.3f}")
            + " |"
        )
    twice = [a - b for a, b in zip(added["semantic+cache"], added["semantic"], strict=True)]
    lines.append("")
    lines.append(
        f"- semantic+cache over semantic: {statistics.median(twice):+.3f} ms p50 (median of the rounds' differences, "
        f"{min(twice):+.3f} to {max(twice):+.3f}; a second embedding would add about the semantic row's own cost)"
    )
    print("\n" + "\n".join(lines))


def downgrade_config(work: Path, strong: int, cheap: int) -> Path:
    config = work / "downgrade.yaml"
    config.write_text(
        f"database: sqlite:///{work}/downgrade.db\n"
        f"master_key: env:{MASTER_ENV}\n"
        "tiers: {bench: {on_limit: {downgrade: gemini-2.5-flash}}}\n"
        "limits:\n"
        "  - {scope: key+model, unit: tokens, amount: 20000, per: minute, match: {model: [claude-sonnet-4.5]}}\n"
        "  - {scope: key+model, unit: tokens, amount: 200000, per: minute, match: {model: [gemini-2.5-flash]}}\n"
        "models:\n"
        "  - {name: claude-sonnet-4.5, deployments: [{provider: openai-compatible, "
        f"base_url: 'http://127.0.0.1:{strong}/v1'}}]}}\n"
        "  - {name: gemini-2.5-flash, deployments: [{provider: openai-compatible, "
        f"base_url: 'http://127.0.0.1:{cheap}/v1'}}]}}\n"
    )
    return config


class SlowMock(Mock):
    """The mock upstream answering in ``latency_ms`` with ``tokens`` completion tokens."""

    def __init__(self, latency_ms: float, tokens: int) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                *QG,
                "mock-upstream",
                "--port",
                str(self.port),
                "--latency-ms",
                str(latency_ms),
                "--completion-tokens",
                str(tokens),
            ],
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        wait_serving(self.url, None)


def served(port: int) -> tuple[int, int]:
    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
    return int(health["requests_served"]), int(health["tokens_served"])


def downgrade(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="qg-routing-downgrade-"))
    before = machine("before")
    strong, cheap = SlowMock(args.upstream_ms, 100), SlowMock(args.upstream_ms, 100)
    config = downgrade_config(work, strong.port, cheap.port)
    key = create_key(config, "bench", "bench")
    port, process = serve(config)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        wait_serving(url, key, model="gemini-2.5-flash")
        start = {name: served(mock.port) for name, mock in (("strong", strong), ("cheap", cheap))}
        began = time.monotonic()
        run = wrk(
            url,
            args.connections,
            args.seconds,
            {"KEY": key, "MODEL": "claude-sonnet-4.5", "MAX_TOKENS": "100", "QUESTION": QUESTION},
        )
        elapsed = time.monotonic() - began
        end = {name: served(mock.port) for name, mock in (("strong", strong), ("cheap", cheap))}
    finally:
        process.terminate()
        process.wait(30)
        strong.stop()
        cheap.stop()
    got = {name: (end[name][0] - start[name][0], end[name][1] - start[name][1]) for name in end}
    # From the first request to the last, the GCRA admits its burst plus the rate over the time.
    most = 20_000 + 20_000 * elapsed / 60
    lines = [
        f"`.venv/bin/python bench/routing.py {' '.join(sys.argv[1:])}`; {before}; {machine('after')}.",
        "",
        f"- answers: {run['requests']} in {elapsed:.1f} s ({run['rps']:.0f}/s), not 200: {run['errors']}"
        f"{', socket errors: ' + run['socket_errors'] if run['socket_errors'] else ''}",
        f"- the strong model's mock: {got['strong'][0]} requests, {got['strong'][1]} tokens; "
        f"the most its limit admits in {elapsed:.1f} s: {most:.0f} tokens ({got['strong'][1] / most:.1%} of it used)",
        f"- the cheap model's mock: {got['cheap'][0]} requests, {got['cheap'][1]} tokens "
        f"(its own limit: 200,000 a minute)",
        f"- p50 {run['p50']:.2f} ms, p99 {run['p99']:.2f} ms at {args.connections} connections",
    ]
    print("\n" + "\n".join(lines))
    if run["errors"] or got["strong"][1] > most or got["strong"][0] + got["cheap"][0] < run["requests"]:
        sys.exit("a request was refused, or the strong model served more than its limit admits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    part = parts.add_parser("latency")
    part.add_argument("--rounds", type=int, default=6)
    part.add_argument("--seconds", type=float, default=2.0)
    part = parts.add_parser("downgrade")
    part.add_argument("--seconds", type=float, default=30.0)
    part.add_argument("--connections", type=int, default=16)
    part.add_argument("--upstream-ms", type=float, default=500.0)
    args = parser.parse_args()
    {"latency": latency, "downgrade": downgrade}[args.part](args)


if __name__ == "__main__":
    main()
