"""Plain-ASGI primitives for the request path.

No framework sits between uvicorn and the proxy: a request is a scope, its headers are read once
into a small object, and responses are two ``send`` calls. Every microsecond here is paid on
every request (see bench/).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from .._uvicorn import BODY_TIMED_OUT
from ..errors import GatewayError, InvalidRequestError, PayloadTooLargeError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_CONTENT_TYPE = (b"content-type", b"application/json")


_READ = frozenset(
    (
        b"authorization",
        b"x-api-key",
        b"api-key",
        b"content-length",
        b"x-client-request-id",
        b"x-request-id",
        b"cache-control",
        b"x-quotagate-cache-ttl",
        b"x-quotagate-downgrade",
        b"anthropic-version",
        b"anthropic-beta",
    )
)


class RequestHeaders:
    """The few request headers the gateway reads, pulled out in one pass."""

    __slots__ = (
        "anthropic",
        "authorization",
        "cache_control",
        "cache_ttl",
        "client_request_id",
        "content_length",
        "downgrade",
        "x_api_key",
    )

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self.authorization: str | None = None
        # A key sent in a header of its own: x-api-key (Anthropic's clients) or api-key (Azure
        # OpenAI's; x-api-key wins when both are sent).
        self.x_api_key: str | None = None
        self.content_length: int | None = None
        # The client's own id for the request: OpenAI's x-client-request-id, or the x-request-id
        # that tracing proxies set. Kept beside the gateway's id, never instead of it.
        self.client_request_id: str | None = None
        # The request's say over the response cache (see cache/_controls).
        self.cache_control: str | None = None
        self.cache_ttl: str | None = None
        # x-quotagate-downgrade: off forbids serving a cheaper model instead of a 429 (tiering/).
        self.downgrade: str | None = None
        # anthropic-version and anthropic-beta, sent on to deployments that speak the Messages API.
        self.anthropic: dict[str, str] | None = None
        for name, value in raw:
            if name not in _READ:
                continue  # most headers: one set lookup, not five comparisons
            if name == b"authorization":
                self.authorization = value.decode("latin-1")
            elif name == b"x-api-key" or (name == b"api-key" and self.x_api_key is None):
                self.x_api_key = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    raise InvalidRequestError("Invalid Content-Length header.") from None
            elif name == b"x-client-request-id" or (name == b"x-request-id" and self.client_request_id is None):
                self.client_request_id = value.decode("latin-1")[:128] or None
            elif name == b"cache-control":
                # A header sent twice is one list of directives (RFC 9110 5.3).
                text = value.decode("latin-1")
                self.cache_control = text if self.cache_control is None else f"{self.cache_control}, {text}"
            elif name == b"x-quotagate-cache-ttl":
                self.cache_ttl = value.decode("latin-1")
            elif name == b"x-quotagate-downgrade":
                self.downgrade = value.decode("latin-1").strip().lower()
            elif name == b"anthropic-version" or name == b"anthropic-beta":
                # Sent on as they came (a beta header sent twice is one list); only these two: a
                # header that lost its elif above (a second api-key) must never reach a provider.
                header, text = name.decode(), value.decode("latin-1")
                if self.anthropic is None:
                    self.anthropic = {}
                given = self.anthropic.get(header)
                self.anthropic[header] = text if given is None or header != "anthropic-beta" else f"{given},{text}"


def _reseed() -> None:
    global _id_prefix, _id_counter
    _id_prefix = "req_" + os.urandom(8).hex()
    _id_counter = itertools.count()


_id_prefix = ""
_id_counter = itertools.count()
_reseed()
# A forked worker must not repeat its parent's ids (they key the usage ledger).
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    """The gateway's id for a request (the ledger's key, the response's x-request-id).

    Unique across processes and nodes: a random per-process prefix (64 bits) and a counter.
    Cheaper than 12 fresh random bytes per request, a system call each."""
    return f"{_id_prefix}{next(_id_counter):x}"


def request_id_headers(request_id: str, client_request_id: str | None) -> list[tuple[bytes, bytes]]:
    """x-request-id (the gateway's) and, when the client sent its own, x-client-request-id."""
    pairs = [(b"x-request-id", request_id.encode())]
    if client_request_id is not None:
        pairs.append((b"x-client-request-id", client_request_id.encode("latin-1")))
    return pairs


async def read_body(receive: Receive, content_length: int | None, limit: int, scope: Scope | None = None) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes without reading them all.

    With the request's ``scope``, a body that did not arrive within the server's body timeout is
    told apart from a client that left (see ``_uvicorn``)."""
    if content_length is not None and content_length > limit:
        raise PayloadTooLargeError(_too_large(limit))
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if message["type"] == "http.disconnect":
            raise _gone(scope)
        if len(body) > limit:
            raise PayloadTooLargeError(_too_large(limit))
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _gone(scope)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(_too_large(limit))
        parts.append(chunk)
    return b"".join(parts)


def _gone(scope: Scope | None) -> GatewayError:
    if scope is not None and scope.get(BODY_TIMED_OUT):
        # The server has answered the client already (a 408 of its own); this is the ledger's.
        return GatewayError(
            "The request body did not arrive in time.",
            status=408,
            type="invalid_request_error",
            code="request_timeout",
        )
    return InvalidRequestError("The client disconnected while sending the request body.")


def _too_large(limit: int) -> str:
    return f"Request body is larger than the gateway's limit of {limit} bytes."


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send,
    status: int,
    payload: Any,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [JSON_CONTENT_TYPE]
    if extra_headers:
        headers.extend(extra_headers)
    await send_bytes(send, status, orjson.dumps(payload), headers)
