"""The relay stage: the provider's answer to the client, as it comes.

A whole answer (the router has read it) goes out in one message; an event stream goes out event
by event, never a partial event, so that a failure midway can still be told to the client as a
well-formed error event. Secrets of the configuration are scrubbed from both. ``complete`` runs
before the response's last message: the request's ledger row is durable before the client has
the whole answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ..errors import GatewayError, UpstreamError, UpstreamTimeoutError
from ..router import Exchange
from ..upstream import Scrubber
from ..upstream._errors import scrub
from ._answers import OPENAI, read_answer
from ._asgi import JSON_CONTENT_TYPE, Send, send_bytes
from ._record import RequestRecord, error_type, stream_error_type
from ._stream_usage import StreamReader

# Called before the response's last message: (the request, its status, its error type).
Complete = Callable[[RequestRecord, int, "str | None"], Awaitable[None]]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Tells nginx-style proxies in front of the gateway not to buffer the stream either.
    (b"x-accel-buffering", b"no"),
]

# The most of one SSE event held while waiting for its end (a streamed image's partial frames are
# a few MiB of base64).
MAX_STREAM_EVENT_BYTES = 32 * 1024 * 1024


def _end_of_last_event(data: bytearray, searched: int = 0) -> int:
    """Length of the prefix of ``data`` made of complete SSE events (0 if none); the first
    ``searched`` bytes are known to hold no event's end (an end may straddle their last three)."""
    start = max(0, searched - 3)
    lf = data.rfind(b"\n\n", start)
    crlf = data.rfind(b"\r\n\r\n", start)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


# The provider's Content-Type, relayed as one of a known few: a header is the provider's text, and
# one echoing the key must not carry it to the client (issue 18). Parameters are dropped: these
# bodies are UTF-8.
_CONTENT_TYPES = {
    "application/json": JSON_CONTENT_TYPE,
    "text/event-stream": (b"content-type", b"text/event-stream; charset=utf-8"),
    "text/plain": (b"content-type", b"text/plain; charset=utf-8"),
    "application/x-ndjson": (b"content-type", b"application/x-ndjson"),
}
_OTHER_CONTENT = (b"content-type", b"application/octet-stream")


def _content_type(value: str) -> tuple[bytes, bytes]:
    known = _CONTENT_TYPES.get(value)
    if known is not None:
        return known
    if not value:
        return JSON_CONTENT_TYPE
    return _CONTENT_TYPES.get(value.partition(";")[0].strip().lower(), _OTHER_CONTENT)


async def relay_body(
    exchange: Exchange,
    send: Send,
    extra: list[tuple[bytes, bytes]],
    record: RequestRecord,
    scrubber: Scrubber,
    complete: Complete,
    client_api: str = OPENAI,
) -> None:
    response = exchange.response
    # Whole already: the router read it within the deployment's timeouts, so that an answer
    # breaking off midway could still be retried elsewhere.
    body = await response.read()
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    # Its usage read, and the answer made the client's API's where the deployment speaks another.
    answer = read_answer(client_api, exchange.target, payload, record)
    if answer is not payload:
        payload = answer
        body = orjson.dumps(answer)
    record.answer = payload
    if isinstance(payload, dict) and payload.get("error"):
        # An error with a 2xx status, scrubbed as error responses are (keys in JSON escapes too).
        body = orjson.dumps(scrub(payload, scrubber.secrets))
    body = scrubber.body(body)
    type_header = _content_type(response.headers.get("content-type", ""))
    await complete(record, response.status, None)
    await send_bytes(send, response.status, body, [type_header, *extra])


async def relay_stream(
    exchange: Exchange,
    send: Send,
    extra: list[tuple[bytes, bytes]],
    stream_usage: StreamReader,
    record: RequestRecord,
    scrubber: Scrubber,
    complete: Complete,
) -> bool:
    """Relay SSE event by event; True when the stream ended as the provider meant it to."""
    response = exchange.response
    total = exchange.target.total_timeout
    deadline = exchange.started + total if total is not None else None
    await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *extra]})
    # The first error event the provider sent, if any: the row records that the stream failed.
    failed: dict[str, Any] | None = None
    try:
        try:
            # What has arrived of events not yet whole, and how much of it has been searched
            # for an event's end: each byte is searched once, however long an event.
            pending = bytearray(exchange.first_chunk)
            searched = 0
            chunks = response.iter_chunks().__aiter__()
            while True:
                # Forward whole events only, so that a failure mid-event can still be
                # followed by a well-formed error event the SDK understands.
                cut = _end_of_last_event(pending, searched)
                if cut:
                    events, error = scrubber.events(stream_usage.feed(bytes(pending[:cut])))
                    del pending[:cut]
                    failed = error if failed is None else failed
                    await send({"type": "http.response.body", "body": events, "more_body": True})
                if len(pending) > MAX_STREAM_EVENT_BYTES:
                    # A provider that never ends an event would otherwise grow this for as
                    # long as it sends: one event is a piece of an answer, never this big.
                    raise UpstreamError(
                        f"Upstream {exchange.target.label} sent a stream event larger than the gateway's "
                        f"limit of {MAX_STREAM_EVENT_BYTES} bytes.",
                        code="stream_event_too_large",
                    )
                searched = len(pending)
                if deadline is not None and time.monotonic() > deadline:
                    raise UpstreamTimeoutError(
                        f"Upstream {exchange.target.label} exceeded its total timeout of {total:g}s."
                    )
                if deadline is None:
                    chunk = await anext(chunks, b"")
                else:
                    # The total timeout bounds the wait for the next chunk too: a provider that
                    # goes quiet would otherwise hold the stream until its chunk timeout.
                    try:
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            chunk = await anext(chunks, b"")
                    except TimeoutError:
                        raise UpstreamTimeoutError(
                            f"Upstream {exchange.target.label} exceeded its total timeout of {total:g}s."
                        ) from None
                if not chunk:
                    rest = stream_usage.feed(bytes(pending)) if pending else b""
                    rest += stream_usage.finish()
                    if rest:
                        rest, error = scrubber.events(rest)
                        failed = error if failed is None else failed
                        await send({"type": "http.response.body", "body": rest, "more_body": True})
                    break
                pending += chunk
            await complete(record, 200, stream_error_type(failed) if failed is not None else None)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        except GatewayError as exc:
            # The status line has gone; an error event is the only way left to tell the
            # client (in its API's form: the SDKs raise it). The row says the stream broke.
            await complete(record, 200, error_type(exc))
            await send({"type": "http.response.body", "body": stream_usage.error_event(exc), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return False
    finally:
        response.close()
