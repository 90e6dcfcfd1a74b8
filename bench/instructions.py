"""CPU instructions per proxied request, counted by valgrind: figures that do not move with the host.

    .venv/bin/python bench/instructions.py [--targets bare,bare-granian,qg-none,qg-memory,qg-redis]
                                           [--requests 2000] [--concurrency 64]

bench/run.py times requests on a shared machine, where one run can differ from the next by a
third. This counts instead: each target (the bare proxy on uvicorn and on granian, quotagate
with no limits, in-process limits, Redis limits; the same configurations as bench/run.py) runs
under `valgrind --tool=callgrind` with counting off; after a warm-up of 300 requests counting is
switched on, the requests are sent (chat completions against the 0 ms mock, `--concurrency` at a
time, from this process, which valgrind does not count), counting is dumped, and the target's
instructions (all its processes) are divided by the requests. Repeated runs of the same code
agree to within about 1 %, so it compares two versions of the code (or two servers) in one
number. Needs valgrind (`apt-get install valgrind`); a target runs 30-50x slower under it, so
each takes about a minute.

A quotagate target with `-tracing` at its end (`qg-memory-tracing`) is the same with OpenTelemetry
tracing on (the `otel` extra; `--sample-ratio` sets its sample_ratio), exporting the sampled
requests' spans to a collector that this process runs (it reads each export and answers it, as a
collector would, without decoding it): the count includes the SDK's export thread, which encodes
the spans and posts them. Before counting and before the dump, the bench waits out the batch's
export delay, so that what is counted is the counted requests' spans, all of them exported.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
from _common import free_port
from run import (
    BARE,
    CHAT,
    QG,
    bare_command,
    bare_name,
    quotagate_config,
    quotagate_label,
    quotagate_variant,
    wait_serving,
)

WARM_UP = 300
# Under valgrind the gateway runs 30-50x slower: its calls to Redis would overrun the limit
# store's 250 ms deadline and be refused (503), so the deadline is raised.
SLOW_PROCESS = "limiter: {timeout_ms: 60000}\n"
# Longer than the span processor's 5 s between exports, under valgrind: the spans of the requests
# sent before it are exported by its end.
EXPORT_WAIT = 8.0


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that takes each export whole and answers it (an empty
    ExportTraceServiceResponse is zero bytes of protobuf)."""

    exports = 0
    received = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Collector.exports += 1
        _Collector.received += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


async def send(url: str, key: str | None, count: int, concurrency: int) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    left = count
    failures: list[int] = []
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, json=CHAT, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(response.status)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if failures:
        raise RuntimeError(f"{len(failures)} of {count} requests failed (statuses {sorted(set(failures))})")


def dumped_instructions(work: Path, name: str, timeout: float = 120.0) -> int:
    """The instructions of callgrind's first dump, summed over the target's processes (granian
    serves from a worker process of its own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        totals = []
        for dump in work.glob(f"callgrind.{name}.*.1"):
            match = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.MULTILINE)
            totals.append(int(match.group(1)) if match else None)
        if totals and None not in totals:
            return sum(t for t in totals if t is not None)
    raise RuntimeError(f"callgrind wrote no complete dump for {name} in {work}")


def measure(
    name: str, command: list[str], url: str, key: str | None, work: Path, args: argparse.Namespace, wait: float = 0.0
) -> float:
    """Instructions per request of the target ``command``; ``wait``: seconds to wait after the
    warm-up and after the counted requests (for what the target does once they are answered)."""
    out = work / f"callgrind.{name}.%p"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes"]
    proc = subprocess.Popen(
        [*valgrind, f"--callgrind-out-file={out}", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_serving(url, key, timeout=600)
        asyncio.run(send(url, key, WARM_UP, args.concurrency))
        time.sleep(wait)
        # Without a pid: every process running under callgrind, the target's children included.
        subprocess.run(["callgrind_control", "-i", "on"], check=True, capture_output=True)
        asyncio.run(send(url, key, args.requests, args.concurrency))
        time.sleep(wait)
        subprocess.run(["callgrind_control", "-d"], check=True, capture_output=True)
        return dumped_instructions(work, name) / args.requests
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--targets", default="bare,qg-none,qg-memory,qg-redis", help="comma-separated (qg-memory-tracing: tracing on)"
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests counted per target")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight at once")
    parser.add_argument(
        "--extra-config",
        default="",
        help="YAML lines added to each quotagate configuration, to count what a setting costs "
        "(e.g. 'ledger: {enabled: false}')",
    )
    parser.add_argument("--sample-ratio", type=float, default=1.0, help="tracing.sample_ratio of the -tracing targets")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind is needed (apt-get install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="qg-instructions-"))
    mock0, mock50 = free_port(), free_port()
    mocks = [
        subprocess.Popen([*QG, "mock-upstream", "--port", str(port)], stderr=subprocess.DEVNULL)
        for port in (mock0, mock50)
    ]
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    rows: list[tuple[str, float]] = []
    try:
        wait_serving(f"http://127.0.0.1:{mock0}/v1/chat/completions", None)
        for name in args.targets.split(","):
            port = free_port()
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            variant, traced = name[3:].removesuffix("-tracing"), name.endswith("-tracing")
            if name in BARE:
                label, command, key = bare_name(*BARE[name]), bare_command(mock0, port, *BARE[name]), None
            elif name.startswith("qg-") and quotagate_variant(variant)[1] == 1:
                extra = SLOW_PROCESS + args.extra_config + "\n"
                if traced:
                    endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
                    extra += f"tracing: {{enabled: true, endpoint: '{endpoint}', sample_ratio: {args.sample_ratio}}}\n"
                config, key = quotagate_config(variant, mock0, mock50, work, extra)
                label = quotagate_label(variant)
                if traced:
                    label += " with tracing" + (
                        f" (sample_ratio {args.sample_ratio:g})" if args.sample_ratio != 1 else ""
                    )
                command = [*QG, "serve", "-c", str(config), "--port", str(port)]
            else:
                sys.exit(
                    f"unknown or unsupported target {name!r} (bare, bare-granian, qg-none, qg-memory, qg-redis, "
                    "and qg-...-tracing)"
                )
            print(f"counting {name} ...", flush=True)
            exported = _Collector.received
            rows.append((label, measure(name, command, url, key, work, args, EXPORT_WAIT if traced else 0.0)))
            if traced:
                print(f"  the collector received {_Collector.received - exported:,} bytes of spans", flush=True)
    finally:
        collector.shutdown()
        for mock in mocks:
            mock.terminate()
    print(f"\n{args.requests} chat completions, {args.concurrency} at a time, after {WARM_UP} to warm up\n")
    print("| target | instructions per request |")
    print("|---|---|")
    for label, per_request in rows:
        print(f"| {label} | {per_request:,.0f} |")


if __name__ == "__main__":
    main()
