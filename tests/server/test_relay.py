"""The relay stage (``relay_body``, ``relay_stream``): the provider's answer to the client.

A real deployment target from a parsed configuration, a scripted upstream response (chunks, and
the time that passes between them on a fake clock), a real Scrubber and StreamUsage, and an ASGI
``send`` and ``complete`` that record what they were given and when.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import pytest

from quotagate.auth import Principal
from quotagate.config import parse_config
from quotagate.errors import UpstreamError
from quotagate.router import Exchange
from quotagate.server import _relay
from quotagate.server._record import RequestRecord
from quotagate.server._relay import _end_of_last_event, relay_body, relay_stream
from quotagate.server._stream_usage import StreamUsage
from quotagate.upstream import DeploymentTarget, ModelRoutes, Scrubber

SECRET = "sk-live-0123456789abcdef"  # the deployment's key, as the configuration holds it
ALICE = Principal("key1", "alice", "free", None)
ROUTES = ModelRoutes(
    parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "deployments": [
                        {
                            "provider": "openai-compatible",
                            "base_url": "http://a.test/v1",
                            "model": "prov-m",
                            "total_timeout": 2.0,
                        }
                    ],
                },
                {
                    "name": "quick",
                    "deployments": [
                        {"provider": "openai-compatible", "base_url": "http://q.test/v1", "total_timeout": 0.05}
                    ],
                },
            ]
        }
    )
)
TARGET = ROUTES.deployments("m")[0]  # a total timeout of 2 s
EXTRA = [(b"x-request-id", b"req-1"), (b"x-quotagate-deployment", TARGET.label_bytes)]
SSE = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def delta(text: str) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}) + b"\n\n"


def usage_event(prompt: int, completion: int, cached: int) -> bytes:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    return b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n"


def error_event(error: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


DONE = b"data: [DONE]\n\n"
EVENTS = [delta("Hel"), delta("lo"), DONE]  # the shortest, DONE, is 14 bytes

STALL = object()  # a step of the script: the provider goes quiet and never sends again


class Clock:
    """time.monotonic() for the relay: seconds pass only when the script says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """The provider's response: a whole body, or a script of chunks (bytes), seconds passing on
    the clock (a float), an error raised (an exception) or STALL."""

    def __init__(
        self,
        body: bytes = b"",
        script: list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = {"content-type": "application/json"} if headers is None else headers
        self.body = body
        self.script = script or []
        self.clock = clock
        self.closed = False
        self.chunks_read = 0

    async def read(self) -> bytes:
        return self.body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for step in self.script:
            if step is STALL:
                await asyncio.get_running_loop().create_future()
            elif isinstance(step, BaseException):
                raise step
            elif isinstance(step, float):
                assert self.clock is not None
                self.clock.now += step
            else:
                self.chunks_read += 1
                yield step

    def close(self) -> None:
        self.closed = True


class Client:
    """The ASGI ``send`` of the client's connection and the proxy's ``complete``, recorded."""

    def __init__(self, gone_at: int | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        # (status, error type, messages sent when it ran)
        self.completed: list[tuple[int, str | None, int]] = []
        self.records: list[RequestRecord] = []
        self.gone_at = gone_at  # the message whose send fails: the client has left

    async def send(self, message: Any) -> None:
        if self.gone_at is not None and len(self.messages) == self.gone_at:
            raise OSError("client gone")
        self.messages.append(message)

    async def complete(self, record: RequestRecord, status: int, error_type: str | None) -> None:
        self.records.append(record)
        self.completed.append((status, error_type, len(self.messages)))

    @property
    def start(self) -> dict[str, Any]:
        assert self.messages[0]["type"] == "http.response.start"
        return self.messages[0]

    @property
    def bodies(self) -> list[bytes]:
        """The bodies of the messages before the last, which must end the response."""
        assert all(m["type"] == "http.response.body" for m in self.messages[1:])
        assert all(m.get("more_body") for m in self.messages[1:-1])
        assert not self.messages[-1].get("more_body", False)
        return [m["body"] for m in self.messages[1:-1]]


def record(stream: bool) -> RequestRecord:
    return RequestRecord("req-1", None, ALICE, "m", stream, began=0.0)


def scrubber() -> Scrubber:
    return Scrubber((SECRET,))


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def stream(
    upstream: Upstream,
    first_chunk: bytes,
    client: Client,
    usage: StreamUsage | None = None,
    target: DeploymentTarget = TARGET,
    started: float = 1000.0,
) -> bool:
    exchange = Exchange(target, upstream, None, started, True, first_chunk)
    usage = usage or StreamUsage(strip_usage_chunk=False)
    return await relay_stream(exchange, client.send, EXTRA, usage, record(True), scrubber(), client.complete)


def error_of(event: bytes) -> dict[str, Any]:
    """The error of one whole ``data: {"error": ...}`` event."""
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
    error: dict[str, Any] = orjson.loads(event[6:])["error"]
    return error


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(_relay, "time", types.SimpleNamespace(monotonic=clock))
    return clock


# -- relay_body ----------------------------------------------------------------------------------


async def test_a_whole_body_goes_out_in_one_message_and_its_usage_is_recorded() -> None:
    """A JSON answer goes out as one start and one body message, with its content type, the
    extra headers and its length; the usage it reports (and its cached tokens) lands in the record."""
    body = orjson.dumps(
        {
            "choices": [{"message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 5}},
        }
    )
    upstream = Upstream(body, headers={"content-type": "application/json; charset=utf-8"})
    client, request = Client(), record(False)
    await relay_body(
        Exchange(TARGET, upstream, None, 1000.0, False), client.send, EXTRA, request, scrubber(), client.complete
    )
    assert client.messages == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), *EXTRA, (b"content-length", str(len(body)).encode())],
        },
        {"type": "http.response.body", "body": body},
    ]
    assert (request.reported, request.cached) == ((11, 7), 5)


