"""The OpenAI-compatible endpoints: authenticate, check, pick a deployment, relay.

Requests go upstream as the client sent them, apart from the model name when the deployment
calls the model something else. Responses come back as the provider sent them; streams are
relayed event by event as they arrive, never buffered whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ..auth import Authenticator, Principal, extract_key
from ..errors import GatewayError, NotFoundError, PermissionDeniedError
from ..upstream import ModelRoutes, Transport, UpstreamRequest, UpstreamResponse
from ._asgi import JSON_CONTENT_TYPE, Receive, RequestHeaders, Send, read_body, send_bytes
from ._upstream_errors import upstream_status_error
from ._validation import ParsedRequest, parse_chat, parse_completion, parse_embedding

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Tells nginx-style proxies in front of the gateway not to buffer the stream either.
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    upstream_path: str
    parse: Callable[[bytes], ParsedRequest]


CHAT = Endpoint("/chat/completions", parse_chat)
COMPLETIONS = Endpoint("/completions", parse_completion)
EMBEDDINGS = Endpoint("/embeddings", parse_embedding)


def _end_of_last_event(data: bytes) -> int:
    """Length of the prefix of ``data`` made of complete SSE events (0 if none)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class Proxy:
    def __init__(
        self,
        routes: ModelRoutes,
        authenticator: Authenticator,
        transport: Transport,
        max_body_bytes: int,
        upstream_secrets: tuple[str, ...],
    ) -> None:
        self.routes = routes
        self.authenticator = authenticator
        self.transport = transport
        self.max_body_bytes = max_body_bytes
        self._secrets = upstream_secrets

    async def authenticate(self, headers: RequestHeaders) -> Principal:
        return await self.authenticator.authenticate(extract_key(headers.authorization, headers.x_api_key))

    def check_model(self, principal: Principal, model: str) -> None:
        # An unknown model and a model the key may not use get different answers, as on OpenAI:
        # 404 says "no such model here", 403 says "not for you".
        if model not in self.routes.models:
            raise NotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        if not principal.may_use(model):
            raise PermissionDeniedError(
                f"This API key is not allowed to use the model `{model}`.",
                param="model",
                code="model_not_allowed",
            )

    async def handle(
        self,
        endpoint: Endpoint,
        receive: Receive,
        send: Send,
        headers: RequestHeaders,
        request_id: str,
    ) -> None:
        # Authenticate before reading the body: an anonymous client cannot make the gateway
        # buffer up to max_body_bytes.
        principal = await self.authenticate(headers)
        raw = await read_body(receive, headers.content_length, self.max_body_bytes)
        request = endpoint.parse(raw)
        self.check_model(principal, request.model)

        target = self.routes.choose(request.model)
        if target.provider_model == request.model:
            upstream_body = raw
        else:
            upstream_body = orjson.dumps({**request.body, "model": target.provider_model})
        response = await self.transport.send(
            UpstreamRequest(
                url=target.url(endpoint.upstream_path),
                headers=target.headers,
                body=upstream_body,
                read_timeout=target.read_timeout,
                connect_timeout=target.connect_timeout,
                label=target.label,
            )
        )
        id_header = (b"x-request-id", request_id.encode())
        if response.status >= 300:
            body = await response.read()
            raise upstream_status_error(response.status, body, response.headers, target.label, self._secrets)
        content_type = response.headers.get("content-type", "")
        if request.stream and content_type.startswith("text/event-stream"):
            await self._relay_stream(response, receive, send, id_header)
            return
        body = await response.read()
        await send_bytes(
            send,
            response.status,
            body,
            [
                (b"content-type", content_type.encode("latin-1")) if content_type else JSON_CONTENT_TYPE,
                id_header,
            ],
        )

    async def _relay_stream(
        self,
        response: UpstreamResponse,
        receive: Receive,
        send: Send,
        id_header: tuple[bytes, bytes],
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, id_header]})
        relay_task = asyncio.current_task()
        assert relay_task is not None
        client_gone = False

        async def watch_for_disconnect() -> None:
            # uvicorn's send() silently drops writes to a closed connection, so the only way to
            # learn that the client left is to wait for http.disconnect; then the relay is
            # cancelled, which closes the upstream response instead of reading it to the end.
            nonlocal client_gone
            while (await receive())["type"] != "http.disconnect":
                pass
            client_gone = True
            relay_task.cancel()

        watcher = asyncio.ensure_future(watch_for_disconnect())
        try:
            try:
                pending = b""
                async for chunk in response.iter_chunks():
                    data = pending + chunk if pending else chunk
                    # Forward whole events only, so that a failure mid-event can still be
                    # followed by a well-formed error event the SDK understands.
                    cut = _end_of_last_event(data)
                    if cut == 0:
                        pending = data
                        continue
                    pending = data[cut:]
                    await send({"type": "http.response.body", "body": data[:cut], "more_body": True})
                if pending:
                    await send({"type": "http.response.body", "body": pending, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except GatewayError as exc:
                # The status line has gone; an error event is the only way left to tell the
                # client. The OpenAI SDKs raise it as an APIError.
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + exc.body() + b"\n\n",
                        "more_body": True,
                    }
                )
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not client_gone:
                raise
            relay_task.uncancel()
        finally:
            watcher.cancel()
            response.close()
