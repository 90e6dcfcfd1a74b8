"""The semantic cache's embeddings from a model of the configuration (``cache.embedding: NAME``)
instead of the shipped local model.

Each question goes through the gateway's own router, as any embeddings request does: the model's
deployments, their provider limits, retries, breakers and fallbacks. Its ledger row is the
gateway's own, under the user ``quotagate-cache``, so that what the cache's embeddings cost is in
the reports beside what the cache saved. Tenants' limits do not apply: the tenant asked a chat
question, and its hit or miss is charged as that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import orjson

from ..auth import Principal
from ..errors import GatewayError, UpstreamError
from ..limits import Usage
from ..router import RouteRequest
from ..tokens import estimate_tokens, usage_details
from ..upstream import UpstreamBodies
from ._asgi import new_request_id
from ._record import RequestRecord, error_type

if TYPE_CHECKING:
    from ._proxy import Proxy

# Who the cache's embedding requests are, in the ledger and the reports.
CACHE_PRINCIPAL = Principal(key_id="cache", user="quotagate-cache", tier="cache", models=None)


class RoutedEmbedder:
    """``embed(text)`` by ``model``'s deployments; ``proxy`` gives the proxy serving now (a reload
    swaps the router and the books)."""

    def __init__(self, model: str, proxy: Callable[[], Proxy]) -> None:
        self.model = model
        self._proxy = proxy

    async def embed(self, text: str) -> np.ndarray:
        proxy, model = self._proxy(), self.model
        body = {"model": model, "input": text}
        estimate = estimate_tokens("embedding", body, model, 0, proxy.routes.models[model].context_window)
        bodies = UpstreamBodies(body, orjson.dumps(body), model, False, counts_tokens=True)
        record = RequestRecord(new_request_id(), None, CACHE_PRINCIPAL, model, False, time.perf_counter())
        try:
            exchange = await proxy.router.exchange(model, RouteRequest("/embeddings", bodies, False, estimate, 0.0, 0))
        except GatewayError as exc:
            await proxy.books.account(record, exc.status, error_type(exc))
            raise
        record.exchange, record.upstream_answered = exchange, True
        vector = None
        left = False
        try:
            payload = orjson.loads(await exchange.response.read())
            details = usage_details(payload)
            record.reported = (details[0], 0) if details is not None else (estimate.prompt, 0)
            # A fallback model's vectors are of another space than the index's: not comparable.
            if exchange.target.model == model:
                vector = np.asarray(payload["data"][0]["embedding"], dtype=np.float32)
        except asyncio.CancelledError:
            left = True  # the request that asked went away: no verdict on the deployment
            raise
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            pass
        finally:
            await proxy.router.finish(exchange, None if left else vector is not None, Usage(*record.actual()))
            if vector is not None:
                await proxy.books.account(record, exchange.response.status, None)
            else:
                await proxy.books.account(
                    record, *((499, "client_disconnected") if left else (502, "invalid_embedding"))
                )
        norm = float(np.linalg.norm(vector)) if vector is not None else 0.0
        if vector is None or norm == 0.0:
            raise UpstreamError(f"The embeddings model {model} did not answer with an embedding.")
        return vector / norm