async def test_the_row_of_a_whole_body_is_completed_before_anything_is_sent() -> None:
    """``complete`` runs once, with the request's record, its status and no error, before the
    first message: the ledger row is written before the client has the answer."""
    upstream = Upstream(orjson.dumps({"choices": [{"message": {"content": "hi"}}]}))
    client, request = Client(), record(False)
    await relay_body(
        Exchange(TARGET, upstream, None, 1000.0, False), client.send, EXTRA, request, scrubber(), client.complete
    )
    assert client.completed == [(200, None, 0)]
    assert client.records == [request]
    assert len(client.messages) == 2
    assert (request.reported, request.generated) == (None, "hi")  # no usage: the text is counted later


@pytest.mark.parametrize(
    ("provider", "relayed"),
    [
        ("application/json", b"application/json"),
        ("", b"application/json"),
        ("text/plain; charset=latin-1", b"text/plain; charset=utf-8"),
        ("Application/X-NDJSON ; q=1", b"application/x-ndjson"),
        ("text/html", b"application/octet-stream"),
        (f"x-{SECRET}", b"application/octet-stream"),
    ],
)
async def test_the_content_type_is_one_of_a_known_few(provider: str, relayed: bytes) -> None:
    """The provider's Content-Type goes out as one the gateway knows (parameters dropped), else
    as application/octet-stream: a header echoing the key never reaches the client."""
    upstream = Upstream(b"{}", headers={"content-type": provider})
    client = Client()
    await relay_body(
        Exchange(TARGET, upstream, None, 1000.0, False), client.send, [], record(False), scrubber(), client.complete
    )
    assert client.start["headers"][0] == (b"content-type", relayed)


async def test_a_secret_in_a_2xx_body_is_scrubbed() -> None:
    """A configured secret anywhere in a 2xx body is replaced, and Content-Length is that of the
    scrubbed body."""
    body = orjson.dumps({"choices": [{"message": {"content": f"the key is {SECRET}."}}]})
    client = Client()
    await relay_body(
        Exchange(TARGET, Upstream(body), None, 1000.0, False),
        client.send,
        [],
        record(False),
        scrubber(),
        client.complete,
    )
    sent = client.messages[1]["body"]
    assert orjson.loads(sent) == {"choices": [{"message": {"content": "the key is [redacted]."}}]}
    assert (b"content-length", str(len(sent)).encode()) in client.start["headers"]


async def test_an_error_in_a_2xx_body_is_scrubbed_as_an_error_response() -> None:
    """An error object sent with a 2xx status loses the configured secret even written with a
    JSON escape, and anything that looks like a key, in any of its fields."""
    escaped = SECRET.replace("-", "\\u002d").encode()
    body = (
        b'{"error": {"message": "Incorrect API key provided: sk-proj-abcdEFGH1234", "code": "'
        + escaped
        + b'", "type": "invalid_request_error"}}'
    )
    assert orjson.loads(body)["error"]["code"] == SECRET
    client = Client()
    await relay_body(
        Exchange(TARGET, Upstream(body), None, 1000.0, False),
        client.send,
        [],
        record(False),
        scrubber(),
        client.complete,
    )
    assert orjson.loads(client.messages[1]["body"]) == {
        "error": {
            "message": "Incorrect API key provided: [redacted]",
            "code": "[redacted]",
            "type": "invalid_request_error",
        }
    }


