"""Requests/s, latency and gateway CPU per request: through quotagate versus the mock directly.

    .venv/bin/python bench/proxy_overhead.py [--duration 10] [--connections 64] [--limits none,memory,redis]

Starts `quotagate mock-upstream` and, for each limits variant, `quotagate serve` as separate
processes, drives them with wrk (Debian's `wrk` package) and reads the gateway's CPU time from
/proc. Variants: none (no limits), memory (a tier with RPM, TPM and TPD in the in-process
store: every request is counted, its tokens estimated and settled) and redis (the same limits
in Redis). Everything shares this machine's cores, load generator included: compare rows of
one run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import cpu_seconds, free_port, wait_ready, wrk

QUOTAGATE = [sys.executable, "-m", "quotagate"]


def _ok(result: dict[str, float]) -> dict[str, float]:
    # This quick comparison only makes sense when every request succeeded.
    if result["errors"]:
        raise RuntimeError(f"{result['errors']:.0f} requests failed")
    return result


def _row(conns: int, target: str, r: dict[str, float], cpu: str) -> str:
    latency = f"{r['p50']:>8.2f} {r['p90']:>8.2f} {r['p99']:>8.2f}"
    return f"{conns:>5} {target:<16} {r['rps']:>9.0f} {latency} {cpu:>14}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--limits", default="none,memory,redis", help="variants to run, comma-separated")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="qg-bench-"))
    mock_port = free_port()
    tiers = {
        "none": "{bench: {}}",
        "memory": "{bench: {rpm: 1000000000, tpm: 1000000000000, tpd: 1000000000000}}",
        "redis": "{bench: {rpm: 1000000000, tpm: 1000000000000, tpd: 1000000000000}}",
    }
    procs = []
    try:
        procs.append(
            subprocess.Popen([*QUOTAGATE, "mock-upstream", "--port", str(mock_port)], stderr=subprocess.DEVNULL)
        )
        wait_ready(f"http://127.0.0.1:{mock_port}/v1/models")
        mock_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
        direct = {conns: _ok(wrk(mock_url, conns, args.duration, None)) for conns in (1, args.connections)}
        rows = []
        for variant in args.limits.split(","):
            config = work / f"{variant}.yaml"
            config.write_text(
                f"database: sqlite:///{work}/bench.db\n"
                + ("redis: redis://127.0.0.1:6379/14\n" if variant == "redis" else "")
                + f"tiers: {tiers[variant]}\n"
                + "models:\n  - name: gpt-4o-mini\n"
                + f"    deployments: [{{provider: openai-compatible, base_url: 'http://127.0.0.1:{mock_port}/v1'}}]\n"
            )
            key = (
                subprocess.run(
                    [*QUOTAGATE, "keys", "create", "--user", "bench", "--tier", "bench", "-c", str(config)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            gw_port = free_port()
            gateway = subprocess.Popen([*QUOTAGATE, "serve", "-c", str(config), "--port", str(gw_port)])
            procs.append(gateway)
            wait_ready(f"http://127.0.0.1:{gw_port}/health")
            gw_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            wrk(gw_url, 8, 2, key)  # warm-up: connections, caches, tokenizer
            for conns in (1, args.connections):
                before = cpu_seconds(gateway.pid)
                through = _ok(wrk(gw_url, conns, args.duration, key))
                cpu_ms = (cpu_seconds(gateway.pid) - before) * 1000 / through["requests"]
                rows.append((conns, variant, through, cpu_ms))
            gateway.terminate()
            gateway.wait(10)

        header = ("conns", "target", "req/s", "p50 ms", "p90 ms", "p99 ms", "gw CPU ms/req")
        print("\n{:>5} {:<16} {:>9} {:>8} {:>8} {:>8} {:>14}".format(*header))
        for conns in (1, args.connections):
            print(_row(conns, "mock directly", direct[conns], ""))
            for row_conns, variant, through, cpu_ms in rows:
                if row_conns == conns:
                    print(_row(conns, f"limits: {variant}", through, f"{cpu_ms:.3f}"))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
