"""A gateway on PostgreSQL whose database goes away under load, and one started without it
(issue 18: PostgreSQL made unreachable).

What a client gets while the database is down: keys this node has looked up before keep working
(from its cache, however old the lookup); a key it never saw gets a 503 ``service_unavailable``
with Retry-After (try again; not a 401, the key is not wrong), within a bound even when the
database does not answer at all; the admin API answers 503 as well. Rows of the requests served
meanwhile wait in the journal (or the Redis stream) and reach the database once it is back.
``quotagate serve`` refuses to start without its database, at once and in one line.

The database is reached through a TCP proxy of the test's own, which can refuse (the database's
host is down) or stop relaying (it is cut off by a partition, or frozen), then be restored.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from ..accounting.test_ledger import ledger_rows
from ..accounting.test_ledger_faults import Gateway
from ..conftest import MASTER_KEY, POSTGRES_ADMIN_URL, ServerThread, cli_key, closed_port
from ..limits.conftest import start_redis, wait_for_redis

T = TypeVar("T")
UPSTREAM_KEY = "sk-upstream-test-key-123456"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# How long a node trusts a key lookup in these tests: shorter than the outages, so that the key is
# looked up again during one, and its failed lookup seen.
AUTH_CACHE_SECONDS = 2.0


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (a port on 127.0.0.1), run by a thread
    with its own event loop.

    ``cut()`` resets every connection through it and closes its listener, so that new ones are
    refused: the database's host went down. ``freeze()`` keeps every connection open and accepts
    new ones, but relays nothing: the database is cut off by a partition, or frozen, and answers
    nothing while refusing nothing. ``restore()`` undoes either; ``restore(forget=True)`` only for
    new connections, while those open during the freeze stay silent for ever (a firewall or a NAT
    on the way dropped them during the partition).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.loop = asyncio.new_event_loop()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        self.port: int = listener.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Future[Any]] = set()
        self._flowing = asyncio.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._listen(listener))

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(10)

    async def _listen(self, listener: socket.socket | None = None) -> None:
        self._flowing.set()
        if listener is None:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
        self._server = await asyncio.start_server(self._relay, sock=listener)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            _reset(client_writer)
            return
        self._writers.add(server_writer)
        flowing = self._flowing
        relay = asyncio.gather(
            self._pump(client_reader, server_writer, flowing), self._pump(server_reader, client_writer, flowing)
        )
        self._relays.add(relay)
        try:
            await relay
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._relays.discard(relay)
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
        while data := await reader.read(65536):
            await flowing.wait()  # frozen: what arrives is held, and nothing answers
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _reset(writer)
        for relay in list(self._relays):
            relay.cancel()

    def cut(self) -> None:
        self._call(self._cut())

    def freeze(self) -> None:
        self.loop.call_soon_threadsafe(self._flowing.clear)

    def restore(self, forget: bool = False) -> None:
        self._call(self._restore(forget))

    async def _restore(self, forget: bool) -> None:
        if forget:
            self._flowing = asyncio.Event()  # the old connections wait on the old one
        if self._server is not None and not self._server.is_serving():
            await self._listen()
        self._flowing.set()

    def close(self) -> None:
        self._call(self._cut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _reset(writer: asyncio.StreamWriter) -> None:
    # A linger of 0 makes the close an RST, as from a host that went away, not a polite FIN.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
def database_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(make_url(POSTGRES_ADMIN_URL).port or 5432)
    yield proxy
    proxy.close()


@dataclass
class Answer:
    started: float
    ended: float
    status: int  # 0: no answer (the client's own timeout, or the connection broke)
    code: str | None = None  # the error's code
    shaped: bool = True  # a 200 with its usage, or an OpenAI-shaped JSON error
    request_id: str = ""
    retry_after: str | None = None


@dataclass
class Load:
    prefix: str = field(default_factory=lambda: "dbout-" + uuid.uuid4().hex[:8])
    answers: list[Answer] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[Answer]:
        """The answers that arrived in [start, end]."""
        return [a for a in self.answers if start <= a.ended <= end]

    def counts(self) -> collections.Counter[tuple[int, str | None]]:
        return collections.Counter((a.status, a.code) for a in self.answers)


async def ask(
    session: aiohttp.ClientSession, port: int, key: str, request_id: str = "", body: dict[str, Any] = BODY
) -> Answer:
    """One chat completion, and what came of it."""
    headers = {"Authorization": f"Bearer {key}", "x-client-request-id": request_id}
    started = time.monotonic()
    try:
        async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers) as r:
            payload = await r.json(content_type=None)
            status = r.status
            json_type = r.headers.get("content-type") == "application/json"
            retry_after = r.headers.get("retry-after")
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return Answer(started, time.monotonic(), 0, type(exc).__name__, False, request_id)
    ended = time.monotonic()
    if status == 200:
        shaped = isinstance(payload, dict) and payload.get("usage", {}).get("completion_tokens") == 4
        return Answer(started, ended, status, None, shaped, request_id)
    error = payload.get("error") if isinstance(payload, dict) else None
    if not json_type or not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return Answer(started, ended, status, None, False, request_id)
    return Answer(started, ended, status, error["code"], True, request_id, retry_after)


async def run_load(port: int, key: str, load: Load, stop: asyncio.Event, workers: int = 8) -> None:
    """``workers`` clients sending requests one after another each until ``stop``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def worker(worker_id: int) -> None:
            for n in range(1_000_000):
                if stop.is_set():
                    return
                load.answers.append(await ask(session, port, key, f"{load.prefix}-{worker_id}-{n}"))

        await asyncio.gather(*(worker(i) for i in range(workers)))