# -- relay_stream --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 13])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
async def test_a_stream_goes_out_event_by_event_however_its_chunks_split_events(
    clock: Clock, size: int, ending: bytes
) -> None:
    """Chunks that split events anywhere (within an event's end too, LF or CRLF) go out as
    whole events, one message each, ended by a last empty message; the stream ends as meant."""
    data = b"".join(EVENTS).replace(b"\n", ending)
    chunks = pieces(data, size)
    upstream, client, usage = Upstream(script=chunks[1:]), Client(), StreamUsage(strip_usage_chunk=False)
    assert await stream(upstream, chunks[0], client, usage) is True
    assert client.start == {"type": "http.response.start", "status": 200, "headers": [*SSE, *EXTRA]}
    assert [body.replace(b"\r\n", b"\n") for body in client.bodies] == EVENTS
    assert client.completed == [(200, None, len(client.messages) - 1)]  # before the last message
    assert usage.pieces == ["Hel", "lo"]
    assert upstream.closed


@pytest.mark.parametrize("strip", [True, False])
async def test_a_streams_usage_chunk_is_read(clock: Clock, strip: bool) -> None:
    """The usage chunk's tokens (and cached tokens) are read as it passes; it reaches the client
    only if the client asked for it."""
    usage = StreamUsage(strip_usage_chunk=strip)
    chunk = usage_event(21, 2, 8)
    client, upstream = Client(), Upstream(script=[delta("lo") + chunk[:10], chunk[10:] + DONE])
    assert await stream(upstream, delta("Hel"), client, usage) is True
    assert (usage.usage, usage.cached) == ((21, 2), 8)
    sent = b"".join(client.bodies)
    assert sent == b"".join([delta("Hel"), delta("lo"), *([] if strip else [chunk]), DONE])


async def test_a_secret_in_a_stream_is_scrubbed(clock: Clock) -> None:
    """A configured secret in a streamed event is replaced before the event goes out."""
    client = Client()
    assert await stream(Upstream(script=[delta(f"key {SECRET}"), DONE]), b"", client) is True
    assert b"".join(client.bodies) == delta("key [redacted]") + DONE


