"""quotagate's upstream HTTP client against scripted servers: what goes on the wire, keep-alive,
streaming, timeouts, broken connections and TLS, as the gateway's transport reports them."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from quotagate.errors import UpstreamError, UpstreamTimeoutError
from quotagate.upstream import HttpTransport, UpstreamRequest

from ..conftest import closed_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A TCP server on 127.0.0.1 running ``handler`` for each connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Scripted:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((line.encode(), headers, body))
        return line.encode(), headers, body

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


def request_to(
    port: int, scheme: str = "http", timeout: float = 2.0, path: str = "/v1/chat/completions"
) -> UpstreamRequest:
    return UpstreamRequest(
        f"{scheme}://localhost:{port}{path}",
        {"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
        b'{"model": "m"}',
        connect_timeout=2.0,
        first_byte_timeout=timeout,
        chunk_timeout=timeout,
        label="openai/m#0",
    )


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    transport = HttpTransport()
    yield transport
    await transport.aclose()


async def test_the_request_is_sent_as_given_and_the_connection_is_kept_alive(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.read_request(reader)
            writer.write(ok(extra=b"X-Ratelimit-Remaining-Requests: 7\r\n"))

    upstream = await Scripted(handler).start()
    for _ in range(3):
        response = await transport.send(request_to(upstream.port))
        assert response.status == 200
        assert response.headers["x-ratelimit-remaining-requests"] == "7"  # names lower-cased
        assert await response.read() == b'{"ok": true}'
    assert upstream.connections == 1
    line, headers, body = upstream.requests[0]
    assert line == b"POST /v1/chat/completions HTTP/1.1"
    assert headers["host"] == f"localhost:{upstream.port}"
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["content-type"] == "application/json"
    assert body == b'{"model": "m"}'
    assert "accept-encoding" not in headers
    await upstream.close()


async def test_concurrent_requests_each_get_their_own_answer(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, _, body = await upstream.read_request(reader)
            await asyncio.sleep(0.001)
            writer.write(ok(line.split()[1] + b" " + body))

    upstream = await Scripted(handler).start()

    async def one(index: int) -> bytes:
        request = request_to(upstream.port, path=f"/v1/r{index}")
        request.body = b"%d" % index
        response = await transport.send(request)
        return await response.read()

    answers = await asyncio.gather(*(one(i) for i in range(200)))
    assert answers == [b"/v1/r%d %d" % (i, i) for i in range(200)]
    assert upstream.connections <= 200
    await upstream.close()


async def test_a_chunked_stream_is_relayed_as_it_arrives(transport: HttpTransport) -> None:
    first_seen = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"9\r\ndata: one\r\n")
        await writer.drain()
        await first_seen.wait()  # the second event is sent only once the client has the first
        writer.write(b"9\r\ndata: two\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    upstream = await Scripted(handler).start()
    response = await transport.send(request_to(upstream.port))
    assert response.headers["content-type"] == "text/event-stream"
    chunks = response.iter_chunks().__aiter__()
    assert await anext(chunks) == b"data: one"
    first_seen.set()
    assert await anext(chunks) == b"data: two"
    assert await anext(chunks, None) is None
    response.close()
    await upstream.close()


async def test_connection_close_is_honoured(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(ok(extra=b"Connection: close\r\n"))
        await writer.drain()

    upstream = await Scripted(handler).start()
    for _ in range(2):
        response = await transport.send(request_to(upstream.port))
        assert await response.read() == b'{"ok": true}'
    assert upstream.connections == 2
    await upstream.close()


async def test_a_body_that_ends_with_the_connection_is_read_whole(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b"x" * 100_000)
        await writer.drain()

    upstream = await Scripted(handler).start()
    response = await transport.send(request_to(upstream.port))
    assert await response.read() == b"x" * 100_000
    await upstream.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(ok())
        await writer.drain()
        # Keep-alive timed out on the server's side: it closes without a word.

    upstream = await Scripted(handler).start()
    for _ in range(3):
        response = await transport.send(request_to(upstream.port))
        assert await response.read() == b'{"ok": true}'
        await asyncio.sleep(0.05)
    assert upstream.connections == 3
    await upstream.close()


async def test_connections_idle_past_the_keep_alive_are_closed() -> None:
    """After a burst, the connections it opened do not stay open for ever once traffic is light."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.read_request(reader)
            writer.write(ok())
            await writer.drain()

    upstream = await Scripted(handler).start()
    transport = HttpTransport(keepalive_seconds=0.5)

    async def one() -> None:
        assert await (await transport.send(request_to(upstream.port))).read() == b'{"ok": true}'

    await asyncio.gather(*(one() for _ in range(5)))
    assert transport.client.open_connections == 5
    for _ in range(20):  # light traffic for a second: one request at a time
        await one()
        await asyncio.sleep(0.05)
    assert upstream.connections == 5  # the most recently used one served them all
    assert transport.client.open_connections == 1
    await transport.aclose()
    await upstream.close()


