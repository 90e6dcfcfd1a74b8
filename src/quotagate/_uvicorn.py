"""How quotagate runs under uvicorn, in a module that imports nothing else of quotagate.

The benchmark's bare pass-through proxy uses the same settings without loading the gateway (its
modules would make its heap, and so every garbage collection, larger).

uvicorn bounds only the idle time between requests (``timeout_keep_alive``, armed once a response
is complete). A connection that never sends its head, or sends it a byte at a time, and a request
whose Content-Length promises more than comes, were held for ever (issue 18). ``Protocol`` adds
two deadlines: the head must be in ``header_timeout`` after the connection opened or the next
request began (else the connection is closed), and a body must not stop: ``body_timeout`` seconds
without body bytes get a 408 in OpenAI's shape, and the connection is closed. The body's is an idle
timeout, not a total, because a large body over a slow link takes as long as it takes (16 MiB at
4 Mbit/s is over 30 s). Malformed framing keeps uvicorn's own plain-text 400.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Set in the request's scope when its body timed out: the application, which then receives
# http.disconnect, records a 408 rather than a client that left.
BODY_TIMED_OUT = "quotagate.body_timed_out"

_408_BODY = (
    b'{"error":{"message":"The request body did not arrive in time.",'
    b'"type":"invalid_request_error","param":null,"code":"request_timeout"}}'
)
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    b"connection: close\r\n\r\n%s" % (len(_408_BODY), _408_BODY)
)

# What a connection is waiting for, when it has a deadline.
_NOTHING, _HEAD, _BODY = 0, 1, 2


class Config(uvicorn.Config):
    """uvicorn's settings and the two deadlines ``Protocol`` adds."""

    def __init__(self, app: Any, *, header_timeout: float, body_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for the request head, and an idle timeout for
    its body.

    A request that arrives whole in one read (nearly all) arms no timer: the state is looked at
    after each read, and a timer is set only while a head or body is incomplete. Body data that
    comes while the timer runs only notes the time; the timer, when it fires, sets itself again
    for the rest of ``body_timeout`` from then (one timer at a time, however many reads)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout: float = getattr(config, "header_timeout", 10.0)
        self._body_timeout: float = getattr(config, "body_timeout", 30.0)
        self._waiting_for = _NOTHING
        self._deadline: asyncio.TimerHandle | None = None
        self._body_data_at = 0.0  # loop time of the latest body bytes, while waiting for more

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for(_HEAD)  # the first head, counted from the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._wait_for(_NOTHING)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        HttpToolsProtocol.data_received(self, data)
        scope = self.scope
        cycle = self.cycle
        if scope is not None and "method" not in scope:
            waiting_for = _HEAD  # a head begun, not complete (the method is set when it is)
        elif cycle is not None and cycle.more_body:
            waiting_for = _BODY
        elif self._waiting_for == _NOTHING:
            return  # the usual case: the request came whole
        else:
            waiting_for = _NOTHING
        if waiting_for != self._waiting_for:
            self._wait_for(waiting_for)
        elif waiting_for == _BODY:
            self._body_data_at = self.loop.time()

    def _wait_for(self, what: int) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting_for = what
        if what == _NOTHING:
            cycle = self.cycle
            if (
                cycle is not None
                and cycle.response_complete
                and self.timeout_keep_alive_task is None
                and not self.pipeline
                and self.transport is not None
                and not self.transport.is_closing()
            ):
                # The rest of a body came after the response, and each read cancels uvicorn's
                # keep-alive timer, which only a response sets again: set it here.
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
        else:
            timeout = self._header_timeout if what == _HEAD else self._body_timeout
            self._body_data_at = self.loop.time()
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        cycle = self.cycle
        if self._waiting_for == _HEAD and cycle is not None and not cycle.response_complete:
            # The next head waits behind a response still being sent (pipelining).
            self._deadline = self.loop.call_later(self._header_timeout, self._expired)
            return
        if self._waiting_for == _BODY and cycle is not None and not cycle.response_complete:
            idle_until = self._body_data_at + self._body_timeout
            if idle_until > self.loop.time():
                # Bytes came since the timer was set: the client is slow, not gone.
                self._deadline = self.loop.call_at(idle_until, self._expired)
                return
            if self.flow.read_paused:
                # The application has not taken what came: the wait is the gateway's, not the client's.
                self._deadline = self.loop.call_later(self._body_timeout, self._expired)
                return
            if not cycle.response_started:
                cycle.scope[BODY_TIMED_OUT] = True  # type: ignore[literal-required]
                transport.write(_408)
            # The application sees a client that left; what it sends now goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self._waiting_for = _NOTHING
        transport.close()


def event_loop_name() -> str:
    return "uvloop" if sys.platform != "win32" else "asyncio"


def uvicorn_config(
    app: object,
    host: str,
    port: int | None = None,
    workers: int = 1,
    *,
    header_timeout: float = 10.0,
    body_timeout: float = 30.0,
) -> uvicorn.Config:
    """``app`` is an ASGI app, or with several workers the import string of a function that
    makes one (each worker process calls it)."""
    return Config(
        app,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        host=host,
        port=port or 0,
        workers=workers,
        factory=isinstance(app, str),
        loop=event_loop_name(),
        http=Protocol,
        lifespan="on",
        # Access logs cost more CPU than the proxying itself; request accounting is the ledger's job.
        access_log=False,
        log_level="warning",
        server_header=False,
        # The gateway never reads the client's address, so X-Forwarded-* need not be rewritten
        # into every request's scope (a middleware layer per request).
        proxy_headers=False,
        timeout_keep_alive=30,
    )
