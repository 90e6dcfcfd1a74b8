"""Running the gateway (and, for the embedded default, its demo upstream) under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from uvicorn.supervisors import Multiprocess

from .._logging import configure as configure_logging
from .._uvicorn import uvicorn_config
from ..config import DEMO_MODEL, Config, ConfigError, default_config, load_config
from ..config._defaults import provider_key_configured
from ..config._loader import parse_config_text
from ..config._reload import keep_restart_settings, log_reload_failed, log_reloaded, prepare_reload
from ..keys import KeyStore
from ..mock import MockOptions, MockUpstream
from ._admin_auth import AdminAuth
from ._app import Gateway

T = TypeVar("T")
DEMO_USER = "demo"
DEMO_KEY_NAME = "demo key"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop (where it exists), as uvicorn.run would.

    uvicorn's ``loop`` setting only takes effect when uvicorn makes the loop itself; a server
    started inside ``asyncio.run`` would run on the default loop, which costs markedly more CPU
    per proxied request (bench/NOTES.md).
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


class _Server(uvicorn.Server):
    """uvicorn's server, whose graceful stop ends the process with status 0.

    Once it has shut down after SIGTERM or SIGINT, uvicorn raises the signal again with the
    default handler back in place, so the process dies by it (status -15 for SIGTERM) and a
    supervisor (systemd, Kubernetes, a test) cannot tell a clean stop from a kill. A stop that
    finished its requests and wrote its rows is a success: the signal is not raised again.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


class ListenError(Exception):
    """The gateway's address cannot be bound (most often: the port is taken)."""


