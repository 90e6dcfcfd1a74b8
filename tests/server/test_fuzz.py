"""The gateway's own fuzzer: bodies, values and headers no client should send, answered without a 5xx.

Seeded, so a failure is reproducible: every mutation of a valid request (missing and mistyped
fields, huge and negative numbers, NUL and lone surrogates, deep nesting, non-UTF-8, truncated
JSON, megabyte strings) on every proxied endpoint gets a shaped 4xx or a 200, within a bound.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson

from ..accounting.test_ledger import ledger_rows
from ..conftest import RunningGateway

SEED = 20261204
CASES = 400

VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
    "/v1/completions": {"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 8},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
}
STRANGE_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    -(2**63) - 1,
    1e308,
    -1e308,
    1e-300,
    "",
    "\u0000",
    "a\u0000b",
    "\u202e\ufeff",
    "x" * 100_000,
    [],
    [None],
    {},
    {"role": "user"},
    [{"role": "user", "content": None}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [[[[[]]]]],
]


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()  # orjson refuses integers past 64 bits; clients need not


def _mutations(rng: random.Random) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """(path, body, extra headers): one malformed request after another."""
    paths = list(VALID)
    while True:
        path = rng.choice(paths)
        body: Any = json.loads(_dump(VALID[path]))
        kind = rng.randrange(9)
        headers: dict[str, str] = {}
        if kind == 0:  # a field gone
            body.pop(rng.choice(list(body)))
        elif kind == 1:  # a field of another type or size
            body[rng.choice(list(body))] = rng.choice(STRANGE_VALUES)
        elif kind == 2:  # a field nobody knows
            body[rng.choice(["", "\u0000", "model\u0000", "x" * 1000, "stream_options"])] = rng.choice(STRANGE_VALUES)
        elif kind == 3:  # the body is not an object
            body = rng.choice(STRANGE_VALUES)
        elif kind == 4:  # nested past any parser's depth
            depth = rng.choice([100, 1_000, 10_000])
            yield path, b"[" * depth + b"]" * depth, headers
            continue
        elif kind == 5:  # bytes that are not UTF-8, or JSON cut short
            raw = _dump(body)
            yield (
                path,
                rng.choice([raw[: rng.randrange(len(raw))], raw.replace(b"hi", b"\xff\xfe"), b"\x00" * 64]),
                headers,
            )
            continue
        elif kind == 6:  # lone surrogates, as JSON escapes
            yield path, _dump(body).replace(b'"hi"', b'"\\ud800\\udfff\\ud800"'), headers
            continue
        elif kind == 7:  # strange headers
            headers = rng.choice(
                [
                    {"content-type": "text/plain"},
                    {"content-type": "application/json; charset=latin-1"},
                    {"content-encoding": "gzip"},
                    {"x-client-request-id": "r" * 4096},
                    {"x-api-key": "qg-" + "x" * 2000},
                ]
            )
        else:  # stream with odd values
            body["stream"] = rng.choice(STRANGE_VALUES)
        yield path, _dump(body), headers


def test_malformed_requests_get_a_shaped_4xx_never_a_5xx_or_a_hang(
    start_gateway: Callable[..., RunningGateway], mock_upstream: Any, sqlite_url: str
) -> None:
    """400 seeded mutations of valid chat, completions and embeddings requests: each answered in time, no 5xx, every error shaped."""
    from ..conftest import gateway_config

    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    key = gw.create_key(tier="paid")["key"]
    rng = random.Random(SEED)
    cases = _mutations(rng)

    async def run() -> list[tuple[str, bytes, int, bytes, str]]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=gw.url, timeout=20, limits=limits) as client:

            async def one(path: str, body: bytes, headers: dict[str, str]) -> tuple[str, bytes, int, bytes, str]:
                response = await client.post(
                    path,
                    content=body,
                    headers={"Authorization": f"Bearer {key}", "content-type": "application/json", **headers},
                )
                return (
                    path,
                    body[:200],
                    response.status_code,
                    response.content,
                    response.headers.get("content-type", ""),
                )

            return await asyncio.gather(*(one(*next(cases)) for _ in range(CASES)))

    results = asyncio.run(run())
    for path, body, status, content, content_type in results:
        assert status < 500, (path, body, status, content[:300])
        if status >= 400:
            assert content_type.startswith("application/json"), (path, body, status)
            error = orjson.loads(content)["error"]
            assert isinstance(error["message"], str) and error["message"], (path, body, content[:300])
            assert isinstance(error["type"], str), (path, body, content[:300])
    statuses = {status for *_, status, _, _ in results}
    assert 400 in statuses and 200 in statuses  # the corpus reached both the checks and the provider


def _raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send ``data`` as it is on a new connection: what came back (until the server closed the
    connection, or went quiet for a second after answering), and whether the server closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(1.0 if received else max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False


def _statuses(received: bytes) -> list[int]:
    return [int(line.split(b" ")[1]) for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def test_what_no_http_client_sends_gets_a_4xx_and_leaves_the_gateway_serving(
    start_gateway: Callable[..., RunningGateway], mock_upstream: Any, postgres_url: str
) -> None:
    """Raw bytes no HTTP library would send: broken request lines, Content-Lengths that lie or
    contradict Transfer-Encoding, huge and countless headers, NUL, control and non-UTF-8 bytes in
    header values (the client's request id is stored in the ledger, on PostgreSQL here, which
    refuses NUL). Each gets a 4xx or a 200 (never a 5xx) or a closed connection, within a bound;
    the gateway's own errors are OpenAI-shaped; and afterwards it serves, and writes its ledger."""
    from ..conftest import gateway_config

    gw = start_gateway(gateway_config(postgres_url, mock_upstream.url))
    key = gw.create_key(tier="paid")["key"]
    port = gw.server.port
    body = orjson.dumps(VALID["/v1/chat/completions"])

    def request(head: bytes, payload: bytes = body) -> bytes:
        return head.replace(b"KEY", key.encode()) + payload

    cases = {
        "garbage request line": b"GARBAGE\r\n\r\n",
        "no HTTP version": b"POST /v1/chat/completions\r\n\r\n",
        "Content-Length not a number": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
        ),
        "negative Content-Length": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
        ),
        "two Content-Lengths": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\nContent-Length: 10\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        ),
        "Content-Length and chunked": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        "Content-Length shorter than the body": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\nContent-Length: 20\r\n\r\n"
        ),
        "bad chunk size": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"",
        ),
        "a 1 MiB header": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\nX-Big: "
            + b"a" * (1024 * 1024)
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        ),
        "10,000 headers": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
            + b"Content-Length: %d\r\n\r\n" % len(body)
        ),
        "non-UTF-8 key": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xfd\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        ),
        "NUL in a header": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\nX-Client-Request-Id: a\x00b\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        ),
        "control and non-UTF-8 bytes in the request id": request(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\nX-Client-Request-Id: fuzz-\x01\x1b[31m\xff\xc3\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        ),
        "NUL in the path": b"GET /v1/models\x00/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
        % key.encode(),
        "path of non-UTF-8 bytes": b"GET /v1/models/\xff\xfe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
        % key.encode(),
        "HTTP/0.9": b"GET /health\r\n",
        "HTTP/2 preface on HTTP/1.1": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    }
    for name, data in cases.items():
        began = time.monotonic()
        # Past server.header_timeout (10 s): a head that never ends (HTTP/0.9's) is closed then.
        received, closed = _raw_exchange(port, data, timeout=15.0)
        # Answered or hung up on, and soon: a connection left waiting is what this looks for.
        assert received or closed, f"{name}: no answer within 15 s"
        assert time.monotonic() - began < 17, name
        statuses = _statuses(received)
        assert all(status < 500 for status in statuses), (name, received[:500])
        for response in received.split(b"HTTP/1.1 ")[1:]:
            head, _, rest = response.partition(b"\r\n\r\n")
            if b"content-type: application/json" in head.lower() and int(head.split(b" ")[0]) >= 400:
                error = orjson.loads(rest[: rest.index(b"}}") + 2])["error"]
                assert error["message"] and error["type"], (name, rest[:300])

    # Still serving, and still writing its ledger: a row with a bad byte in it must not have
    # stuck every batch after it.
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        answer = client.post(
            "/v1/chat/completions",
            json=VALID["/v1/chat/completions"],
            headers={"Authorization": f"Bearer {key}", "x-client-request-id": "after-the-fuzz"},
        )
        assert answer.status_code == 200, answer.text
    with gw.admin() as admin:
        assert admin.get("/admin/usage").status_code == 200  # which writes this node's rows first
    ledger = gw.gateway.ledger
    assert ledger is not None
    rows = ledger_rows(postgres_url)
    assert "after-the-fuzz" in {row.client_request_id for row in rows}
    assert ledger.write_errors == 0