async def get(port: int, path: str) -> tuple[int, dict[str, Any], float]:
    """GET ``path`` (with the master key): the status, the JSON body, and the seconds it took."""
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {MASTER_KEY}"}) as response,
    ):
        return response.status, await response.json(content_type=None), time.monotonic() - started


def rows_of(postgres_url: str, load: Load) -> list[Any]:
    return [r for r in ledger_rows(postgres_url) if (r.client_request_id or "").startswith(load.prefix)]


def assert_rows_written(postgres_url: str, load: Load, served: set[str], timeout: float = 20) -> None:
    """Every request in ``served`` has its row in the database, once, and no other of the load has."""
    rows = wait_for_rows(postgres_url, load, served, timeout)
    ids = [r.client_request_id for r in rows]
    assert served <= set(ids), f"{len(served - set(ids))} of {len(served)} rows lost"
    assert len(ids) == len(set(ids)) == len(served)


def wait_for_rows(postgres_url: str, load: Load, ids: set[str], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = rows_of(postgres_url, load)
        if {r.client_request_id for r in rows} >= ids or time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def proxied(postgres_url: str, proxy: TcpProxy) -> str:
    return make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)


def gateway_on(
    tmp_path: Path, database: str, upstream: str, redis: str | None = None, auth_cache: float = AUTH_CACHE_SECONDS
) -> Gateway:
    """A ``quotagate serve`` process (not started) on ``database``, with a key of its own."""
    config = tmp_path / "quotagate.yaml"
    config.write_text(
        f"database: {database}\n"
        + (f"redis: {redis}\n" if redis else "")
        + "master_key: env:TEST_MASTER_KEY\n"
        + "tiers: {free: {}}\n"
        + f"auth_cache_seconds: {auth_cache}\n"
        + "models:\n  - name: gpt-4o-mini\n"
        f"    deployments: [{{provider: openai-compatible, base_url: '{upstream}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
    )
    # The ledger's journal (PostgreSQL's is in the state directory) stays in the test's folder.
    env = {
        **os.environ,
        "TEST_UPSTREAM_KEY": UPSTREAM_KEY,
        "TEST_MASTER_KEY": MASTER_KEY,
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    return Gateway(config, closed_port(), env, cli_key(config, env=env))


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes to stop after the test (gateways, Redis)."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.parametrize("mode", ["journal", "redis"])
def test_a_database_that_goes_down_under_load(
    mode: str,
    tmp_path: Path,
    database_proxy: TcpProxy,
    postgres_url: str,
    mock_upstream: ServerThread,
    stopped: list[subprocess.Popen[bytes]],
) -> None:
    """PostgreSQL's host goes down for 4 s under load (connections reset, new ones refused), with
    rows going through the journal or through Redis: the clients' key keeps working throughout,
    past its cache's lifetime, nothing slow; a key never seen gets 503 with Retry-After (not 401);
    /ready and the admin API say the database is down (503, not 500); all is served again within
    2 s of its return; and every request answered 200, during the outage too, has its row once
    the database is back."""
    redis = None
    if mode == "redis":
        redis_port = closed_port()
        stopped.append(start_redis(redis_port))
        asyncio.run(wait_for_redis(redis_port))
        redis = f"redis://127.0.0.1:{redis_port}/0"
    gateway = gateway_on(tmp_path, proxied(postgres_url, database_proxy), mock_upstream.url, redis)
    unseen = cli_key(gateway.config, env=gateway.env)
    gateway.start()
    assert gateway.process is not None
    stopped.append(gateway.process)
    load, stop = Load(), asyncio.Event()
    marks: dict[str, float] = {}
    during: dict[str, Any] = {}

    async def run() -> None:
        async def outage() -> None:
            # The load's first request looks its key up now; the outage starts while it is cached.
            await asyncio.sleep(0.3)
            database_proxy.cut()
            marks["down"] = time.monotonic()
            await asyncio.sleep(0.5)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
                during["unseen"] = await ask(session, gateway.port, unseen)
            during["ready"] = await get(gateway.port, "/ready")
            during["keys"] = await get(gateway.port, "/admin/keys")
            await asyncio.sleep(marks["down"] + 4.0 - time.monotonic())
            database_proxy.restore()
            marks["up"] = time.monotonic()
            await asyncio.sleep(3.0)
            stop.set()

        await asyncio.gather(outage(), run_load(gateway.port, gateway.key, load, stop))

    asyncio.run(run())
    down, up = marks["down"], marks["up"]
    counts = load.counts()
    assert set(counts) <= {(200, None), (503, "service_unavailable")}, counts
    assert all(a.shaped for a in load.answers), [a for a in load.answers if not a.shaped][:3]
    assert max(a.ended - a.started for a in load.answers) < 3.0
    outage = load.between(down, up)
    # The outage outlasts the key's cache (AUTH_CACHE_SECONDS): a key the node knew stays served.
    assert len(outage) > 20 and all(a.status == 200 for a in outage), collections.Counter(a.status for a in outage)
    assert all(a.status == 200 for a in load.answers if a.ended < down)
    unseen_answer = during["unseen"]
    assert (unseen_answer.status, unseen_answer.code, unseen_answer.shaped) == (503, "service_unavailable", True)
    assert unseen_answer.retry_after == "1"
    ready_status, ready_body, _ = during["ready"]
    assert ready_status == 503 and ready_body["checks"]["database"].startswith("error:"), ready_body
    # The admin API says the database is down too (it answered 500 internal_error).
    keys_status, keys_body, _ = during["keys"]
    assert (keys_status, keys_body["error"]["code"]) == (503, "service_unavailable"), keys_body
    assert keys_body["error"]["message"].startswith("PostgreSQL at 127.0.0.1:"), keys_body
    # Recovered: the last refusal came within 2 s of the database's return, and every request
    # sent after that was served.
    recovery = max((a.ended for a in load.answers if a.status != 200), default=up) - up
    assert recovery < 2.0
    after = [a for a in load.answers if a.started > up + 2.0]
    assert len(after) > 20 and all(a.status == 200 for a in after)

    # The refused requests never passed authentication: they have no row, and none is written twice.
    assert_rows_written(postgres_url, load, {a.request_id for a in load.answers if a.status == 200})


def test_a_database_that_stops_answering_under_load(
    tmp_path: Path,
    database_proxy: TcpProxy,
    postgres_url: str,
    mock_upstream: ServerThread,
    stopped: list[subprocess.Popen[bytes]],
) -> None:
    """PostgreSQL cut off for 7 s without refusing anything (its connections stay open and
    nothing answers): no request waits longer than the key lookup's deadline and the closing of
    its connection (2 s + 2 s; they waited for as long as the database was silent, up to asyncpg's
    60 s for a new connection), the key the node knew is served throughout, /ready says 503
    within seconds, and the rows are all written."""
    # The key's lookup expires just after the database stops answering.
    gateway = gateway_on(tmp_path, proxied(postgres_url, database_proxy), mock_upstream.url, auth_cache=0.5)
    gateway.start()
    assert gateway.process is not None
    stopped.append(gateway.process)
    load, stop = Load(), asyncio.Event()
    marks: dict[str, float] = {}
    during: dict[str, Any] = {}

    async def run() -> None:
        async def outage() -> None:
            await asyncio.sleep(0.3)
            database_proxy.freeze()
            marks["down"] = time.monotonic()
            await asyncio.sleep(0.5)
            # At once, both: the admin call must be refused before the database is back at 7 s.
            during["ready"], during["keys"] = await asyncio.gather(
                get(gateway.port, "/ready"), get(gateway.port, "/admin/keys")
            )
            await asyncio.sleep(marks["down"] + 7.0 - time.monotonic())
            database_proxy.restore()
            marks["up"] = time.monotonic()
            await asyncio.sleep(3.0)
            stop.set()

        await asyncio.gather(outage(), run_load(gateway.port, gateway.key, load, stop))

    asyncio.run(run())
    down, up = marks["down"], marks["up"]
    slowest = max(a.ended - a.started for a in load.answers)
    assert slowest < 2.0 + 2.0 + 1.0, slowest
    counts = load.counts()
    assert set(counts) <= {(200, None), (503, "service_unavailable")}, counts
    assert all(a.shaped for a in load.answers)
    outage = load.between(down, up)
    # Its lookups fail (by their deadline) and the key the node knew is served all the same.
    assert len(outage) > 20 and all(a.status == 200 for a in outage), collections.Counter(a.status for a in outage)
    ready_status, ready_body, ready_seconds = during["ready"]
    # Its own 2 s, and up to 2 s more to drop the connection that did not answer.
    assert ready_status == 503 and ready_seconds < 5.0, (ready_body, ready_seconds)
    # The admin API waits no longer than the database's statement deadline (5 s; it waited for
    # as long as the database was silent).
    keys_status, keys_body, keys_seconds = during["keys"]
    assert (keys_status, keys_body["error"]["code"]) == (503, "service_unavailable"), keys_body
    assert keys_seconds < 5.0 + 2.0 + 1.0, keys_seconds
    # A lookup that was waiting when the database came back is answered; all later ones are 200.
    after = [a for a in load.answers if a.started > up + 2.0]
    assert len(after) > 20 and all(a.status == 200 for a in after)

    assert_rows_written(postgres_url, load, {a.request_id for a in load.answers if a.status == 200})


def test_connections_a_partition_left_silent_do_not_stall_the_ledger(
    tmp_path: Path,
    database_proxy: TcpProxy,
    postgres_url: str,
    mock_upstream: ServerThread,
    stopped: list[subprocess.Popen[bytes]],
) -> None:
    """PostgreSQL cut off for 3 s, and back for new connections only: the ledger's batch that was
    waiting on a connection that will never answer again is given up after the write deadline
    and written on a new one, so the outage's rows reach the database within seconds (the ledger
    waited for the operating system to give up on the connection, a quarter of an hour)."""
    # The key stays cached throughout: every request is served, and every one has a row to write.
    gateway = gateway_on(tmp_path, proxied(postgres_url, database_proxy), mock_upstream.url, auth_cache=60)
    gateway.start()
    assert gateway.process is not None
    stopped.append(gateway.process)
    load, stop = Load(), asyncio.Event()
    marks: dict[str, float] = {}

    async def run() -> None:
        async def outage() -> None:
            await asyncio.sleep(0.5)
            database_proxy.freeze()
            await asyncio.sleep(3.0)
            database_proxy.restore(forget=True)
            marks["up"] = time.monotonic()
            await asyncio.sleep(1.0)
            stop.set()

        await asyncio.gather(outage(), run_load(gateway.port, gateway.key, load, stop, workers=2))

    asyncio.run(run())
    assert load.counts() == {(200, None): len(load.answers)}, load.counts()
    served = {a.request_id for a in load.answers}
    rows = wait_for_rows(postgres_url, load, served, timeout=25)
    written_in = time.monotonic() - marks["up"]
    ids = [r.client_request_id for r in rows]
    assert served <= set(ids), f"{len(served - set(ids))} of {len(served)} rows not written"
    assert len(ids) == len(set(ids))
    # The statement deadline (5 s), the next flush, and room for a loaded machine.
    assert written_in < 5.0 + 5.0, written_in


@pytest.mark.parametrize("fault", ["refused", "no answer"])
def test_serve_without_its_database_fails_at_once_saying_why(
    fault: str, tmp_path: Path, database_proxy: TcpProxy, postgres_url: str, mock_upstream: ServerThread
) -> None:
    """``quotagate serve`` whose PostgreSQL refuses connections (a wrong port) or does not answer
    (a wrong or firewalled host) exits non-zero within seconds (it waited 60 s for the silent
    one), with one line naming the database's address and the reason: no traceback."""
    if fault == "refused":
        database = make_url(postgres_url).set(port=closed_port()).render_as_string(hide_password=False)
    else:
        database_proxy.freeze()
        database = proxied(postgres_url, database_proxy)
    config = tmp_path / "quotagate.yaml"
    config.write_text(
        f"database: {database}\n"
        "tiers: {free: {}}\n"
        "models:\n  - name: gpt-4o-mini\n"
        f"    deployments: [{{provider: openai-compatible, base_url: '{mock_upstream.url}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
    )
    env = {**os.environ, "TEST_UPSTREAM_KEY": UPSTREAM_KEY, "XDG_STATE_HOME": str(tmp_path / "state")}
    command = [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port", str(closed_port())]
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - started
    assert result.returncode == 3, result.stderr  # uvicorn's status for a failed start
    assert seconds < 15, seconds
    assert "Traceback" not in result.stderr, result.stderr
    port = make_url(database).port
    problem = [line for line in result.stderr.splitlines() if "could not start" in line]
    assert len(problem) == 1, result.stderr
    assert f"PostgreSQL at 127.0.0.1:{port}" in problem[0], problem[0]
    assert ("refused" if fault == "refused" else "no connection within 5s") in problem[0], problem[0]
