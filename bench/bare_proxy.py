"""The thinnest Python proxy that can be written: raw ASGI, one pooled aiohttp session.

    python bench/bare_proxy.py --upstream http://127.0.0.1:9000 --port 8100

No auth, no limits, no parsing: the body goes up, the answer comes back (streams chunk by
chunk). It is the floor against which quotagate's cost is measured.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn

session: aiohttp.ClientSession | None = None
UPSTREAM = ""


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    global session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
                await send({"type": "lifespan.startup.complete"})
            else:
                assert session is not None
                await session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    assert session is not None
    async with session.post(UPSTREAM + scope["path"], data=body, headers={"Content-Type": "application/json"}) as r:
        headers = [(b"content-type", r.headers.get("content-type", "application/json").encode())]
        await send({"type": "http.response.start", "status": r.status, "headers": headers})
        async for chunk in r.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    global UPSTREAM
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    UPSTREAM = args.upstream.rstrip("/")
    # The same uvicorn settings as quotagate's (server/_run.py), so that only the proxying differs.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
