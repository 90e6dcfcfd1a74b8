"""``AiohttpTransport``: the upstream transport over one pooled aiohttp session, for embedders
who want aiohttp's client (the gateway's own is ``HttpTransport``). Imported only when asked for:
aiohttp adds much to the gateway's start-up (two TLS contexts read the system's CA bundle at
import; bench/NOTES.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp

from ..errors import UpstreamError, UpstreamTimeoutError
from ._transport import UpstreamRequest, UpstreamResponse


class _AiohttpResponse:
    __slots__ = ("_chunk_timeout", "_label", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, label: str, chunk_timeout: float) -> None:
        self._response = response
        self._label = label
        self._chunk_timeout = chunk_timeout
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        # The chunk timeout is aiohttp's read timeout on this connection (see AiohttpTransport.send).
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError(
                f"Upstream {self._label} sent nothing for {self._chunk_timeout:g}s while sending its response."
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Upstream {self._label} failed while sending its response: {_describe(exc)}.") from exc
        finally:
            self._response.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError(
                f"Upstream {self._label} stalled mid-stream: nothing for {self._chunk_timeout:g}s."
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Upstream {self._label} broke off the stream: {_describe(exc)}.") from exc

    def close(self) -> None:
        # close(), not release(): a response abandoned mid-body cannot go back to the pool.
        self._response.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or type(exc.os_error).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "incomplete response body"
    return type(exc).__name__


class AiohttpTransport:
    """The transport over an aiohttp session. ``trust_env``: requests without a proxy of their own
    go through HTTPS_PROXY / HTTP_PROXY unless NO_PROXY names the host (aiohttp's reading of the
    environment), as HttpTransport's do."""

    def __init__(self, *, max_connections: int = 0, keepalive_seconds: float = 30.0, trust_env: bool = True) -> None:
        self._max_connections = max_connections
        self._keepalive = keepalive_seconds
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}  # by (connect, first byte)

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily inside the running loop: aiohttp sessions are bound to the loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,  # 0: no cap; the limit engine decides admission
                limit_per_host=0,
                keepalive_timeout=self._keepalive,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # The gateway relays bytes; it sets its own User-Agent rather than aiohttp's.
                skip_auto_headers=("User-Agent",),
                auto_decompress=True,
                trust_env=self._trust_env,
            )
        return self._session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        session = self._session or self._get_session()
        # The deadlines are aiohttp's own: connect, and its read timeout (the longest silence on the
        # connection) set to the first-byte timeout, then, once the head is in, to the chunk timeout.
        # One timer per connection, rearmed as data arrives: asyncio.timeout() blocks around each
        # await cost more CPU per request (bench/NOTES.md).
        key = (request.connect_timeout, request.first_byte_timeout)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=request.connect_timeout, sock_read=request.first_byte_timeout
            )
        try:
            # The passthrough's requests keep their own method and Content-Type (headers_sent).
            response = await session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers_sent(),
                timeout=timeout,
                proxy=request.proxy,
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeoutError(
                f"Upstream {request.label} could not be reached within {request.connect_timeout:g}s."
            ) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError(
                f"Upstream {request.label} did not answer within {request.first_byte_timeout:g}s."
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Upstream {request.label} is unreachable: {_describe(exc)}.") from exc
        if request.chunk_timeout != request.first_byte_timeout:
            connection = response.connection
            if connection is not None and connection.protocol is not None:
                connection.protocol.read_timeout = request.chunk_timeout
                connection.protocol.start_timeout()  # rearm now: the head may have been the last byte
        return _AiohttpResponse(response, request.label, request.chunk_timeout)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            # Let aiohttp's transports finish closing before the loop goes away.
            await asyncio.sleep(0)
