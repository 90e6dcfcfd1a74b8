"""The gateway's own fuzzer: bodies, values and headers no client should send, answered without a 5xx.

Seeded, so a failure is reproducible: every mutation of a valid request (missing and mistyped
fields, huge and negative numbers, NUL and lone surrogates, deep nesting, non-UTF-8, truncated
JSON, megabyte strings) on every proxied endpoint gets a shaped 4xx or a 200, within a bound.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson

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
