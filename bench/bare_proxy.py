"""The thinnest Python proxy that can be written: raw ASGI, one pooled HTTP client.

    python bench/bare_proxy.py --upstream http://127.0.0.1:9000 --port 8100 \
        [--server uvicorn|granian] [--client aiohttp|httpx|aiosonic|quotagate]

No auth, no limits, no parsing: the body goes up, the answer comes back (streams chunk by
chunk). With the defaults (uvicorn with uvloop and httptools, aiohttp) it is the floor the issue
measures quotagate's cost against; the other servers and clients are there to choose the stack
by measurement (bench/run.py's stack rows), among them quotagate's own upstream client
(``--client quotagate``, quotagate/upstream/_http.py), which the gateway runs on. granian and
aiosonic are not quotagate dependencies: install them into the venv to measure them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

# Read at import: granian imports this module afresh in its worker process.
UPSTREAM = os.environ.get("BARE_UPSTREAM", "").rstrip("/")
CLIENT = os.environ.get("BARE_CLIENT", "aiohttp")

Forward = Callable[[str, bytes], Awaitable[tuple[int, str, AsyncIterator[bytes], Callable[[], Awaitable[None]]]]]


def _aiohttp() -> tuple[Forward, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def forward(path: str, body: bytes) -> Any:
        response = await session.post(UPSTREAM + path, data=body, headers={"Content-Type": "application/json"})
        content_type = response.headers.get("content-type", "application/json")

        async def release() -> None:
            response.release()

        return response.status, content_type, response.content.iter_any(), release

    return forward, session.close


def _httpx() -> tuple[Forward, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=1000))

    async def forward(path: str, body: bytes) -> Any:
        request = client.build_request(
            "POST", UPSTREAM + path, content=body, headers={"Content-Type": "application/json"}
        )
        response = await client.send(request, stream=True)
        content_type = response.headers.get("content-type", "application/json")
        return response.status_code, content_type, response.aiter_raw(), response.aclose

    return forward, client.aclose


def _aiosonic() -> tuple[Forward, Callable[[], Awaitable[None]]]:
    import aiosonic  # type: ignore[import-not-found]

    client = aiosonic.HTTPClient()

    async def forward(path: str, body: bytes) -> Any:
        response = await client.post(UPSTREAM + path, data=body, headers={"Content-Type": "application/json"})
        content_type = response.headers.get("content-type", "application/json")
        return response.status_code, content_type, response.iter_bytes(), response.aclose

    return forward, client.aclose


def _quotagate() -> tuple[Forward, Callable[[], Awaitable[None]]]:
    from quotagate.upstream._http import HttpClient

    client = HttpClient()
    headers = {"Content-Type": "application/json"}

    async def forward(path: str, body: bytes) -> Any:
        response = await client.post(UPSTREAM + path, headers, body, 10.0, 60.0)
        content_type = response.headers.get("content-type", "application/json")

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await response.next_chunk(60.0):
                yield chunk

        async def release() -> None:
            response.close()

        return response.status, content_type, chunks(), release

    return forward, client.aclose


CLIENTS = {"aiohttp": _aiohttp, "httpx": _httpx, "aiosonic": _aiosonic, "quotagate": _quotagate}
forward: Forward | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global forward
    if scope["type"] == "lifespan":
        close: Callable[[], Awaitable[None]] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                forward, close = CLIENTS[CLIENT]()
                await send({"type": "lifespan.startup.complete"})
            else:
                if close is not None:
                    await close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    assert forward is not None
    status, content_type, chunks, release = await forward(scope["path"], body)
    try:
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]}
        )
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp")
    args = parser.parse_args()
    os.environ["BARE_UPSTREAM"], os.environ["BARE_CLIENT"] = args.upstream, args.client
    global UPSTREAM, CLIENT
    UPSTREAM, CLIENT = args.upstream.rstrip("/"), args.client
    if args.server == "granian":
        from granian import Granian  # type: ignore[import-not-found]

        # One worker on a single-threaded runtime: the one-process shape every other row has.
        Granian(
            "bare_proxy:app",
            address="127.0.0.1",
            port=args.port,
            interface="asgi",
            loop="uvloop",
            workers=1,
            runtime_mode="st",
            log_enabled=False,
            working_dir=Path(__file__).resolve().parent,
        ).serve()
        return
    import uvicorn

    # quotagate's own uvicorn settings, so that only the proxying differs; apart from the
    # quotagate client, the module loads nothing else of quotagate.
    from quotagate._uvicorn import uvicorn_config

    uvicorn.Server(uvicorn_config(app, "127.0.0.1", args.port)).run()


if __name__ == "__main__":
    main()
