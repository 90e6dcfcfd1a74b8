"""The bottom of the upstream stack: send one HTTP request to one provider endpoint.

``Transport`` is the seam: retries, circuit breaking and routing are layers above it, and tests
or embedders can hand in their own. ``HttpTransport``, the gateway's, sends over quotagate's own
pooled keep-alive client (``_http``); ``AiohttpTransport`` (``_aiohttp``, imported only when
asked for) does the same over an aiohttp session.

The client's errors stop here: they are mapped to ``UpstreamError`` / ``UpstreamTimeoutError``
and re-raised ``from exc``. Messages name the deployment, never its URL's secrets or its key.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..errors import UpstreamError, UpstreamTimeoutError
from ._http import (
    MAX_RESPONSE_BYTES,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    HttpClient,
    ReadTimeout,
    Response,
)


# Not frozen: one is made per attempt, and a frozen dataclass sets each field through
# object.__setattr__. Treat it as read-only.
@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes
    connect_timeout: float
    first_byte_timeout: float  # until the response head arrives
    chunk_timeout: float  # between two reads of the body
    label: str  # names the deployment in error messages and logs
    proxy: str | None = None  # the deployment's own proxy URL (None: the environment's, if any)
    # The passthrough's endpoints are sent with their own method and Content-Type (None: the
    # deployment's headers', JSON); everything else is a POST of JSON.
    method: str = "POST"
    content_type: str | None = None

    def headers_sent(self) -> Mapping[str, str]:
        """The deployment's headers (its key, User-Agent), with this request's Content-Type."""
        if self.content_type is None and self.method == "POST":
            return self.headers
        headers = {name: value for name, value in self.headers.items() if name.lower() != "content-type"}
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        return headers


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request and return once the response head has arrived."""
        ...

    async def aclose(self) -> None: ...


class _HttpResponse:
    __slots__ = ("_chunk_timeout", "_label", "_response", "headers", "status")

    def __init__(self, response: Response, label: str, chunk_timeout: float) -> None:
        self._response = response
        self._label = label
        self._chunk_timeout = chunk_timeout
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read(self._chunk_timeout)
        except ReadTimeout as exc:
            raise UpstreamTimeoutError(
                f"Upstream {self._label} sent nothing for {self._chunk_timeout:g}s while sending its response."
            ) from exc
        except Disconnected as exc:
            raise UpstreamError(f"Upstream {self._label} failed while sending its response: {exc.reason}.") from exc

    def iter_chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self)

    def close(self) -> None:
        self._response.close()


class _Chunks:
    """The body of a streamed response as it arrives (a class, not an async generator: one
    fewer frame to resume for every chunk)."""

    __slots__ = ("_owner",)

    def __init__(self, owner: _HttpResponse) -> None:
        self._owner = owner

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        owner = self._owner
        try:
            chunk = await owner._response.next_chunk(owner._chunk_timeout)
        except ReadTimeout as exc:
            raise UpstreamTimeoutError(
                f"Upstream {owner._label} stalled mid-stream: nothing for {owner._chunk_timeout:g}s."
            ) from exc
        except Disconnected as exc:
            raise UpstreamError(f"Upstream {owner._label} broke off the stream: {exc.reason}.") from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk


class HttpTransport:
    """The default transport: quotagate's own pooled HTTP/1.1 client (see ``_http``).

    ``ssl_context`` verifies providers (and https:// proxies); the system's CAs by default.
    ``trust_env``: requests without a proxy of their own go through HTTPS_PROXY / HTTP_PROXY
    unless NO_PROXY names the host, as the environment was when the transport was made."""

    def __init__(
        self,
        *,
        keepalive_seconds: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        trust_env: bool = True,
    ) -> None:
        self.client = HttpClient(
            keepalive_seconds=keepalive_seconds,
            ssl_context=ssl_context,
            max_response_bytes=max_response_bytes,
            trust_env=trust_env,
        )

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        try:
            if request.method == "POST" and request.content_type is None:
                # The request path's kind: a POST of JSON, whose head is made once per endpoint.
                response = await self.client.post(
                    request.url,
                    request.headers,
                    request.body,
                    request.connect_timeout,
                    request.first_byte_timeout,
                    request.proxy,
                )
            else:  # the passthrough's: its own method and Content-Type
                response = await self.client.request(
                    request.method,
                    request.url,
                    request.headers_sent(),
                    request.body,
                    request.connect_timeout,
                    request.first_byte_timeout,
                    request.proxy,
                )
        except ConnectTimeout as exc:
            through = f" through proxy {exc.proxy}" if exc.proxy else ""
            raise UpstreamTimeoutError(
                f"Upstream {request.label} could not be reached{through} within {request.connect_timeout:g}s."
            ) from exc
        except ReadTimeout as exc:
            raise UpstreamTimeoutError(
                f"Upstream {request.label} did not answer within {request.first_byte_timeout:g}s."
            ) from exc
        except (ConnectFailed, Disconnected) as exc:
            raise UpstreamError(f"Upstream {request.label} is unreachable: {exc.reason}.") from exc
        return _HttpResponse(response, request.label, request.chunk_timeout)

    async def aclose(self) -> None:
        await self.client.aclose()