async def test_a_close_that_crosses_the_request_is_retried_once_on_a_new_connection(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if upstream.connections == 1:
            await upstream.read_request(reader)
            writer.write(ok())
            await writer.drain()
            # The next request arrives as the server gives up on the connection: closed unanswered.
            await upstream.read_request(reader)
            return
        await upstream.read_request(reader)
        writer.write(ok(b"second"))
        await writer.drain()
        await reader.read()

    upstream = await Scripted(handler).start()
    assert await (await transport.send(request_to(upstream.port))).read() == b'{"ok": true}'
    assert await (await transport.send(request_to(upstream.port))).read() == b"second"
    assert upstream.connections == 2
    await upstream.close()


async def test_a_new_connection_closed_unanswered_is_an_upstream_error(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)

    upstream = await Scripted(handler).start()
    with pytest.raises(UpstreamError, match=r"Upstream openai/m#0 is unreachable: server disconnected\."):
        await transport.send(request_to(upstream.port))
    assert upstream.connections == 1  # a fresh connection is not tried again here (the router may)
    await upstream.close()


async def test_a_refused_connection_is_an_upstream_error(transport: HttpTransport) -> None:
    with pytest.raises(UpstreamError, match=r"is unreachable: Connect call failed|is unreachable: Connection refused"):
        await transport.send(request_to(closed_port()))


async def test_no_answer_within_the_first_byte_timeout(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        await reader.read()

    upstream = await Scripted(handler).start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeoutError, match=r"did not answer within 0\.2s"):
        await transport.send(request_to(upstream.port, timeout=0.2))
    assert 0.18 < loop.time() - started < 1.0
    await upstream.close()


async def test_a_body_that_stalls_times_out_and_one_cut_short_fails(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, _, _ = await upstream.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await writer.drain()
            if b"cut" in line:
                return
            await asyncio.sleep(1)

    upstream = await Scripted(handler).start()
    response = await transport.send(request_to(upstream.port, timeout=0.2, path="/stall"))
    with pytest.raises(UpstreamTimeoutError, match=r"sent nothing for 0\.2s while sending its response"):
        await response.read()
    response = await transport.send(request_to(upstream.port, path="/cut"))
    with pytest.raises(UpstreamError, match="failed while sending its response: server disconnected"):
        await response.read()
    assert upstream.connections == 2  # the stalled connection was dropped, not reused
    await upstream.close()


async def test_a_stream_that_stalls_or_breaks_says_so(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: one\r\n")
        await writer.drain()
        if b"break" not in line:
            await asyncio.sleep(1)

    upstream = await Scripted(handler).start()
    for path, error, message in (
        ("/stall", UpstreamTimeoutError, r"stalled mid-stream: nothing for 0\.2s"),
        ("/break", UpstreamError, "broke off the stream: server disconnected"),
    ):
        response = await transport.send(request_to(upstream.port, timeout=0.2, path=path))
        chunks = response.iter_chunks().__aiter__()
        assert await anext(chunks) == b"data: one"
        with pytest.raises(error, match=message):
            await anext(chunks)
        response.close()
    await upstream.close()


async def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await upstream.read_request(reader)
        if b"slow" in line:
            await asyncio.sleep(0.3)  # answers after the client gave up: must not reach the next caller
            writer.write(ok(b"late"))
            await writer.drain()
            return
        writer.write(ok(b"fresh"))
        await writer.drain()

    upstream = await Scripted(handler).start()
    task = asyncio.ensure_future(transport.send(request_to(upstream.port, path="/slow")))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.4)
    response = await transport.send(request_to(upstream.port))
    assert await response.read() == b"fresh"
    assert upstream.connections == 2
    await upstream.close()


async def test_a_gzip_body_is_decompressed(transport: HttpTransport) -> None:
    payload = b'{"choices": []}' * 100

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(ok(gzip.compress(payload), extra=b"Content-Encoding: gzip\r\n"))
        await writer.drain()
        await reader.read()

    upstream = await Scripted(handler).start()
    response = await transport.send(request_to(upstream.port))
    assert await response.read() == payload
    await upstream.close()


async def test_an_interim_response_is_skipped(transport: HttpTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(extra=b"X-Final: yes\r\n"))
        await writer.drain()
        await reader.read()

    upstream = await Scripted(handler).start()
    response = await transport.send(request_to(upstream.port))
    assert response.status == 200 and response.headers["x-final"] == "yes" and "link" not in response.headers
    assert await response.read() == b'{"ok": true}'
    await upstream.close()


async def test_a_reader_that_lags_holds_the_server_back(transport: HttpTransport) -> None:
    """Back-pressure: a stream nobody reads is not buffered whole in the gateway."""
    sent = 0
    piece = b"x" * 65536

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * 400))
        for _ in range(400):
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    upstream = await Scripted(handler).start()
    response = await transport.send(request_to(upstream.port))
    await asyncio.sleep(0.5)
    assert sent < len(piece) * 400 / 2  # the server is held up: 26 MB were not taken in
    chunks = response.iter_chunks().__aiter__()
    received = 0
    async for chunk in chunks:
        received += len(chunk)
    assert received == len(piece) * 400
    await upstream.close()


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_large_body_read_whole_flows_to_the_end(transport: HttpTransport, chunked: bool) -> None:
    """A body far over the back-pressure mark is read whole at once, not after the chunk timeout."""
    body = b'{"data": "' + b"x" * (8 * 1024 * 1024) + b'"}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for start in range(0, len(body), 100_000):
                piece = body[start : start + 100_000]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(ok(body))
        await writer.drain()
        await upstream.read_request(reader)  # kept alive: the next request comes on it
        writer.write(ok())
        await writer.drain()

    upstream = await Scripted(handler).start()
    # A chunk timeout far below what the old deadlock waited: the read must not stall at all.
    response = await transport.send(request_to(upstream.port, timeout=2.0))
    assert await response.read() == body
    response = await transport.send(request_to(upstream.port))
    assert await response.read() == b'{"ok": true}'
    assert upstream.connections == 1
    await upstream.close()


