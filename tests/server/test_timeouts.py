"""The server's deadlines for what a client sends, over raw sockets: a head that never completes
closes the connection, a body that stops short of its Content-Length gets a 408 and the connection
is freed, and honest slow clients are served: within the head's deadline, and with a body that
keeps coming however long it takes in all (issue 18, defect 5)."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator

import orjson
import pytest
import uvicorn

from quotagate._uvicorn import uvicorn_config
from quotagate.server import Gateway

from ..conftest import RunningGateway, ServerThread, gateway_config

HEADER_TIMEOUT = 0.6
BODY_TIMEOUT = 0.8
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def gateway(upstream_env: None, sqlite_url: str, mock_upstream: ServerThread) -> Iterator[RunningGateway]:
    gateway = Gateway(gateway_config(sqlite_url, mock_upstream.url))
    server = ServerThread(gateway)
    server.server = uvicorn.Server(
        uvicorn_config(gateway, "127.0.0.1", header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT)
    )
    server.start()
    yield RunningGateway(server.url, server, gateway)
    server.stop()


def _connect(gw: RunningGateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.server.port), timeout=10)
    return sock


def _head(key: str, length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (key.encode(), length)
    )


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length: its head and body."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, received
        body += chunk
    return head + b"\r\n\r\n" + body


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_body_shorter_than_its_content_length_gets_408_and_the_connection_closes(
    gateway: RunningGateway, sqlite_url: str
) -> None:
    """Content-Length promises 100 bytes, 10 come: an OpenAI-shaped 408 after the body timeout, then EOF."""
    key = gateway.create_key()["key"]
    with _connect(gateway) as sock:
        began = time.monotonic()
        sock.sendall(_head(key, 100) + b'{"model": ')
        answer = _read_until_closed(sock)
        waited = time.monotonic() - began
    assert BODY_TIMEOUT * 0.9 <= waited < BODY_TIMEOUT + 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"content-type: application/json" in head.lower()
    assert orjson.loads(body)["error"] == {
        "message": "The request body did not arrive in time.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }
    # The tenant's row says what happened: a 408, not a client that left (written as the
    # application learns of it, just after the server's answer).
    deadline = time.monotonic() + 5
    rows: list[tuple[int, str]] = []
    while not rows and time.monotonic() < deadline:
        time.sleep(0.05)
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
            rows = db.execute("SELECT status, error_type FROM qg_usage").fetchall()
    assert rows == [(408, "request_timeout")]


def test_a_head_that_never_completes_is_closed(gateway: RunningGateway) -> None:
    """A head sent a byte at a time, and a connection that sends nothing, are closed at the header timeout."""
    with _connect(gateway) as silent, _connect(gateway) as trickling:
        began = time.monotonic()
        head = _head("qg-whatever", 2)
        closed_at = None
        for byte in head[:-4]:
            try:
                trickling.sendall(bytes([byte]))
            except OSError:  # reset by the server
                closed_at = time.monotonic()
                break
            trickling.settimeout(0.05)
            try:
                if trickling.recv(1) == b"":
                    closed_at = time.monotonic()
                    break
            except TimeoutError:
                pass
        assert closed_at is not None and closed_at - began < HEADER_TIMEOUT + 5
        silent.settimeout(10)
        assert silent.recv(1) == b""  # nothing was written: closed without an answer
        assert time.monotonic() - began < HEADER_TIMEOUT + 5


def test_slow_but_timely_clients_are_served_on_a_kept_connection(gateway: RunningGateway) -> None:
    """A head and a body each arriving in pieces within their deadlines get a 200, twice on one connection."""
    key = gateway.create_key()["key"]
    with _connect(gateway) as sock:
        for _ in range(2):
            request = _head(key, len(CHAT)) + CHAT
            cut_head, cut_body = 30, len(request) - 20
            for piece in (request[:cut_head], request[cut_head:cut_body], request[cut_body:]):
                sock.sendall(piece)
                time.sleep(min(HEADER_TIMEOUT, BODY_TIMEOUT) / 3)
            answer = _read_response(sock)
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            # Idle between requests is the keep-alive's to bound, not the header timeout's.
            time.sleep(HEADER_TIMEOUT * 1.5)


# A body larger than one read, for sending in pieces.
LONG_CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi " * 200}]})


def test_a_body_that_keeps_coming_is_read_however_long_it_takes(gateway: RunningGateway) -> None:
    """Ten pieces 0.3 s apart: about 4 body timeouts in all, never one without bytes: a 200."""
    key = gateway.create_key()["key"]
    pieces = [LONG_CHAT[i * len(LONG_CHAT) // 10 : (i + 1) * len(LONG_CHAT) // 10] for i in range(10)]
    with _connect(gateway) as sock:
        began = time.monotonic()
        sock.sendall(_head(key, len(LONG_CHAT)))
        for piece in pieces:
            time.sleep(0.3)
            sock.sendall(piece)
        answer = _read_response(sock)
        assert time.monotonic() - began > BODY_TIMEOUT * 3
        assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_a_body_that_pauses_longer_than_the_body_timeout_gets_408(gateway: RunningGateway) -> None:
    """Pieces 0.3 s apart for longer than the body timeout, then silence: a 408 one body timeout
    after the last piece, then EOF."""
    key = gateway.create_key()["key"]
    with _connect(gateway) as sock:
        sock.sendall(_head(key, len(LONG_CHAT)))
        for piece in (LONG_CHAT[:100], LONG_CHAT[100:200], LONG_CHAT[200:300], LONG_CHAT[300:400]):
            time.sleep(0.3)
            sock.sendall(piece)
        last_piece = time.monotonic()
        answer = _read_until_closed(sock)
        waited = time.monotonic() - last_piece
    assert BODY_TIMEOUT * 0.9 <= waited < BODY_TIMEOUT + 5
    assert answer.startswith(b"HTTP/1.1 408 "), answer
