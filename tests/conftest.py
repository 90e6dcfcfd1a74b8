"""Shared fixtures: real servers on 127.0.0.1, a real SQLite file and a real PostgreSQL.

Servers (the mock upstream, gateways) run under uvicorn in background threads, each with its own
event loop, so tests talk to them over real HTTP exactly as clients would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from quotagate._uvicorn import uvicorn_config
from quotagate.config import Config, parse_config
from quotagate.mock import MockOptions, MockUpstream
from quotagate.server import Gateway
from quotagate.server._run import bound_socket
from quotagate.upstream import Transport

POSTGRES_ADMIN_URL = os.environ.get("QUOTAGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("QUOTAGATE_TEST_REDIS", "redis://127.0.0.1:6379/15")
MASTER_KEY = "qg-test-master-" + secrets.token_hex(8)


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = bound_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1"))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # Runs the server on its own loop; uvicorn's signal handlers only install in the main thread.
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class RawHttpServer:
    """A threaded TCP server on 127.0.0.1 whose ``handler`` speaks HTTP/1.1 by hand, for upstreams
    that misbehave in ways an ASGI app cannot (close unanswered, lie about lengths, stall)."""

    def __init__(self, handler: type[socketserver.BaseRequestHandler]) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until_ready(port: int, timeout: float = 20.0) -> None:
    """Until a gateway process on 127.0.0.1:port answers /ready with 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("gateway did not start")


@contextlib.contextmanager
def gateway_processes(config: Path, count: int = 3, env: Mapping[str, str] | None = None) -> Iterator[list[int]]:
    """``count`` `quotagate serve -c CONFIG` processes (nodes sharing the config's Redis), ready;
    their ports. Stopped on the way out."""
    ports = [closed_port() for _ in range(count)]
    command = [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port"]
    nodes = [subprocess.Popen([*command, str(port)], env=env) for port in ports]
    try:
        for port in ports:
            wait_until_ready(port)
        yield ports
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(10)


def cli_key(config: Path, tier: str = "free", env: Mapping[str, str] | None = None) -> str:
    """A key for user "u" made as an operator makes one, with `quotagate keys create -c CONFIG`."""
    created = subprocess.run(
        [sys.executable, "-m", "quotagate", "keys", "create", "--user", "u", "--tier", tier, "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return created.stdout.strip().splitlines()[-1]


def closed_port() -> int:
    """A port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[ServerThread]:
    server = ServerThread(MockUpstream(MockOptions(record=True, api_key="sk-upstream-test-key-123456"))).start()
    yield server
    server.stop()


@pytest.fixture
def start_mock() -> Iterator[Callable[..., ServerThread]]:
    """Start a mock upstream with particular options (faults, delays)."""
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        server = ServerThread(MockUpstream(MockOptions(**options))).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def upstream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-upstream-test-key-123456")
    monkeypatch.setenv("TEST_MASTER_KEY", MASTER_KEY)


def gateway_config(database: str, upstream_url: str, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "database": database,
        "master_key": "env:TEST_MASTER_KEY",
        "tiers": {"free": {"rpm": 60, "tpd": 100000}, "paid": {"rpm": 600}},
        "models": [
            {
                "name": "gpt-4o-mini",
                "deployments": [
                    {
                        "provider": "openai",
                        "base_url": upstream_url + "/v1",
                        "api_key": "env:TEST_UPSTREAM_KEY",
                        "model": "gpt-4o-mini",
                    }
                ],
            },
            {
                # The gateway's name differs from the provider's: the request is rewritten.
                "name": "house-model",
                "deployments": [
                    {
                        "provider": "openai-compatible",
                        "base_url": upstream_url + "/v1",
                        "api_key": "env:TEST_UPSTREAM_KEY",
                        "model": "gpt-4.1",
                    }
                ],
            },
            {
                "name": "text-embedding-3-small",
                "deployments": [
                    {
                        "provider": "openai",
                        "base_url": upstream_url + "/v1",
                        "api_key": "env:TEST_UPSTREAM_KEY",
                    }
                ],
            },
        ],
    }
    data.update(overrides)
    return parse_config(data)


@dataclass
class RunningGateway:
    url: str
    server: ServerThread
    gateway: Gateway

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)

    def create_key(self, user: str = "alice", tier: str = "free", **extra: Any) -> dict[str, Any]:
        with self.admin() as client:
            response = client.post("/admin/keys", json={"user": user, "tier": tier, **extra})
        assert response.status_code == 201, response.text
        return dict(response.json())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'quotagate.db'}"


@pytest.fixture
def start_gateway(upstream_env: None, sqlite_url: str) -> Iterator[Callable[..., RunningGateway]]:
    started: list[ServerThread] = []

    def start(config: Config, transport: Transport | None = None) -> RunningGateway:
        gateway = Gateway(config, transport=transport)
        server = ServerThread(gateway).start()
        started.append(server)
        return RunningGateway(server.url, server, gateway)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def gateway(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> RunningGateway:
    return start_gateway(gateway_config(sqlite_url, mock_upstream.url))


@pytest.fixture
def api_key(gateway: RunningGateway) -> str:
    return str(gateway.create_key()["key"])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the machine's server, dropped afterwards."""
    import asyncpg

    name = "quotagate_test_" + secrets.token_hex(4)
    admin_dsn = POSTGRES_ADMIN_URL

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run_sync(sql: str) -> None:
        # In a thread of its own: the fixture may be requested from inside a running loop.
        errors: list[BaseException] = []
        thread = threading.Thread(target=lambda: _capture(errors, lambda: asyncio.run(run(sql))))
        thread.start()
        thread.join()
        if errors:
            raise errors[0]

    try:
        run_sync(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {admin_dsn} is needed for these tests (.ci/run starts it): {exc}")
    base = admin_dsn.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    run_sync(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _capture(errors: list[BaseException], action: Callable[[], object]) -> None:
    try:
        action()
    except BaseException as exc:
        errors.append(exc)
