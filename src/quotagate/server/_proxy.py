"""The OpenAI-compatible endpoints: authenticate, check, pick a deployment, relay.

Requests go upstream as the client sent them, apart from the model name when the deployment
calls the model something else. Responses come back as the provider sent them; streams are
relayed event by event as they arrive, never buffered whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..auth import Authenticator, Principal, extract_key
from ..errors import GatewayError, NotFoundError, PermissionDeniedError, ServiceUnavailableError
from ..limits import Limit, Limiter, StoreUnavailableError, Unit
from ..policy import Policy
from ..tokens import ZERO, Estimate, count_generated, estimate_tokens, generated_text, usage_of
from ..tokens._estimate import Kind
from ..upstream import DeploymentTarget, ModelRoutes, Transport, UpstreamRequest, UpstreamResponse
from ._asgi import JSON_CONTENT_TYPE, Receive, RequestHeaders, Send, read_body, send_bytes
from ._ratelimit import rate_limit_error, ratelimit_headers
from ._stream_usage import StreamUsage
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
    kind: Kind


CHAT = Endpoint("/chat/completions", parse_chat, "chat")
COMPLETIONS = Endpoint("/completions", parse_completion, "completion")
EMBEDDINGS = Endpoint("/embeddings", parse_embedding, "embedding")


def _end_of_last_event(data: bytes) -> int:
    """Length of the prefix of ``data`` made of complete SSE events (0 if none)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _costs(limits: tuple[Limit, ...], estimate: Estimate) -> list[int]:
    by_unit = {
        Unit.REQUESTS: 1,
        Unit.CONCURRENT: 1,
        Unit.TOKENS: estimate.total,
        Unit.INPUT_TOKENS: estimate.prompt,
        Unit.OUTPUT_TOKENS: estimate.output,
    }
    return [by_unit[limit.unit] for limit in limits]


def _deltas(limits: tuple[Limit, ...], estimate: Estimate, prompt: int, completion: int) -> list[int]:
    by_unit = {
        Unit.REQUESTS: 0,
        Unit.CONCURRENT: 0,
        Unit.TOKENS: prompt + completion - estimate.total,
        Unit.INPUT_TOKENS: prompt - estimate.prompt,
        Unit.OUTPUT_TOKENS: completion - estimate.output,
    }
    return [by_unit[limit.unit] for limit in limits]


@dataclass(slots=True)
class _Usage:
    """What the request actually used, as learnt from the response (None: nothing yet)."""

    reported: tuple[int, int] | None = None
    generated: str = ""
    upstream_answered: bool = False


class Proxy:
    def __init__(
        self,
        routes: ModelRoutes,
        authenticator: Authenticator,
        transport: Transport,
        max_body_bytes: int,
        upstream_secrets: tuple[str, ...],
        policy: Policy | None = None,
        limiter: Limiter | None = None,
        expected_output_tokens: int = 512,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes = routes
        self.authenticator = authenticator
        self.transport = transport
        self.max_body_bytes = max_body_bytes
        self.policy = policy
        self.limiter = limiter
        self.expected_output_tokens = expected_output_tokens
        self._secrets = upstream_secrets
        self._clock = clock

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
        body = request.body
        id_header = (b"x-request-id", request_id.encode())

        applied = (
            self.policy.limits_for(principal, request.model) if self.policy and self.policy.enabled else None
        )
        if not applied or self.limiter is None:
            upstream_body = (
                raw
                if target.provider_model == request.model
                else orjson.dumps({**body, "model": target.provider_model})
            )
            await self._forward(
                target, endpoint, upstream_body, request.stream, receive, send, [id_header], None, None
            )
            return

        estimate = ZERO
        if applied.counts_tokens:
            model_config = self.routes.models[request.model]
            estimate = estimate_tokens(
                endpoint.kind, body, request.model, self.expected_output_tokens, model_config.context_window
            )
        try:
            decision = await self.limiter.acquire(
                applied.limits,
                _costs(applied.limits, estimate),
                max_wait=applied.max_wait,
                priority=applied.priority,
            )
        except StoreUnavailableError:
            raise ServiceUnavailableError(
                "The rate limit store is unavailable, and this gateway is set to refuse requests "
                "it cannot count. Try again shortly.",
                code="limit_store_unavailable",
            ) from None
        if not decision.allowed:
            error = rate_limit_error(decision, self._clock())
            error.headers["x-request-id"] = request_id
            raise error

        changes: dict[str, Any] = {}
        if target.provider_model != request.model:
            changes["model"] = target.provider_model
        options = body.get("stream_options")
        client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        we_asked_for_usage = False
        if request.stream and applied.counts_tokens and target.stream_usage and not client_wants_usage:
            # Settling needs the provider's count; the client will not see the extra chunk.
            changes["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            we_asked_for_usage = True
        upstream_body = orjson.dumps({**body, **changes}) if changes else raw
        usage = _Usage() if applied.counts_tokens else None
        stream_usage = (
            StreamUsage(strip_usage_chunk=we_asked_for_usage)
            if usage is not None and request.stream
            else None
        )
        try:
            await self._forward(
                target,
                endpoint,
                upstream_body,
                request.stream,
                receive,
                send,
                [id_header, *ratelimit_headers(decision)],
                usage,
                stream_usage,
            )
        finally:
            # Settle on every path: success, provider error, client gone, or cancellation.
            if usage is not None:
                if stream_usage is not None:
                    usage.reported = stream_usage.usage
                    usage.generated = "".join(stream_usage.pieces)
                if usage.reported is not None:
                    prompt, completion = usage.reported
                elif usage.upstream_answered:
                    prompt, completion = estimate.prompt, count_generated(usage.generated, request.model)
                else:
                    prompt, completion = 0, 0  # the provider never took the request
                await self.limiter.settle(
                    decision, applied.limits, _deltas(applied.limits, estimate, prompt, completion)
                )
            await self.limiter.release(decision, applied.limits)

    async def _forward(
        self,
        target: DeploymentTarget,
        endpoint: Endpoint,
        upstream_body: bytes,
        stream: bool,
        receive: Receive,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]],
        usage: _Usage | None,
        stream_usage: StreamUsage | None,
    ) -> None:
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
        if response.status >= 300:
            body = await response.read()
            raise upstream_status_error(response.status, body, response.headers, target.label, self._secrets)
        if usage is not None:
            usage.upstream_answered = True
        content_type = response.headers.get("content-type", "")
        if stream and content_type.startswith("text/event-stream"):
            await self._relay_stream(response, receive, send, extra_headers, stream_usage)
            return
        body = await response.read()
        if usage is not None:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                payload = None
            usage.reported = usage_of(payload)
            if usage.reported is None:
                usage.generated = generated_text(payload)
        type_header = (b"content-type", content_type.encode("latin-1")) if content_type else JSON_CONTENT_TYPE
        await send_bytes(send, response.status, body, [type_header, *extra_headers])

    async def _relay_stream(
        self,
        response: UpstreamResponse,
        receive: Receive,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]],
        stream_usage: StreamUsage | None,
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *extra_headers]})
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
                    events = data[:cut]
                    if stream_usage is not None:
                        events = stream_usage.feed(events)
                    await send({"type": "http.response.body", "body": events, "more_body": True})
                if pending:
                    if stream_usage is not None:
                        pending = stream_usage.feed(pending)
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