@pytest.mark.parametrize(
    ("error", "recorded"),
    [
        (
            {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"},
            "context_length_exceeded",
        ),
        ({"message": "overloaded", "type": "server_error", "code": "not a short code"}, "server_error"),
        ({"message": "bad", "code": 529}, "529"),
        ({"message": f"key {SECRET} refused", "code": SECRET, "type": SECRET}, "upstream_error"),
    ],
    ids=["code", "type", "numeric code", "secret"],
)
async def test_a_providers_error_event_is_the_rows_error_type(
    clock: Clock, error: dict[str, Any], recorded: str
) -> None:
    """An error event in the stream goes out scrubbed, and the row records its code or type when
    that is a short code, else upstream_error (never the secret it carried)."""
    client = Client()
    script = [error_event(error), error_event({"message": "second", "code": "other"}), DONE]
    assert await stream(Upstream(script=script), delta("Hel"), client) is True
    assert client.completed == [(200, recorded, len(client.messages) - 1)]
    sent = b"".join(client.bodies)
    assert SECRET.encode() not in sent
    assert sent.startswith(delta("Hel") + b'data: {"error":') and sent.endswith(DONE)


async def test_an_event_past_the_limit_ends_the_stream_with_an_error_event(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event that grows past MAX_STREAM_EVENT_BYTES without its end is never relayed: the
    stream ends with one well-formed error event, its row with stream_event_too_large."""
    monkeypatch.setattr(_relay, "MAX_STREAM_EVENT_BYTES", 64)
    upstream = Upstream(script=[b"x" * 40, b"x" * 40, b"\n\n"])
    client = Client()
    assert await stream(upstream, delta("Hel") + b"data: " + b"x" * 20, client) is False
    first, last = client.bodies
    assert first == delta("Hel")
    assert error_of(last)["code"] == "stream_event_too_large"
    assert client.completed == [(200, "stream_event_too_large", 2)]  # before the error event
    assert upstream.closed


async def test_an_unended_event_of_exactly_the_limit_is_still_relayed(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is on what is held: an event held at exactly MAX_STREAM_EVENT_BYTES before its
    end arrives goes out whole."""
    monkeypatch.setattr(_relay, "MAX_STREAM_EVENT_BYTES", 64)
    held = b"data: " + b"y" * 58
    assert len(held) == 64
    client = Client()
    assert await stream(Upstream(script=[held[6:], b"\n\n"]), held[:6], client) is True
    assert client.bodies == [held + b"\n\n"]


async def test_a_stream_past_the_total_timeout_ends_with_an_error_event(clock: Clock) -> None:
    """A chunk arriving after the deployment's total timeout (2 s) ends the stream: the whole
    events before it go out, the event it began does not, then one error event
    (upstream_timeout)."""
    upstream = Upstream(script=[1.5, delta("lo"), 1.0, b'data: {"choices": [', b"]}\n\n", DONE], clock=clock)
    client = Client()
    assert await stream(upstream, delta("Hel"), client) is False
    *events, last = client.bodies
    assert events == [delta("Hel"), delta("lo")]
    assert error_of(last)["code"] == "upstream_timeout"
    assert client.completed == [(200, "upstream_timeout", 3)]
    assert upstream.closed


async def test_a_stream_started_longer_ago_than_its_total_timeout_ends_at_once(clock: Clock) -> None:
    """An exchange begun before the total timeout: its first chunk's events go out, then the
    error event; nothing more is read."""
    upstream = Upstream(script=[delta("lo"), DONE])
    client = Client()
    assert await stream(upstream, delta("Hel"), client, started=clock.now - 3.0) is False
    first, last = client.bodies
    assert first == delta("Hel")
    assert error_of(last)["code"] == "upstream_timeout"
    assert upstream.chunks_read == 0
    assert upstream.closed


async def test_a_stream_that_goes_quiet_ends_at_its_total_timeout() -> None:
    """A provider that stops sending mid-stream is cut off at the deployment's total timeout
    (0.05 s here, on the real clock: the wait is the event loop's), with an error event, not
    held until its chunk timeout."""
    upstream = Upstream(script=[STALL])
    client = Client()
    target = ROUTES.deployments("quick")[0]
    ended = await asyncio.wait_for(stream(upstream, delta("Hel"), client, target=target, started=time.monotonic()), 0.5)
    assert ended is False
    assert error_of(client.bodies[-1])["code"] == "upstream_timeout"
    assert upstream.closed


async def test_a_provider_breaking_off_mid_stream_ends_with_an_error_event(clock: Clock) -> None:
    """The transport's error midway (the provider closed the connection) goes to the client as
    an error event after the whole events already relayed, and to the row as its code."""
    broke = UpstreamError(f"Upstream {TARGET.label} broke off the stream: closed.")
    upstream = Upstream(script=[delta("lo") + b"data: {", broke])
    client = Client()
    assert await stream(upstream, delta("Hel"), client) is False
    *events, last = client.bodies
    assert events == [delta("Hel"), delta("lo")]
    assert error_of(last)["code"] == "bad_gateway"
    assert client.completed == [(200, "bad_gateway", 3)]
    assert upstream.closed


async def test_a_client_that_leaves_mid_stream_closes_the_response(clock: Clock) -> None:
    """When sending to the client fails, the error reaches the caller and the provider's
    response is closed."""
    upstream = Upstream(script=[delta("lo"), DONE])
    with pytest.raises(OSError, match="client gone"):
        await stream(upstream, delta("Hel"), Client(gone_at=2))
    assert upstream.closed


# -- _end_of_last_event --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "searched", "end"),
    [
        (b"", 0, 0),
        (b"data: a", 0, 0),
        (b"data: a\n", 0, 0),
        (b"data: a\n\n", 0, 9),
        (b"data: a\n\ndata: b", 0, 9),
        (b"data: a\n\ndata: b\n\n", 0, 18),
        (b"data: a\r\n\r\n", 0, 11),
        (b"data: a\r\n\r\ndata: b\r\n", 0, 11),
        (b"data: a\r\n\r\ndata: b\n\n", 0, 20),
        (b"data: a\n\ndata: b\r\n\r\n", 0, 20),
        # An end straddling what was searched before: 1, 2 or 3 of its bytes in it.
        (b"data: a\n\n", 8, 9),
        (b"data: a\r\n\r\n", 8, 11),
        (b"data: a\r\n\r\n", 10, 11),
        # Ends wholly within what was searched are not looked for again.
        (b"data: a\n\ndata: b", 16, 0),
        (b"data: a\n\ndata: b\n\n", 16, 18),
    ],
)
def test_end_of_last_event(data: bytes, searched: int, end: int) -> None:
    """The length of the prefix made of whole events (LF or CRLF ends), searched from
    three bytes before ``searched``."""
    assert _end_of_last_event(bytearray(data), searched) == end
