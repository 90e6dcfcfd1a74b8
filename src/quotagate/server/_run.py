"""Running the gateway (and, for the embedded default, its demo upstream) under uvicorn."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from uvicorn.supervisors import Multiprocess

from .._logging import configure as configure_logging
from .._uvicorn import uvicorn_config
from ..config import DEMO_MODEL, Config, ConfigError, default_config, load_config
from ..config._defaults import provider_key_configured
from ..keys import KeyStore
from ..mock import MockOptions, MockUpstream
from ._app import Gateway

T = TypeVar("T")
DEMO_USER = "demo"
DEMO_KEY_NAME = "demo key"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop (where it exists), as uvicorn.run would.

    uvicorn's ``loop`` setting only takes effect when uvicorn makes the loop itself; a server
    started inside ``asyncio.run`` would run on the default loop, which costs a third more CPU
    per proxied request here (measured with bench/run.py).
    """
    if sys.platform == "win32":
        return asyncio.run(main)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


async def serve(config: Config, host: str | None = None, port: int | None = None) -> None:
    """Run the gateway until interrupted."""
    configure_logging(config.logging.format, config.logging.level)
    gateway = Gateway(config)
    server = uvicorn.Server(
        uvicorn_config(gateway, host or config.server.host, port if port is not None else config.server.port)
    )
    await server.serve()
    if not server.started:
        raise SystemExit(1)


# The configuration file a worker process loads (serve_workers sets it; spawned workers inherit
# the environment). A path rather than the parsed configuration: the configuration may hold
# secrets, and a process's environment is readable by others of its user.
WORKER_CONFIG_ENV = "QUOTAGATE_WORKER_CONFIG"


def worker_gateway() -> Gateway:
    """The app factory each worker of serve_workers calls in its own process."""
    config = load_config(os.environ[WORKER_CONFIG_ENV])
    configure_logging(config.logging.format, config.logging.level)
    return Gateway(config)


def serve_workers(config: Config, config_file: Path, workers: int, host: str | None, port: int | None) -> None:
    """Run ``workers`` gateway processes on one listening socket, under uvicorn's supervisor
    (it restarts a worker that dies; SIGINT/SIGTERM stop them all gracefully, SIGHUP replaces
    them one by one).

    Limits, breakers, the ledger and alerts are shared through Redis, as between nodes; in-process
    state would give each worker limits of its own, so Redis is required.
    """
    if config.redis is None:
        raise ConfigError(
            f"--workers {workers} needs `redis:` in the configuration: limits are enforced exactly "
            "across processes only through Redis (in-process limits would be per worker)."
        )
    # The schema is made once, here: workers starting together would race to create tables.
    run(_create_schema(config))
    os.environ[WORKER_CONFIG_ENV] = str(config_file.resolve())
    settings = uvicorn_config(
        f"{__name__}:worker_gateway",
        host or config.server.host,
        port if port is not None else config.server.port,
        workers=workers,
    )
    gc.enable()  # the supervisor serves nothing itself (see `quotagate serve`)
    Multiprocess(settings, sockets=[settings.bind_socket()]).run()


async def _create_schema(config: Config) -> None:
    store = KeyStore.from_url(config.database)
    try:
        await store.create_schema()
    finally:
        await store.close()


@dataclass(frozen=True)
class DemoInfo:
    url: str
    key: str
    master_key: str
    model: str
    mock_url: str | None


async def serve_demo(host: str, port: int, master_key: str | None, announce: Callable[[DemoInfo], None]) -> None:
    """The embedded default: SQLite, in-process limits, and a mock upstream unless a provider
    key is configured. A fresh demo key is made at every start (keys are stored hashed, so an
    old one cannot be shown again) and the previous demo keys are deleted."""
    mock_server: uvicorn.Server | None = None
    mock_sock: socket.socket | None = None
    mock_url: str | None = None
    if not provider_key_configured():
        mock_sock = bound_socket("127.0.0.1", 0)
        mock_url = f"http://127.0.0.1:{mock_sock.getsockname()[1]}/v1"
        mock_server = uvicorn.Server(uvicorn_config(MockUpstream(MockOptions(latency_ms=0)), "127.0.0.1"))
    config = default_config(mock_url)
    store = KeyStore.from_url(config.database)
    await store.create_schema()
    for record in await store.list(user=DEMO_USER):
        if record.name == DEMO_KEY_NAME:
            await store.delete(record.id)
    _, key = await store.create(user=DEMO_USER, tier="paid", name=DEMO_KEY_NAME)
    await store.close()

    master = master_key or "qg-admin-" + secrets.token_urlsafe(16)
    gateway = Gateway(config)
    gateway.admin._master_key = master
    gateway_sock = bound_socket(host, port)
    server = uvicorn.Server(uvicorn_config(gateway, host))
    actual_port = gateway_sock.getsockname()[1]
    display_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    info = DemoInfo(f"http://{display_host}:{actual_port}/v1", key, master, DEMO_MODEL, mock_url)

    async def announce_when_ready() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        announce(info)

    tasks = []
    if mock_server is not None and mock_sock is not None:
        tasks.append(asyncio.ensure_future(mock_server.serve(sockets=[mock_sock])))
    notifier = asyncio.ensure_future(announce_when_ready())
    try:
        await server.serve(sockets=[gateway_sock])
    finally:
        notifier.cancel()
        if mock_server is not None:
            mock_server.should_exit = True
        for task in tasks:
            await task
    if not server.started:
        raise SystemExit(1)
