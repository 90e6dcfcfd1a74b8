"""API surfaces (issue 22): what translating a stream between OpenAI's chat API and Anthropic's
Messages API costs, against a stream relayed as it came.

    .venv/bin/python bench/surfaces.py [--rounds 16] [--seconds 2] [--cpu-rounds 8] [--cpu-seconds 4]
                                       [--connections 8] [--parts latency,cpu,pieces]

wrk must be on the PATH (Debian's package wrk). Results of a run are in bench/NOTES.md, "API
surfaces: a translated stream against a pass-through one (issue 22)".

One gateway process (`quotagate serve`, SQLite ledger on, no limits) in front of the 0 ms mock
(`quotagate mock-upstream --rate-window 0.1`, which speaks both APIs; see WideMock) serves every
target. Every request is streamed, the same short question with max_tokens 64, so that both of
the mock's APIs answer the same 16 tokens (its default length) in 16 text deltas:

    target               client sends               to a deployment of          the mock is asked
    passthrough          POST /v1/chat/completions  provider: openai            /v1/chat/completions
    translated           POST /v1/chat/completions  provider: anthropic         /v1/messages
    messages-native      POST /v1/messages          provider: anthropic         /v1/messages
    messages-translated  POST /v1/messages          provider: openai            /v1/chat/completions

(translated: the chat request becomes a Messages request, and the Messages event stream becomes
chat.completion.chunk events; messages-translated the other way round.) The gateway's models are
named as the mock's (gpt-4o-mini, claude-sonnet-4-5), so that a target's request, sent to the
mock directly, is the same body.

latency: added latency at one connection, bracketed as bench/routing.py's latency part is: each
  round, every target in a fresh random order, each wrk run between two runs against the mock
  directly with the equivalent direct request (the mock's /v1/messages stream for a target whose
  deployment speaks Anthropic, its /v1/chat/completions stream for one that speaks OpenAI; the
  run after one target is the run before the next when both ask the mock the same way); a
  target's added p50 is its p50 minus the mean of the mock's just before and after, its figure the
  median over the rounds. A stream is complete when its body ends (wrk reads the chunked body to
  its end); the generated wrk scripts also check that every body ends as its API ends a stream
  ([DONE], message_stop) and the run stops if one does not.

cpu: CPU per request: each round, every target in a fresh random order, wrk at --connections for
  --cpu-seconds; the gateway process's user + system CPU time (/proc/PID/stat) before and after,
  over the requests wrk completed. Medians over the rounds, and the median of the rounds'
  differences against passthrough.

pieces: what the difference is made of, without a profiler's distortion: each target's stream
  readers (server/_stream_usage.py, surfaces/) and request translation, as server/_answers.py
  puts them together, timed alone in this process on the mock's own answers (timeit, µs per
  request, the best of 5 repeats). The gateway's other work (keys, routing, the ledger, the HTTP
  client and server) is the same for every target.

The machine's load and the speed of a fixed Python loop are printed before and after; everything
shares this machine's cores, so compare figures of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import HERE, cpu_seconds, cpu_speed_ms, free_port
from run import QG, create_key, wait_serving

from cache import Mock, load_now, parse_wrk

QUESTION = "Say hello in three words."
MAX_TOKENS = 64  # above the mock's default answer of 16 tokens: both APIs answer those 16
CHAT_MODEL = "gpt-4o-mini"
CLAUDE_MODEL = "claude-sonnet-4-5"
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class Target:
    name: str
    path: str  # what the client posts to
    model: str  # the gateway's model: its deployment says which API it speaks
    direct: str  # the mock's equivalent request: "chat" or "messages"
    what: str  # for the table

    @property
    def client(self) -> str:
        return "messages" if self.path == "/v1/messages" else "chat"


TARGETS = (
    Target("passthrough", "/v1/chat/completions", CHAT_MODEL, "chat", "OpenAI in, OpenAI out"),
    Target("translated", "/v1/chat/completions", CLAUDE_MODEL, "messages", "OpenAI in, Anthropic out"),
    Target("messages-native", "/v1/messages", CLAUDE_MODEL, "messages", "Anthropic in, Anthropic out"),
    Target("messages-translated", "/v1/messages", CHAT_MODEL, "chat", "Anthropic in, OpenAI out"),
)
DIRECT_PATH = {"chat": "/v1/chat/completions", "messages": "/v1/messages"}
DIRECT_MODEL = {"chat": CHAT_MODEL, "messages": CLAUDE_MODEL}
END_OF_STREAM = {"chat": "data: [DONE]", "messages": "message_stop"}


def body(model: str) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }


def headers(api: str, key: str | None) -> dict[str, str]:
    """A client's headers: OpenAI's SDKs send a bearer key, Anthropic's an x-api-key and the version."""
    out = {"Content-Type": "application/json"}
    if api == "messages":
        out["anthropic-version"] = ANTHROPIC_VERSION
        if key:
            out["x-api-key"] = key
    elif key:
        out["Authorization"] = f"Bearer {key}"
    return out


def lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_script(path: Path, api: str, model: str, key: str | None) -> Path:
    """A wrk script posting the streamed request in ``api``'s shape, counting the answers whose body
    ends as ``api`` ends a stream (printed by done() as one "streams:" line)."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(json.dumps(body(model)))}"]
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers(api, key).items()]
    lines.append(f"local marker = {lua_string(END_OF_STREAM[api])}")
    lines.append(
        """
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   complete, incomplete, failed = 0, 0, 0
end

function response(status, headers, body)
   if status ~= 200 then
      failed = failed + 1
   elseif string.find(body, marker, math.max(1, #body - 48), true) then
      complete = complete + 1
   else
      incomplete = incomplete + 1
   end
end

function done(summary, latency, requests)
   local total = { complete = 0, incomplete = 0, failed = 0 }
   for _, thread in ipairs(threads) do
      for name, _ in pairs(total) do total[name] = total[name] + (thread:get(name) or 0) end
   end
   io.write(string.format("streams: complete=%d incomplete=%d non-200=%d\\n",
      total.complete, total.incomplete, total.failed))
end
"""
    )
    path.write_text("\n".join(lines))
    return path


@dataclass(frozen=True)
class Load:
    """What wrk is pointed at: a URL and the script that makes its request."""

    url: str
    script: Path


def wrk(load: Load, connections: int, seconds: float) -> dict:
    """One wrk run: cache.py's figures (req/s, requests, p50/p90/p99/max ms), with every stream
    checked complete."""
    args = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    out = subprocess.run([*args, "-s", str(load.script), load.url], capture_output=True, text=True, check=True).stdout
    found = parse_wrk(out)
    streams = re.search(r"streams: complete=(\d+) incomplete=(\d+) non-200=(\d+)", out)
    if streams is None or int(streams.group(2)) or int(streams.group(3)) or found["socket_errors"]:
        sys.exit(f"{load.url} ({load.script.name}): not every stream was complete and 200:\n{out}")
    return found


# --- the machine ----------------------------------------------------------------------------------


def code_version() -> str:
    """The gateway's code as measured (issue 22 is under way in the working tree): the SHA-256 of
    src/quotagate/**/*.py, and when the newest of them was written."""
    files = sorted((HERE.parent / "src" / "quotagate").rglob("*.py"))
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]
    newest = max(f.stat().st_mtime for f in files)
    return f"src/quotagate {digest} (newest file {time.strftime('%H:%M:%S', time.gmtime(newest))} UTC)"


def machine(when: str) -> str:
    line = (
        f"{when} ({time.strftime('%H:%M', time.gmtime())} UTC): {load_now()}; Python loop {cpu_speed_ms():.0f} ms "
        f"(bench/_common.py's, best of 3); {code_version()}"
    )
    print(line, flush=True)
    return line


class WideMock(Mock):
    """The mock upstream with its Anthropic side's request limit out of the way: without --rpm it
    still answers 429 past 4,000 Messages requests in --rate-window (60 s by default), which one
    connection reaches in seconds; in 0.1 s windows that is 40,000 a second."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [*QG, "mock-upstream", "--port", str(self.port), "--rate-window", "0.1"], stderr=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        wait_serving(self.url, None)


# --- the gateway ----------------------------------------------------------------------------------


def write_config(work: Path, mock: int) -> Path:
    config = work / "surfaces.yaml"
    config.write_text(
        f"database: sqlite:///{work}/surfaces.db\n"
        "tiers: {bench: {}}\n"
        "models:\n"
        f"  - {{name: {CHAT_MODEL}, deployments: [{{provider: openai, base_url: 'http://127.0.0.1:{mock}/v1'}}]}}\n"
        f"  - {{name: {CLAUDE_MODEL}, deployments: [{{provider: anthropic, base_url: 'http://127.0.0.1:{mock}/v1'}}]}}\n"
    )
    return config


def check(url: str, api: str, model: str, key: str | None) -> str:
    """One streamed request as wrk will send it: its events and bytes, or exit if it is not whole."""
    with httpx.stream("POST", url, json=body(model), headers=headers(api, key), timeout=30) as answer:
        data = answer.read()
    text = data.decode()
    if answer.status_code != 200 or END_OF_STREAM[api] not in text[-48:]:
        sys.exit(f"{url} ({api}, {model}): {answer.status_code} {text[-300:]!r}")
    deltas = text.count('"text_delta"') if api == "messages" else text.count('"delta":{"content"')
    return f"{text.count(chr(10) + chr(10))} events, {deltas} text deltas, {len(data)} bytes"


# --- the parts ------------------------------------------------------------------------------------


def latency(args: argparse.Namespace, gateway: dict[str, Load], direct: dict[str, Load]) -> dict:
    for load in [*gateway.values(), *direct.values()]:
        wrk(load, 1, 1)  # warm-up
    p50s: dict[str, list[float]] = {t.name: [] for t in TARGETS}
    added: dict[str, list[float]] = {t.name: [] for t in TARGETS}
    mock_p50s: dict[str, list[float]] = {"chat": [], "messages": []}
    for number in range(1, args.rounds + 1):
        order = list(TARGETS)
        random.shuffle(order)
        last: tuple[str, float] | None = None  # the latest run against the mock: (request, p50)
        for target in order:
            if last is not None and last[0] == target.direct:
                before = last[1]
            else:
                before = wrk(direct[target.direct], 1, args.seconds)["p50"]
                mock_p50s[target.direct].append(before)
            mine = wrk(gateway[target.name], 1, args.seconds)["p50"]
            after = wrk(direct[target.direct], 1, args.seconds)["p50"]
            mock_p50s[target.direct].append(after)
            last = (target.direct, after)
            p50s[target.name].append(mine)
            added[target.name].append(mine - (before + after) / 2)
        print(f"round {number}: " + ", ".join(f"{t.name} {added[t.name][-1]:+.3f} ms" for t in TARGETS), flush=True)
    return {"p50s": p50s, "added": added, "mock": mock_p50s}


def cpu(args: argparse.Namespace, gateway: dict[str, Load], pid: int) -> dict:
    for load in gateway.values():
        wrk(load, args.connections, 1)  # warm-up
    us: dict[str, list[float]] = {t.name: [] for t in TARGETS}
    rps: dict[str, list[float]] = {t.name: [] for t in TARGETS}
    for number in range(1, args.cpu_rounds + 1):
        order = list(TARGETS)
        random.shuffle(order)
        for target in order:
            time.sleep(0.5)  # what the previous run left (the ledger's writes) is done
            before = cpu_seconds(pid)
            run = wrk(gateway[target.name], args.connections, args.cpu_seconds)
            time.sleep(0.3)  # this run's last ledger writes
            us[target.name].append((cpu_seconds(pid) - before) * 1e6 / run["requests"])
            rps[target.name].append(run["rps"])
        print(f"cpu round {number}: " + ", ".join(f"{t.name} {us[t.name][-1]:.0f} µs" for t in TARGETS), flush=True)
    return {"us": us, "rps": rps}


def pieces(direct: dict[str, Load]) -> list[tuple[str, float]]:
    """The stream readers and request translations of each target timed alone, in this process,
    on the mock's own answers (the chat stream as the gateway asks for it, with its usage chunk),
    as server/_answers.py puts them together: µs per request, the best of 5 repeats."""
    import timeit

    from quotagate.server._stream_usage import MessagesStreamUsage, StreamUsage, TranslatedStream
    from quotagate.surfaces import (
        ChatStreamToMessages,
        MessagesStreamToChat,
        SSEDecoder,
        chat_to_messages,
        messages_to_chat,
    )

    def fetch(api: str, extra: dict) -> bytes:
        answer = httpx.post(
            direct[api].url, json={**body(DIRECT_MODEL[api]), **extra}, headers=headers(api, None), timeout=30
        )
        answer.raise_for_status()
        return answer.content

    chat = fetch("chat", {"stream_options": {"include_usage": True}})
    messages = fetch("messages", {})

    cases = {
        f"passthrough: StreamUsage (the chat stream, {len(chat)} B, parsed once, its usage chunk taken out)": lambda: (
            StreamUsage(True).feed(chat)
        ),
        f"translated: MessagesStreamUsage then MessagesStreamToChat (the Messages stream, {len(messages)} B)": lambda: (
            (s := TranslatedStream(MessagesStreamUsage(), MessagesStreamToChat(CLAUDE_MODEL), False)).feed(messages),
            s.finish(),
        ),
        "  of which MessagesStreamUsage (every event parsed for its usage and text)": lambda: (
            MessagesStreamUsage().feed(messages)
        ),
        "  of which MessagesStreamToChat (SSEDecoder, parse, a new chunk dumped per event)": lambda: (
            MessagesStreamToChat(CLAUDE_MODEL).feed(messages)
        ),
        "    of which SSEDecoder (the events split line by line)": lambda: list(SSEDecoder().feed(messages)),
        "  and the request: chat_to_messages": lambda: chat_to_messages(body(CLAUDE_MODEL)),
        "messages-native: MessagesStreamUsage": lambda: MessagesStreamUsage().feed(messages),
        "messages-translated: StreamUsage then ChatStreamToMessages": lambda: (
            (s := TranslatedStream(StreamUsage(False), ChatStreamToMessages(CHAT_MODEL, 12), True)).feed(chat),
            s.finish(),
        ),
        "  and the request: messages_to_chat": lambda: messages_to_chat(body(CHAT_MODEL)),
    }
    out = []
    for label, case in cases.items():
        out.append((label, min(timeit.repeat(case, number=2000, repeat=5)) / 2000 * 1e6))
        print(f"{label}: {out[-1][1]:.1f} µs", flush=True)
    return out


def spread(values: list[float], digits: int, signed: bool = False) -> str:
    form = f"{'+' if signed else ''}.{digits}f"
    return f"{statistics.median(values):{form}} ({min(values):{form}} to {max(values):{form}})"


def report(
    args: argparse.Namespace,
    before: str,
    after: str,
    sizes: dict[str, str],
    timed: dict,
    costs: dict,
    alone: list[tuple[str, float]],
) -> None:
    base = "passthrough"
    lines = [
        f"`.venv/bin/python bench/surfaces.py {' '.join(sys.argv[1:])}`; {before}; {after}.",
        "",
        "Answers (one request each, as the client gets it): "
        + "; ".join(f"{name}: {size}" for name, size in sizes.items())
        + ".",
        "",
    ]
    head = ["target", "client -> deployment"]
    rule = ["---", "---"]
    if timed:
        head += [
            "p50 @1 ms",
            "mock p50 @1 ms",
            f"added p50 ms (median of {args.rounds}, min to max)",
            "over passthrough ms",
        ]
        rule += ["---:"] * 4
    if costs:
        head += [
            f"CPU µs/req @{args.connections} (median of {args.cpu_rounds}, min to max)",
            "over passthrough µs",
            f"req/s @{args.connections}",
        ]
        rule += ["---:"] * 3
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    for target in TARGETS:
        cells = [target.name, target.what]
        if timed:
            added = timed["added"][target.name]
            over = [a - b for a, b in zip(added, timed["added"][base], strict=True)]
            cells += [
                f"{statistics.median(timed['p50s'][target.name]):.3f}",
                f"{statistics.median(timed['mock'][target.direct]):.3f} ({target.direct})",
                spread(added, 3, signed=True),
                "—" if target.name == base else spread(over, 3, signed=True),
            ]
        if costs:
            mine = costs["us"][target.name]
            over = [a - b for a, b in zip(mine, costs["us"][base], strict=True)]
            cells += [
                spread(mine, 0),
                "—" if target.name == base else spread(over, 0, signed=True),
                f"{statistics.median(costs['rps'][target.name]):,.0f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for one, other in (("translated", "passthrough"), ("messages-translated", "messages-native")):
        said = []
        if timed:
            diff = [a - b for a, b in zip(timed["added"][one], timed["added"][other], strict=True)]
            said.append(f"{statistics.median(diff):+.3f} ms added p50 at one connection")
        if costs:
            diff = [a - b for a, b in zip(costs["us"][one], costs["us"][other], strict=True)]
            share = statistics.median(a / b - 1 for a, b in zip(costs["us"][one], costs["us"][other], strict=True))
            said.append(f"{statistics.median(diff):+.0f} µs CPU per request ({share:+.1%})")
        if said:
            lines.append(f"- {one} minus {other} (median of the rounds' differences): " + ", ".join(said))
    if alone:
        lines += ["", "Each target's stream reading and request translation alone (µs per request, best of 5):", ""]
        lines += [f"- {label}: {us:.1f}" for label, us in alone]
    print("\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=16, help="latency rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="per wrk run at one connection")
    parser.add_argument("--cpu-rounds", type=int, default=8)
    parser.add_argument("--cpu-seconds", type=float, default=4.0, help="per wrk run of the CPU part")
    parser.add_argument("--connections", type=int, default=8, help="of the CPU part")
    parser.add_argument("--parts", default="latency,cpu,pieces", help="comma-separated: latency, cpu, pieces")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"latency", "cpu", "pieces"}:
        sys.exit(f"unknown part in {args.parts!r}")
    work = Path(tempfile.mkdtemp(prefix="qg-surfaces-"))
    before = machine("before")
    mock = WideMock()
    config = write_config(work, mock.port)
    key = create_key(config, "bench", "bench")
    port = free_port()
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen([*QG, "serve", "-c", str(config), "--port", str(port)], stderr=log)
    try:
        wait_serving(f"http://127.0.0.1:{port}/v1/chat/completions", key)
        mock_base, gateway_base = f"http://127.0.0.1:{mock.port}", f"http://127.0.0.1:{port}"
        gateway = {
            t.name: Load(gateway_base + t.path, write_script(work / f"{t.name}.lua", t.client, t.model, key))
            for t in TARGETS
        }
        direct = {
            api: Load(
                mock_base + DIRECT_PATH[api], write_script(work / f"mock-{api}.lua", api, DIRECT_MODEL[api], None)
            )
            for api in ("chat", "messages")
        }
        sizes = {f"mock {api}": check(load.url, api, DIRECT_MODEL[api], None) for api, load in direct.items()}
        sizes |= {t.name: check(gateway[t.name].url, t.client, t.model, key) for t in TARGETS}
        for name, size in sizes.items():
            print(f"{name}: {size}", flush=True)
        timed = latency(args, gateway, direct) if "latency" in parts else {}
        costs = cpu(args, gateway, process.pid) if "cpu" in parts else {}
        alone = pieces(direct) if "pieces" in parts else []
    finally:
        process.terminate()
        process.wait(30)
        mock.stop()
        log.close()
    report(args, before, machine("after"), sizes, timed, costs, alone)


if __name__ == "__main__":
    main()
