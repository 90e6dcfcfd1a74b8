"""One Redis connection that every coroutine of a process shares, for the request path.

redis-py's asyncio client spends more CPU per command (a pooled connection checked out and
back, a lock, a command object) than the whole of the rest of a limit decision. RESP lets a
client write commands without waiting and match the replies in order, so this connection does
only that: commands issued in the same turn of the event loop go out in one write, hiredis
parses the replies, and each reply resolves the future of the command that asked for it, at a
fraction of the cost (bench/NOTES.md).

It is for short commands on the request path (EVALSHA, XADD). A blocking command (XREADGROUP
BLOCK, BLPOP) would hold up every caller behind it: give it a connection of its own, with a
``timeout`` longer than the block (as the ledger's consumer has).

Failure handling: a lost connection fails every waiting command with ``ConnectionError`` and the
next command connects again. Every command has a deadline, ``timeout``: one timer per connection,
armed for the oldest unanswered command, fails everything waiting with ``TimeoutError`` and
drops the connection when that command has waited too long (replies come in order, so nothing
behind it can be answered first). A caller that gives up earlier leaves its reply to be
discarded when it comes.

A call that has to connect first, or to load a script Redis has lost (NOSCRIPT, as after a
restart), is bounded in total too: connecting, the handshake (AUTH, SELECT), loading and the
command all within ``timeout`` of the call. The connection attempt itself, shared by every caller
that arrives meanwhile, has one deadline of its own, ``connect_timeout``, for the TCP (and TLS)
connect and the handshake together; a caller that stops waiting for it at its ``timeout`` leaves
it running for those that come next. So a Redis that stopped answering costs each caller at most
``timeout``, whatever the call had to do, and callers need no timer of their own (the limiter
relies on this: ``RedisStore.call_timeout``).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis


class RedisReplyError(Exception):
    """Redis answered a command with an error (a script error, LOADING, BUSY, ...)."""

    sent = 0.0  # the loop time its command was written


class LuaScript:
    """A script known by its SHA1; loaded into Redis on first use and again after NOSCRIPT."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest().encode()


class Packed:
    """Arguments already encoded as RESP bulk strings, sent as they are.

    For the parts of a command that never change (a limit's key and parameters): encoding them
    once saves most of the cost of building the command.
    """

    __slots__ = ("count", "data")

    def __init__(self, *args: Any) -> None:
        self.count = len(args)
        self.data = _pack(args, header=False)


def _pack(args: tuple[Any, ...], header: bool = True) -> bytes:
    """A command in RESP: an array of bulk strings."""
    parts = [b""]
    count = len(args)
    for arg in args:
        kind = type(arg)
        if kind is Packed:
            parts.append(arg.data)
            count += arg.count - 1
            continue
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()
        elif kind is int:
            data = b"%d" % arg
        elif kind is float:
            data = repr(arg).encode()  # the shortest text that reads back as the same double
        else:
            raise TypeError(f"cannot send {kind.__name__} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    if header:
        parts[0] = b"*%d\r\n" % count
    return b"".join(parts)


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    """TLS settings from a ``rediss://`` URL's query: a private CA, a client certificate, and
    ``ssl_cert_reqs=none`` to skip verifying the server (a test server; never in production)."""
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
    if "ssl_certfile" in query:
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"), query.get("ssl_password"))
    if query.get("ssl_cert_reqs", "required").lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif query.get("ssl_check_hostname", "true").lower() in ("false", "0", "no"):
        context.check_hostname = False
    return context


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: RedisConnection) -> None:
        self._owner = owner
        self._reader = hiredis.Reader(replyError=RedisReplyError)
        self.transport: asyncio.Transport | None = None
        # (future, loop time the command was written) per command awaiting its reply, in order.
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        # Commands written in this turn of the loop, sent together by flush().
        self.outbox: list[bytes] = []
        self.flush_scheduled = False
        self.closed = False
        self.deadline: asyncio.TimerHandle | None = None  # for the oldest unanswered command

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionError(f"Redis sent something that is not RESP: {exc}"))
                return
            if reply is False:
                return
            if not waiting:
                # A reply nobody asked for: the stream is out of step; start afresh.
                self._fail(ConnectionError("Redis sent a reply to no command"))
                return
            future, sent = waiting.popleft()
            if not future.done():  # its caller may have given up
                if type(reply) is RedisReplyError:
                    reply.sent = sent  # a NOSCRIPT's reload has what is left of the call's deadline
                future.set_result(reply)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.closed or self.transport is None or not self.outbox:
            return  # when closed, the waiters have already been failed
        outbox = self.outbox
        self.transport.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])
        outbox.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection to Redis lost: {exc}" if exc else "connection to Redis closed"))

    def check_deadline(self) -> None:
        self.deadline = None
        if self.closed or not self.waiting:
            return
        loop = asyncio.get_running_loop()
        sent = self.waiting[0][1]
        timeout = self._owner.timeout
        if loop.time() - sent >= timeout:
            self._fail(TimeoutError(f"Redis did not answer within {timeout:g}s"))
        else:
            self.deadline = loop.call_at(sent + timeout, self.check_deadline)

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        self.outbox.clear()
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        self._owner._lost(self)