async def test_a_body_over_the_response_cap_is_a_clear_upstream_error() -> None:
    """A body read whole past max_response_bytes fails at once with a message naming the limit."""
    transport = HttpTransport(max_response_bytes=1024 * 1024)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(ok(b"x" * (4 * 1024 * 1024)))
        await writer.drain()

    upstream = await Scripted(handler).start()
    response = await transport.send(request_to(upstream.port))
    with pytest.raises(UpstreamError, match="larger than the gateway's limit of 1048576 bytes"):
        await response.read()
    assert transport.client.open_connections == 0
    await transport.aclose()
    await upstream.close()


async def test_a_gzip_body_that_inflates_past_the_cap_is_refused() -> None:
    """A 4 KiB gzip that inflates to 4 MiB counts as 4 MiB against max_response_bytes."""
    transport = HttpTransport(max_response_bytes=1024 * 1024)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(ok(gzip.compress(b" " * (4 * 1024 * 1024)), extra=b"Content-Encoding: gzip\r\n"))
        await writer.drain()
        await reader.read()

    upstream = await Scripted(handler).start()
    response = await transport.send(request_to(upstream.port))
    with pytest.raises(UpstreamError, match="larger than the gateway's limit of 1048576 bytes"):
        await response.read()
    await transport.aclose()
    await upstream.close()


@pytest.mark.parametrize(
    ("url", "headers", "message"),
    [
        ("http://localhost:{port}/v1", {"Authorization": "Bearer sk-test\r\nX-Injected: 1"}, "holds a line break"),
        ("http://localhost:{port}/v1", {"Authorization": "Bearer sk-\u2603"}, "characters HTTP/1.1 cannot carry"),
        ("http://localhost:99999/v1", {}, "port is not a number"),
        ("ftp://localhost:{port}/v1", {}, "not an http:// or https:// URL"),
    ],
)
async def test_a_request_that_cannot_be_written_is_refused(
    transport: HttpTransport, url: str, headers: dict[str, str], message: str
) -> None:
    """A mistyped configuration gets an upstream error naming the problem, not a crash."""
    request = request_to(closed_port())
    request.url, request.headers = url.format(port=closed_port()), headers
    with pytest.raises(UpstreamError, match=message):
        await transport.send(request)


async def test_tls_with_a_verified_certificate_and_refused_without() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.read_request(reader)
            writer.write(ok(b"secret"))
            await writer.drain()

    upstream = await Scripted(handler).start(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    trusting = HttpTransport(ssl_context=client_context)
    for _ in range(2):
        response = await trusting.send(request_to(upstream.port, scheme="https"))
        assert await response.read() == b"secret"
    assert upstream.connections == 1
    await trusting.aclose()

    # The system's authorities do not know this one: the handshake fails, and says so.
    default = HttpTransport()
    with pytest.raises(UpstreamError, match="is unreachable: TLS failed"):
        await default.send(request_to(upstream.port, scheme="https"))
    await default.aclose()
    await upstream.close()