def listening_socket(host: str, port: int) -> socket.socket:
    """``bound_socket``, with the operating system's refusal turned into a ListenError that says
    what to do about it (a command-line user needs one line, not a traceback)."""
    try:
        return bound_socket(host, port)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        hint = (
            " (is another quotagate running there? stop it, or choose another port with --port)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise ListenError(f"cannot listen on {host}:{port}: {reason}{hint}") from exc


# Requests leave no reference cycles behind, so a young-generation collection under load only
# re-scans the requests in flight: at the default threshold of 700 that took a noticeable share of
# the gateway's CPU (bench/NOTES.md). Cycles that do appear are still collected, after at most this
# many net allocations.
YOUNG_GC_THRESHOLD = 10_000


def tune_gc_for_serving() -> None:
    """The garbage collector of a process that does nothing but serve the gateway, once it has
    started: what is alive now (configuration, modules, pools) lives as long as the process, so it
    is moved out of the collector's generations (full collections stay short under load), and
    young collections run less often. `quotagate serve` turned collection off while it imported
    and built the gateway; this turns it back on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    gc.enable()


async def serve(
    config: Config, host: str | None = None, port: int | None = None, config_file: Path | None = None
) -> None:
    """Run the gateway until interrupted; SIGHUP reloads ``config_file`` (see Gateway.reload)."""
    configure_logging(config.logging.format, config.logging.level)
    gateway = Gateway(config, config_file=config_file, on_started=tune_gc_for_serving)
    server = _Server(
        uvicorn_config(
            gateway,
            host or config.server.host,
            port if port is not None else config.server.port,
            header_timeout=config.server.header_timeout,
            body_timeout=config.server.body_timeout,
        )
    )
    with _reload_on_sighup(gateway):
        await server.serve()
    if not server.started:
        raise SystemExit(1)


@contextlib.contextmanager
def _reload_on_sighup(gateway: Gateway) -> Iterator[None]:
    """SIGHUP reloads the configuration. uvicorn handles only SIGINT and SIGTERM, and SIGHUP's
    default action ends the process without a word."""
    if not hasattr(signal, "SIGHUP"):  # Windows
        yield
        return
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        with contextlib.suppress(ConfigError):  # logged; the running configuration goes on serving
            await gateway.reload()

    def on_hangup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


# The configuration files a worker process loads (serve_workers sets them; spawned workers inherit
# the environment): the supervisor's copies (see _WorkerConfig), and the operator's file, which
# POST /admin/reload checks before it asks the supervisor to reload. Paths rather than the parsed
# configuration: the configuration may hold secrets (a database URL's password), and a process's
# environment is readable by others of its user.
WORKER_CONFIG_ENV = "QUOTAGATE_WORKER_CONFIG"
WORKER_STARTUP_CONFIG_ENV = "QUOTAGATE_WORKER_STARTUP_CONFIG"
WORKER_SOURCE_ENV = "QUOTAGATE_WORKER_SOURCE"
WORKER_START_SECONDS = 30


def worker_gateway() -> Gateway:
    """The app factory each worker of serve_workers calls in its own process."""
    # A reload replaces this process; SIGHUP is the supervisor's to act on. Sent to the whole
    # process group (a closing terminal, kill -HUP -PGID) it must not end a worker mid-request.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    startup = load_config(os.environ[WORKER_STARTUP_CONFIG_ENV])
    config, _ = keep_restart_settings(load_config(os.environ[WORKER_CONFIG_ENV]), startup)
    configure_logging(config.logging.format, config.logging.level)
    return Gateway(
        config,
        config_file=os.environ[WORKER_SOURCE_ENV],
        supervisor=os.getppid(),
        on_started=tune_gc_for_serving,
    )


class _WorkerConfig:
    """The supervisor's copies of the configuration, which its workers load: the file as it was at
    start (its settings that need a restart hold until then) and as it was at the last reload that
    passed the checks. Workers never read the operator's file: a worker restarted after a crash
    must not meet a half-edited or broken one."""

    def __init__(self, source: Path, directory: Path) -> None:
        self.source = source
        self.startup = directory / "startup.yaml"
        self.current = directory / "current.yaml"
        text = source.read_text(encoding="utf-8")
        self.running = parse_config_text(text, source)
        for copy in (self.startup, self.current):
            copy.write_text(text, encoding="utf-8")

    def reload(self) -> bool:
        """Check the operator's file; True when the workers are to be replaced with it."""
        try:
            reload, text = prepare_reload(self.source, self.running)
        except ConfigError as exc:
            log_reload_failed(exc, self.source)
            return False
        partial = self.current.with_suffix(".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(self.current)  # a worker starting meanwhile reads one copy or the other, whole
        if reload.config.logging != self.running.logging:
            configure_logging(reload.config.logging.format, reload.config.logging.level)
        self.running = reload.config
        log_reloaded(reload, self.source)
        return True


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, which replaces the workers one by one on SIGHUP (each new one ready
    before an old one is stopped; an old one finishes its requests first), replacing them only
    with a configuration that passed the checks."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], workers: _WorkerConfig) -> None:
        super().__init__(config, sockets)
        self.workers = workers

    def handle_hup(self) -> None:
        if self.workers.reload():
            super().handle_hup()


def serve_workers(config: Config, config_file: Path, workers: int, host: str | None, port: int | None) -> None:
    """Run ``workers`` gateway processes on one listening socket, under uvicorn's supervisor
    (it restarts a worker that dies; SIGINT/SIGTERM stop them all gracefully, SIGHUP reloads the
    configuration by replacing them one by one).

    Limits, breakers, the ledger and alerts are shared through Redis, as between nodes; in-process
    state would give each worker limits of its own, so Redis is required.
    """
    if config.redis is None:
        raise ConfigError(
            f"--workers {workers} needs `redis:` in the configuration: limits are enforced exactly "
            "across processes only through Redis (in-process limits would be per worker)."
        )
    configure_logging(config.logging.format, config.logging.level)
    # The schema is made once, here: workers starting together would race to create tables.
    run(_create_schema(config))
    directory = Path(tempfile.mkdtemp(prefix="quotagate-"))  # mode 0700: the copies are the operator's
    try:
        copies = _WorkerConfig(config_file.resolve(), directory)
        os.environ[WORKER_CONFIG_ENV] = str(copies.current)
        os.environ[WORKER_STARTUP_CONFIG_ENV] = str(copies.startup)
        os.environ[WORKER_SOURCE_ENV] = str(copies.source)
        settings = uvicorn_config(
            f"{__name__}:worker_gateway",
            host or config.server.host,
            port if port is not None else config.server.port,
            workers=workers,
            header_timeout=config.server.header_timeout,
            body_timeout=config.server.body_timeout,
        )
        # A worker takes 2-4 s to start on a busy machine (imports, tokenizers, the database);
        # within uvicorn's default of 5 s a reload would often give up on a replacement.
        settings.timeout_worker_healthcheck = WORKER_START_SECONDS
        gc.enable()  # the supervisor serves nothing itself (see `quotagate serve`)
        _Supervisor(settings, [settings.bind_socket()], copies).run()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


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
    old one cannot be shown again) and the previous demo keys are deleted.

    The port is bound before the keys are touched: a second ``quotagate serve`` on a busy port
    must fail without deleting the demo key of the gateway that holds the port.
    """
    gateway_sock = listening_socket(host, port)
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
    gateway = Gateway(config, on_started=tune_gc_for_serving)
    # The demo's own master key, in place of the configuration's (which names none).
    gateway.admin.auth = AdminAuth(master, gateway.admin.auth.admin_keys)
    server = _Server(uvicorn_config(gateway, host))
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
        # The demo has no file to reload: SIGHUP logs so, and the demo goes on serving.
        with _reload_on_sighup(gateway):
            await server.serve(sockets=[gateway_sock])
    finally:
        notifier.cancel()
        if mock_server is not None:
            mock_server.should_exit = True
        for task in tasks:
            await task
    if not server.started:
        raise SystemExit(1)