def _consume_error(attempt: asyncio.Future[Any]) -> None:
    # Every caller of a failed attempt may have given up (cancelled) before it ended: its
    # error is then nobody's, and asyncio would log "exception was never retrieved".
    if not attempt.cancelled():
        attempt.exception()


class RedisConnection:
    """``RedisConnection("redis://[user:password@]host:port/db")``; ``rediss://`` for TLS, with
    ``?ssl_ca_certs=CA.pem&ssl_certfile=CERT.pem&ssl_keyfile=KEY.pem`` for a private CA and a
    client certificate (redis-py's names for the same settings)."""

    cluster = False  # one server: a script may touch any keys

    def __init__(self, url: str, *, timeout: float = 0.25, connect_timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a Redis URL: {url!r} (expected redis://, rediss:// or unix://)")
        self._scheme = parts.scheme
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = parts.path if parts.scheme == "unix" else ""
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        query = dict(parse_qsl(parts.query))
        db = query.get("db", db)
        self._db = int(db) if db else 0
        self._tls = _tls_context(query) if parts.scheme == "rediss" else None
        self._connect_timeout = connect_timeout
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    # -- connecting ------------------------------------------------------------------------------

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        handshake: list[tuple[Any, ...]] = []
        if self._password is not None:
            handshake.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if self._db:
            handshake.append(("SELECT", self._db))
        protocol: _Protocol | None = None
        try:
            # One deadline for the whole attempt: a Redis that accepts connections (the kernel does
            # that for it) but answers nothing must not cost a connect_timeout per step.
            async with asyncio.timeout(self._connect_timeout):
                if self._scheme == "unix":
                    _, protocol = await loop.create_unix_connection(lambda: _Protocol(self), self._path)
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self), self._host, self._port, ssl=self._tls
                    )
                if handshake:
                    # In one write, like any commands of one turn: one round trip.
                    futures: list[asyncio.Future[Any]] = []
                    for command in handshake:
                        future = loop.create_future()
                        protocol.waiting.append((future, loop.time()))
                        protocol.outbox.append(_pack(command))
                        futures.append(future)
                    protocol.flush()
                    for future in futures:
                        reply = await future
                        if isinstance(reply, RedisReplyError):
                            raise reply
        except BaseException:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()
            raise
        return protocol

    async def _connected(self) -> _Protocol:
        # Callers that arrive while a connection is being made share that attempt. Each awaits
        # the attempt it joined, held in a local: ``_connecting`` may already be cleared, or be
        # a newer attempt, by the time a caller wakes (the first caller woken by a failed attempt
        # used to clear it, and the next one read None).
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._attempt())
            connecting.add_done_callback(_consume_error)
        return await asyncio.shield(connecting)

    async def _attempt(self) -> _Protocol:
        """One connection attempt, shared by the callers of ``_connected``; it alone installs its
        result and clears ``_connecting``, so that happens once, whoever wakes first."""
        try:
            protocol = await self._connect()
        finally:
            self._connecting = None
        self._protocol = protocol
        return protocol

    def _lost(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    # -- commands --------------------------------------------------------------------------------

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply; an error reply raises ``RedisReplyError``."""
        command = _pack(args)
        future = self._submit(command)
        reply = await future if future is not None else await self._call_slowly(command)
        if type(reply) is RedisReplyError:
            raise reply
        return reply

    async def evalsha(self, script: LuaScript, keys: list[Any], args: list[Any], key_count: int | None = None) -> Any:
        """Run a script by its SHA1, loading it first when Redis does not know it (NOSCRIPT).

        ``key_count`` is needed when ``keys`` holds ``Packed`` items (each may carry several).
        A NOSCRIPT reply means the script did not run, so running it again counts nothing twice.
        """
        count = len(keys) if key_count is None else key_count
        return await self.run_script(script, _pack(("EVALSHA", script.sha, count, *keys, *args)))

    async def run_script(self, script: LuaScript, command: bytes) -> Any:
        """``command``, an EVALSHA of ``script`` encoded by the caller, as ``evalsha`` runs it."""
        future = self._submit(command)
        if future is None:
            reply = await self._call_slowly(command, script)
        else:
            reply = await future
            if type(reply) is RedisReplyError and str(reply).startswith("NOSCRIPT"):
                reply = await self._call_slowly(command, script, reply)
        if type(reply) is RedisReplyError:
            raise reply
        return reply

    async def _call_slowly(
        self, command: bytes, script: LuaScript | None = None, noscript: RedisReplyError | None = None
    ) -> Any:
        """The rare ways of a call, within ``timeout`` of its start: connecting first (when there
        is no connection, ``noscript`` None), then loading ``script`` if Redis does not know it."""
        loop = asyncio.get_running_loop()
        began = noscript.sent if noscript is not None else loop.time()
        deadline = asyncio.timeout_at(began + self.timeout)
        try:
            async with deadline:
                reply: Any = noscript
                if reply is None:
                    await self._connected()
                    reply = await self._send(command, began)
                if script is not None and type(reply) is RedisReplyError and str(reply).startswith("NOSCRIPT"):
                    # Written together, answered in one round trip; the load's error, if any, is
                    # the one to report (the script then cannot have run).
                    loading = self._send(_pack(("SCRIPT", "LOAD", script.source)), began)
                    loaded, reply = await asyncio.gather(loading, self._send(command, began))
                    if type(loaded) is RedisReplyError:
                        return loaded
        except TimeoutError as exc:
            if deadline.expired():
                raise TimeoutError(f"Redis did not answer within {self.timeout:g}s") from exc
            raise
        return reply

    def _send(self, command: bytes, began: float) -> asyncio.Future[Any]:
        future = self._submit(command, began)
        if future is None:
            raise ConnectionError("connection to Redis lost")
        return future

    def _submit(self, command: bytes, began: float | None = None) -> asyncio.Future[Any] | None:
        """Queue a command on the open connection and return the future of its reply; None when
        there is no open connection (a plain function, not a coroutine: it runs per command).

        ``began``: the start of a call that waited before it could write (to connect). Its command's
        deadline counts from then, so that a Redis that stops answering is dropped as its caller
        gives up, not just after (the next call would be written to it); but from no earlier
        than the command before it, as the connection's one timer expects."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        now = loop.time()
        if began is not None:
            now = max(began, protocol.waiting[-1][1]) if protocol.waiting else began
        protocol.waiting.append((future, now))
        protocol.outbox.append(command)
        if not protocol.flush_scheduled:
            # Everything asked for in this turn of the loop goes out in one write.
            protocol.flush_scheduled = True
            loop.call_soon(protocol.flush)
        if protocol.deadline is None:
            protocol.deadline = loop.call_at(now + self.timeout, protocol.check_deadline)
        return future

    async def check(self) -> None:
        """Raise unless this Redis can serve the gateway: it answers, and it is not a node of a
        Cluster (which would answer MOVED to most keys: the URL must then say redis+cluster://)."""
        info = await self.execute("INFO", "cluster")
        if b"cluster_enabled:1" in info:
            raise ConnectionError(
                "this Redis is a node of a Redis Cluster: configure redis: as redis+cluster://HOST:PORT[,HOST:PORT...]"
            )

    async def aclose(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
