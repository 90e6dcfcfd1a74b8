"""Noticing a client that hangs up, so that a long upstream call stops with it.

A request's task is cancelled when its client disconnects; what it used is still settled and
accounted (see the proxy). Watchers cost a task each, so only requests that last start one.
"""

from __future__ import annotations

import asyncio

from ._asgi import Receive

# A client that hangs up is noticed by a task waiting for http.disconnect (uvicorn's send() drops
# writes to a closed connection without a word). Most requests are over before that could matter,
# so watchers are started only for requests that have lasted at least this long: one sweep of the
# requests in flight every so often, rather than a timer or a task for each request. A tenth of a
# second is nothing beside a model's answer (what the watch saves is the rest of a long call) but
# above a busy gateway's typical latency: a lower one would start a watcher task for most requests
# under load (bench/NOTES.md).
WATCH_AFTER_SECONDS = 0.1


class DisconnectWatch:
    """Cancels the request's task when its client disconnects; started by Watches once the request
    has lasted WATCH_AFTER_SECONDS, stopped before the response's last message (after which
    http.disconnect only means "done")."""

    __slots__ = ("_receive", "_registry", "_task", "_watcher", "gone", "since")

    def __init__(self, receive: Receive, registry: Watches) -> None:
        # Asked once: in Python 3.11 every lookup of the running loop is a getpid() system call.
        loop = asyncio.get_running_loop()
        self._receive = receive
        self._task = asyncio.current_task(loop)
        self._watcher: asyncio.Future[None] | None = None
        self._registry: Watches | None = registry
        self.gone = False
        self.since = registry.add(self, loop)

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        # The request is cancelled, which cancels the upstream call at once; what was used is
        # still settled and accounted.
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        if self._registry is not None:
            self._registry.discard(self)
            self._registry = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None


class Watches:
    """The requests in flight, in arrival order; a sweep starts the watchers of those that have
    lasted WATCH_AFTER_SECONDS."""

    def __init__(self) -> None:
        self._waiting: dict[DisconnectWatch, None] = {}  # insertion-ordered: oldest first
        self._sweeping = False

    def add(self, watch: DisconnectWatch, loop: asyncio.AbstractEventLoop) -> float:
        now = loop.time()
        self._waiting[watch] = None
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(WATCH_AFTER_SECONDS, self._sweep)
        return now

    def discard(self, watch: DisconnectWatch) -> None:
        self._waiting.pop(watch, None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        started_before = loop.time() - WATCH_AFTER_SECONDS
        waiting = self._waiting
        while waiting:
            oldest = next(iter(waiting))
            if oldest.since > started_before:
                break
            del waiting[oldest]
            oldest.start()
        if waiting:
            loop.call_later(WATCH_AFTER_SECONDS / 2, self._sweep)
        else:
            self._sweeping = False
