"""How quotagate runs under uvicorn, in a module that imports nothing else of quotagate.

The benchmark's bare pass-through proxy uses the same settings without loading the gateway (its
modules would make its heap, and so every garbage collection, larger).
"""

from __future__ import annotations

import sys

import uvicorn


def event_loop_name() -> str:
    return "uvloop" if sys.platform != "win32" else "asyncio"


def uvicorn_config(app: object, host: str, port: int | None = None, workers: int = 1) -> uvicorn.Config:
    """``app`` is an ASGI app, or with several workers the import string of a function that
    makes one (each worker process calls it)."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port or 0,
        workers=workers,
        factory=isinstance(app, str),
        loop=event_loop_name(),
        http="httptools",
        lifespan="on",
        # Access logs cost more CPU than the proxying itself; request accounting is the ledger's job.
        access_log=False,
        log_level="warning",
        server_header=False,
        # The gateway never reads the client's address, so X-Forwarded-* need not be rewritten
        # into every request's scope (a middleware layer per request).
        proxy_headers=False,
        timeout_keep_alive=30,
    )
