"""Anthropic's Messages API on the way in: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

A Messages request is the proxy's (``MESSAGES``: the same keys, limits, routing, ledger; see
_proxy); what is Anthropic's about it is said here: every error in Anthropic's shape
(``{"type": "error", "error": {"type": "rate_limit_error", ...}}``) with its status, and a 429's
``anthropic-ratelimit-*`` headers beside its ``retry-after``. The official SDK and Claude Code send
their key as ``x-api-key`` (or a bearer token), which the gateway reads as it reads any key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson

from ..errors import GatewayError, InvalidRequestError
from ..surfaces import anthropic_error, anthropic_error_for
from ..tokens import estimate_tokens
from ._asgi import JSON_CONTENT_TYPE, Receive, RequestHeaders, Scope, Send, read_body, request_id_headers, send_bytes
from ._proxy import Proxy
from ._ratelimit import RateLimitError, anthropic_ratelimit_headers
from ._validation import parse_count_tokens

logger = logging.getLogger("quotagate")

Handler = Callable[[Scope, Receive, Send, RequestHeaders, str], Awaitable[None]]


def anthropic_errors(handler: Handler) -> Handler:
    """``handler`` answering its errors as Anthropic's API does (the gateway's others answer in
    OpenAI's shape): the same status, Anthropic's body, the same headers."""

    async def serve(scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str) -> None:
        try:
            await handler(scope, receive, send, headers, request_id)
        except GatewayError as exc:
            status, body = anthropic_error_for(exc)
            extra = [(name.encode(), value.encode()) for name, value in exc.headers.items()]
            if isinstance(exc, RateLimitError) and exc.decision is not None:
                extra.extend(anthropic_ratelimit_headers(exc.decision, time.time()))
            extra.extend(request_id_headers(request_id, headers.client_request_id))
            await send_bytes(send, status, body, [JSON_CONTENT_TYPE, *extra])
        except Exception:
            logger.exception("unhandled error in request %s", request_id)
            body = anthropic_error(500, "api_error", "The gateway hit an internal error; it has been logged.")
            await send_bytes(
                send, 500, body, [JSON_CONTENT_TYPE, *request_id_headers(request_id, headers.client_request_id)]
            )

    return serve


class CountTokens:
    """``POST /v1/messages/count_tokens``: the prompt's tokens as the gateway estimates them for
    its limits (the model's tokenizer, or cl100k/o200k where it has none of its own: Claude's own
    tokenizer is not public, so this is an estimate). Free and unlimited, as Anthropic's is free;
    authenticated, and only for models the key may use."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        proxy = self.proxy
        principal = await proxy.authenticate(headers)
        raw = await read_body(receive, headers.content_length, proxy.max_body_bytes, scope)
        request = parse_count_tokens(raw)
        proxy.check_model(principal, request.model)
        if proxy.planner is not None and proxy.planner.routes(request.model):
            raise InvalidRequestError(f"`{request.model}` is a routed model: count tokens with a class's model.")
        # Off the event loop: a body may hold up to max_body_bytes of text to count.
        estimate = await asyncio.to_thread(estimate_tokens, "chat", request.body, request.model, 0, None)
        body = orjson.dumps({"input_tokens": estimate.prompt})
        extra = request_id_headers(request_id, headers.client_request_id)
        await send_bytes(send, 200, body, [JSON_CONTENT_TYPE, *extra])
