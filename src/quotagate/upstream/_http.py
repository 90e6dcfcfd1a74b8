"""quotagate's own HTTP/1.1 client for the calls to providers: pooled keep-alive connections,
each an asyncio protocol whose responses httptools (llhttp, Node's parser, already what uvicorn
parses requests with) takes apart.

Why not aiohttp's client: a gateway does one kind of request (a POST with a ready-made body to
a handful of endpoints, the same headers every time) and relays the answer. aiohttp's client
builds a ClientRequest, a ClientResponse, a payload, header multidicts, a timer context and a
connection wrapper for each one; it was the largest single cost of a proxied request
(bench/NOTES.md). Here the request head of each (endpoint, headers) pair is encoded once, a
request is one write, and a response whose body came with its head (the usual case for a
completion) is read without another turn of the loop. bench/bare_proxy.py measures both clients.

Semantics kept from aiohttp's client, which quotagate used before:
- a connect timeout, and a read timeout: the longest silence while a response is awaited, the
  first-byte timeout until its head is in, then the chunk timeout between reads of the body;
- keep-alive: a connection goes back to the pool once its response has been read to the end,
  unless the server said ``Connection: close``; one idle longer than ``keepalive_seconds`` is
  closed instead of reused, and one the server closed leaves the pool at once;
- TLS with the system's certificate authorities (or a given ``ssl.SSLContext``), verified;
- gzip and deflate bodies are decompressed (no ``Accept-Encoding`` is sent, so a server should
  not compress; some do anyway);
- a stream is read as it arrives, with back-pressure: reading from the socket pauses while
  more than ``_HIGH_WATER`` bytes wait for the reader. A body read whole is not held back (its
  reader waits for the end, so a pause would never be lifted: a body over 256 KiB hung until
  the chunk timeout, issue 18), but is refused past ``max_response_bytes`` (ResponseTooLarge).

Proxies, as curl and the requests library take them: ``HTTPS_PROXY`` for https:// URLs,
``HTTP_PROXY`` for http:// ones, hosts in ``NO_PROXY`` (which must name 127.0.0.1 for it) reached
directly, all read once when the client is made; a deployment's own ``proxy`` overrides them. An
https:// origin is reached through a ``CONNECT`` tunnel with TLS to the origin inside it; an
http:// one by sending the proxy the request with its absolute URL. Which proxy, if any, is
decided once per URL with the rest of its ``_Route``: without one, a request costs what it did.

A request that meets a pooled connection the server had just closed (the close and the write
crossed on the wire) is sent once more on a new connection: nothing of it was answered, and
such a race must not count as a failure of the deployment.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import zlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

import httptools

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# The largest body read whole. The biggest honest answers are embeddings: 2,048 inputs of 3,072
# floats are about 130 MB as JSON. Past this a provider is misbehaving, and the gateway would
# hold it all in memory.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# Methods sent without a Content-Length when they carry no body (HttpClient.request).
_BODILESS_METHODS = frozenset(("GET", "HEAD", "DELETE", "OPTIONS"))


class ConnectTimeout(Exception):
    """No connection within the connect timeout; ``proxy`` names the proxy it went through."""

    def __init__(self, proxy: str | None = None) -> None:
        super().__init__()
        self.proxy = proxy


class ReadTimeout(Exception):
    """The server sent nothing for the read timeout while the client waited."""


class ConnectFailed(Exception):
    """The connection could not be made; ``reason`` says why (refused, no such host, TLS)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Disconnected(Exception):
    """The server closed the connection, or it broke, before the response was complete."""

    def __init__(self, reason: str = "server disconnected", *, answered: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        # False: not a byte of the response had arrived.
        self.answered = answered


class ResponseTooLarge(Disconnected):
    """A body read whole outgrew ``max_response_bytes``; the connection is dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"its response is larger than the gateway's limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where it listens, and the ``Proxy-Authorization`` its URL's user:password
    make (kept out of ``repr`` and of every message, which show ``shown``)."""

    scheme: str
    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, source: str) -> Proxy:
        """``url`` as HTTPS_PROXY or a deployment's ``proxy`` gives it (a bare host:port is an
        http:// proxy, as curl takes it); ``source`` names where it came from in errors."""
        if "://" not in url:
            url = "http://" + url
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        except ValueError:
            raise ConnectFailed(f"the proxy URL of {source} has no valid port") from None
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ConnectFailed(f"the proxy URL of {source} is not an http:// or https:// URL with a host")
        authorization = None
        if parts.username is not None:
            user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(user_password.encode()).decode("ascii")
        return cls(scheme, parts.hostname, port, authorization)

    @property
    def shown(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class _Route:
    """What is encoded once per (URL, headers, proxy setting): where to connect, through which
    proxy, and the request head up to its Content-Length."""

    __slots__ = ("forwarded", "head", "headers", "key", "origin", "proxy", "proxy_setting")

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        proxy_setting: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ConnectFailed("the URL is not an http:// or https:// URL with a host")
        try:
            port = parts.port or _DEFAULT_PORTS[scheme]
        except ValueError:
            raise ConnectFailed("the URL's port is not a number from 0 to 65535") from None
        host = parts.hostname
        self.origin = (scheme, host, port)
        self.proxy_setting = proxy_setting
        self.proxy = _choose_proxy(scheme, host, port, proxy_setting, environment or {})
        # The pool's key: a tunnel through a proxy is not a direct connection to the origin, and
        # two proxies (or two sets of proxy credentials) do not share their connections.
        self.key: Hashable = self.origin if self.proxy is None else (self.origin, self.proxy)
        # http:// through a proxy: the proxy is sent the request itself, with the absolute URL.
        self.forwarded = self.proxy is not None and scheme == "http"
        shown = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            shown += f":{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if self.forwarded:
            target = f"http://{shown}{target}"
        lines = [f"POST {target} HTTP/1.1", f"Host: {shown}"]
        if self.forwarded and self.proxy is not None and self.proxy.authorization is not None:
            lines.append(f"Proxy-Authorization: {self.proxy.authorization}")
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                # A line break in a configured value (an API key read with its newline) would
                # split the request; refuse rather than send it.
                raise ConnectFailed(f"header {name.splitlines()[0]!r} holds a line break")
            lines.append(f"{name}: {value}")
        try:
            self.head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        except UnicodeEncodeError:
            # HTTP/1.1 heads are bytes: what latin-1 cannot say was mistyped into the configuration.
            raise ConnectFailed("the URL or a header holds characters HTTP/1.1 cannot carry") from None
        self.headers = dict(headers)


def _choose_proxy(
    scheme: str, host: str, port: int, setting: str | None, environment: Mapping[str, str]
) -> Proxy | None:
    """The deployment's own proxy if it has one, else the environment's for the scheme unless
    NO_PROXY names the host (as urllib reads it: suffixes, host:port, or ``*``)."""
    if setting is not None:
        return Proxy.parse(setting, "the deployment's proxy setting")
    url = environment.get(scheme)
    if not url:
        return None
    # urllib splits a port off the end, which an IPv6 address would lose a piece to.
    if proxy_bypass_environment(host if ":" in host else f"{host}:{port}", environment):
        return None
    return Proxy.parse(url, f"{scheme.upper()}_PROXY")


class Response:
    """One response: its status and head (names lower-cased), then its body, read whole or as it
    arrives. ``close()`` gives the connection back, or drops it if the body was not read to the
    end."""

    __slots__ = ("_connection", "_decoder", "headers", "status")

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection
        self.status = connection.status
        self.headers: dict[str, str] = connection.response_headers
        encoding = self.headers.get("content-encoding", "").strip().lower()
        # wbits 47: a gzip or a zlib ("deflate") stream, told apart by its header.
        self._decoder = zlib.decompressobj(47) if encoding in ("gzip", "x-gzip", "deflate") else None

    async def read(self, read_timeout: float) -> bytes:
        """The whole body; the connection goes back to the pool."""
        connection = self._connection
        if connection is None:
            return b""
        limit = connection._pool.max_response_bytes
        try:
            connection.read_whole()
            while not connection.complete:
                await connection.wait(read_timeout)
            body = connection.take()
        except BaseException:
            self.close()
            raise
        self.close()
        if self._decoder is not None:
            # The limit holds for what the body inflates to as well: a small gzip can hold gigabytes.
            try:
                whole = self._decoder.decompress(body, limit + 1)
            except zlib.error as exc:
                raise Disconnected(f"undecodable {self.headers.get('content-encoding')} body") from exc
            if len(whole) > limit:
                raise ResponseTooLarge(limit)
            return whole
        return body

    async def next_chunk(self, read_timeout: float) -> bytes:
        """What arrived since the last call, waiting up to ``read_timeout`` for something; b"" at the
        end of the body."""
        connection = self._connection
        if connection is None:
            return b""
        try:
            while True:
                if connection.buffered:
                    chunk = self._decoded(connection.take(), final=False)
                    if chunk:
                        return chunk
                    continue
                if connection.complete:
                    self.close()
                    return self._decoded(b"", final=True)
                await connection.wait(read_timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.release()  # which drops it unless the body was read to the end

    def _decoded(self, data: bytes, final: bool) -> bytes:
        decoder = self._decoder
        if decoder is None:
            return data
        try:
            out = decoder.decompress(data)
            if final:
                out += decoder.flush()
        except zlib.error as exc:
            raise Disconnected(f"undecodable {self.headers.get('content-encoding')} body") from exc
        return out


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an origin, carrying one request at a time."""

    def __init__(self, pool: HttpClient, key: Hashable, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self.key = key  # the pool's: the origin, or (origin, proxy) through a proxy
        # The proxy that is sent requests in absolute form (http:// through a proxy): its 407
        # is a refusal to connect, not an answer of the provider.
        self.forwarded_to: Proxy | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: list[bytes] = []
        self.buffered = 0
        self._paused = False
        # Set while the body is read whole: no back-pressure, but a bound on its size.
        self._whole = False
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.response_headers: dict[str, str] = {}
        self.status = 0
        self.head_done = False
        self.complete = False
        self._answered = False
        self._until_close = False
        self._keep_alive = False
        self.error: Exception | None = None
        self.closed = False
        self.reused = False
        self.idle = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:
            # Nothing is owed on an idle connection: what comes cannot be trusted to frame the
            # next response.
            self.abort()
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Disconnected(f"malformed response ({exc})"))
            self.abort()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed connection is not reused

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self.head_done and not self.complete and self._until_close:
            # No Content-Length and not chunked: the body is what came before the close.
            self.complete = True
        elif not self.complete:
            reason = "server disconnected" if exc is None else (getattr(exc, "strerror", None) or type(exc).__name__)
            self._fail(Disconnected(reason, answered=self._answered))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._raw_headers = []  # an interim answer (103 Early Hints): the real head follows
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in self._raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.status = status
        self.response_headers = headers
        self.head_done = True
        self._until_close = "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER:
            if self._whole:
                if self.buffered > self._pool.max_response_bytes:
                    self._chunks = []
                    self._fail(ResponseTooLarge(self._pool.max_response_bytes))
                    self.abort()
            elif not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            # Asked now: once the message is over, llhttp has reset and always answers False.
            self._keep_alive = self._parser.should_keep_alive()

    # used by HttpClient and Response

    def send(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    async def wait(self, read_timeout: float) -> None:
        """Until something arrives, the connection ends, or ``read_timeout`` passes (ReadTimeout)."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    def read_whole(self) -> None:
        """From now on the body is wanted whole: stop holding the server back."""
        self._whole = True
        if self.buffered > self._pool.max_response_bytes:
            self._fail(ResponseTooLarge(self._pool.max_response_bytes))
            self.abort()
        elif self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self.buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def release(self) -> None:
        """Back to the pool if the exchange ended cleanly and the server keeps the connection."""
        if self.closed or not self.complete or self.buffered or not self._keep_alive:
            self.abort()
            return
        self._parser = httptools.HttpResponseParser(self)
        self._raw_headers = []
        self.response_headers = {}
        self.status = 0
        self.head_done = self.complete = self._answered = self._keep_alive = self._whole = False
        self.reused = self.idle = True
        self.idle_since = self._loop.time()
        self._pool.give_back(self)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self._transport is not None:
                self._transport.abort()

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout())


def _refusal(proxy: Proxy, status: int, reason: str) -> str:
    if status != 407:
        what = "refused the tunnel"
    elif proxy.authorization is None:
        what = "asks for credentials"
    else:
        what = "did not accept its credentials"
    answer = f"{status} {reason}" if reason else str(status)
    return f"proxy {proxy.shown} {what} ({answer})"


class _Tunnel(asyncio.Protocol):
    """The connection to a proxy until its answer to CONNECT is in; then TLS takes it over."""

    _MAX_HEAD = 64 * 1024

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._answer: asyncio.Future[bytes | None] = loop.create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if self._answer.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self._answer.set_result(self._buffer)
        elif len(self._buffer) > self._MAX_HEAD:
            self._answer.set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answer.done():
            self._answer.set_result(b"")

    async def open(self, transport: asyncio.Transport, proxy: Proxy, host: str, port: int) -> None:
        """Ask ``proxy`` for a tunnel to host:port; ConnectFailed unless it answers 2xx."""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if proxy.authorization is not None:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = await self._answer
        if not answer:
            what = "closed the connection" if answer == b"" else "answered CONNECT with something not HTTP"
            raise ConnectFailed(f"proxy {proxy.shown} {what}")
        head, _, rest = answer.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ConnectFailed(f"proxy {proxy.shown} answered CONNECT with something not HTTP")
        status = int(parts[1])
        if not 200 <= status < 300:
            # The reason phrase is the proxy's, shown only if it is short plain text.
            reason = parts[2] if len(parts) > 2 and parts[2].isprintable() and len(parts[2]) <= 80 else ""
            raise ConnectFailed(_refusal(proxy, status, reason))
        if rest:
            # The origin speaks only after the TLS ClientHello: these bytes are not the origin's.
            raise ConnectFailed(f"proxy {proxy.shown} sent data before the tunnel's TLS began")


class HttpClient:
    """The pool: idle connections per origin (scheme, host, port), or per (origin, proxy) through
    a proxy, the most recently used first.

    ``trust_env``: take proxies from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (read here, once)."""

    def __init__(
        self,
        *,
        keepalive_seconds: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        trust_env: bool = True,
    ) -> None:
        self._keepalive = keepalive_seconds
        self.max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context
        # Only what the client uses: "https", "http" and "no" (a CGI's HTTP_PROXY is dropped, as
        # urllib drops it: a client's "Proxy:" header would have set it).
        found = getproxies_environment() if trust_env else {}
        self._environment = {k: v for k, v in found.items() if k in ("https", "http", "no")}
        self._idle: dict[Hashable, list[_Connection]] = {}
        self._routes: dict[str, _Route] = {}
        self._open: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        connect_timeout: float,
        first_byte_timeout: float,
        proxy: str | None = None,
    ) -> Response:
        """Send a POST and return once the response head is in (the body may be too). ``proxy``:
        this request's own proxy URL, instead of the environment's."""
        route = self._routes.get(url)
        if route is None or route.headers != headers or route.proxy_setting != proxy:
            if len(self._routes) > 1024:  # URLs come from the configuration; bound it anyway
                self._routes.clear()
            route = self._routes[url] = _Route(url, headers, proxy, self._environment)
        request = b"%s%d\r\n\r\n%s" % (route.head, len(body), body)
        return await self._send(route, request, connect_timeout, first_byte_timeout)

    # -- any method: the passthrough's requests (GET, DELETE, multipart uploads) -------------------

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        connect_timeout: float,
        first_byte_timeout: float,
        proxy: str | None = None,
    ) -> Response:
        """Send ``method`` with ``headers`` as given (nothing added but Host and, for a body or a
        method that expects one, Content-Length) and return once the response head is in. The
        head is encoded for this request alone: these URLs carry ids and query strings, which
        would only churn ``post``'s cache of heads."""
        if not (method.isascii() and method.isalpha()):
            raise ConnectFailed("the request method is not an HTTP token")
        post_head = _Route(url, headers, proxy, self._environment)
        # _Route's head is a POST's, ending in "Content-Length: ": the same with this method.
        head = method.upper().encode("ascii") + post_head.head[post_head.head.index(b" ") :]
        if body or method.upper() not in _BODILESS_METHODS:
            request = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        else:
            request = head[: -len(b"Content-Length: ")] + b"\r\n"
        return await self._send(post_head, request, connect_timeout, first_byte_timeout)

    async def _send(self, route: _Route, request: bytes, connect_timeout: float, first_byte_timeout: float) -> Response:
        """``request`` on a pooled connection to ``route``'s origin; once more on a new one when
        the server had closed the idle connection as the request went out (nothing was answered)."""
        connection = await self._connection(route, connect_timeout)
        try:
            return await self._exchange(connection, request, first_byte_timeout)
        except Disconnected as exc:
            if not connection.reused or exc.answered:
                raise
        connection = await self._connection(route, connect_timeout, reuse=False)
        return await self._exchange(connection, request, first_byte_timeout)

    async def _exchange(self, connection: _Connection, request: bytes, read_timeout: float) -> Response:
        try:
            connection.send(request)
            while not connection.head_done:
                await connection.wait(read_timeout)
        except BaseException:
            connection.abort()
            raise
        if connection.status == 407 and connection.forwarded_to is not None:
            # The proxy, not the provider, refused: as a refused CONNECT, a failure to connect.
            connection.abort()
            raise ConnectFailed(_refusal(connection.forwarded_to, 407, "Proxy Authentication Required"))
        return Response(connection)

    async def _connection(self, route: _Route, connect_timeout: float, reuse: bool = True) -> _Connection:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        idle = self._idle.get(route.key)
        if reuse and idle:
            now = loop.time()
            while idle:
                connection = idle.pop()
                if not connection.closed and now - connection.idle_since < self._keepalive:
                    connection.idle = False
                    return connection
                connection.abort()
        if route.proxy is not None:
            return await self._through_proxy(route, route.proxy, connect_timeout, loop)
        scheme, host, port = route.origin
        context: Any = None
        if scheme == "https":
            context = self._tls()
        connection = _Connection(self, route.key, loop)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(
                    lambda: connection, host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError:
            raise ConnectTimeout() from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS failed ({exc.reason or exc})") from exc
        except OSError as exc:
            raise ConnectFailed(exc.strerror or type(exc).__name__) from exc
        self._open.add(connection)
        return connection

    async def _through_proxy(
        self, route: _Route, proxy: Proxy, connect_timeout: float, loop: asyncio.AbstractEventLoop
    ) -> _Connection:
        """A connection to the proxy; for an https:// origin, a CONNECT tunnel through it with
        TLS to the origin inside. The connect timeout covers all of it."""
        _, host, port = route.origin
        connection = _Connection(self, route.key, loop)
        tunnel = _Tunnel(loop)
        protocol: asyncio.Protocol = connection if route.forwarded else tunnel
        proxy_context = self._tls() if proxy.scheme == "https" else None
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(connect_timeout):
                try:
                    transport, _ = await loop.create_connection(
                        lambda: protocol,
                        proxy.host,
                        proxy.port,
                        ssl=proxy_context,
                        server_hostname=proxy.host if proxy_context else None,
                    )
                except ssl.SSLError as exc:
                    raise ConnectFailed(f"TLS to proxy {proxy.shown} failed ({exc.reason or exc})") from exc
                except OSError as exc:
                    reason = exc.strerror or type(exc).__name__
                    raise ConnectFailed(f"proxy {proxy.shown} is unreachable ({reason})") from exc
                if route.forwarded:
                    connection.forwarded_to = proxy
                else:
                    await tunnel.open(transport, proxy, host, port)
                    try:
                        tls = await loop.start_tls(
                            transport,
                            connection,
                            self._tls(),
                            server_hostname=host,
                        )
                    except ssl.SSLError as exc:
                        raise ConnectFailed(f"TLS failed ({exc.reason or exc}) through proxy {proxy.shown}") from exc
                    except OSError as exc:
                        reason = exc.strerror or type(exc).__name__
                        raise ConnectFailed(f"the tunnel through proxy {proxy.shown} broke ({reason})") from exc
                    if tls is None:
                        raise ConnectFailed(f"the tunnel through proxy {proxy.shown} closed during TLS")
                    # start_tls does not announce the new transport to the protocol.
                    connection.connection_made(tls)
        except TimeoutError:
            if transport is not None:
                transport.abort()
            raise ConnectTimeout(proxy.shown) from None
        except BaseException:
            if transport is not None:
                transport.abort()
            raise
        self._open.add(connection)
        return connection

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def give_back(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        # Reuse takes the most recent first, so the oldest would never be looked at again after
        # a burst: each return closes the oldest if it has outlived the keep-alive.
        if idle and connection.idle_since - idle[0].idle_since > self._keepalive:
            idle[0].abort()
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.abort()
        self._idle.clear()
        # Let the transports finish closing before the loop goes away.
        await asyncio.sleep(0)
