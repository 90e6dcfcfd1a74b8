"""The passthrough: every other OpenAI endpoint, relayed as the client sent it.

Images, audio (speech, transcriptions and their multipart uploads), moderations, files, batches,
fine-tuning, and any ``/v1/*`` path a provider adds later: the gateway does not need to understand
them to keep what it is for. Each goes through the proxy's stages, fewer of them:

    auth      Proxy.authenticate         the same keys
    model     _asked_model               the JSON body's ``model``, or a multipart form's ``model``
                                         field; else ``passthrough.default_model`` (files, batches)
    policy    TenantCharge               the tenant's limits for that model, with no token estimate
                                         (an endpoint that knows one overrides ``_estimate``)
    limits    TenantCharge.admit         its request limits (token limits settle with usage)
    route     Router.exchange            a deployment of the model: the same method, path, query
                                         string, Content-Type and body bytes (``RouteRequest.method``)
    relay     relay_stream, _relay       an event stream event by event; any other answer as it
                                         comes, binary (audio) unchanged, text scrubbed of secrets
    settle    Router.finish, .settle     with the usage the provider reports, if it reports one
    account   Books.account              the ledger row: model, deployment, status, latency, usage

The body is read whole (under ``server.max_body_bytes``): a retry on another deployment sends it
again. Only the ``model`` of a multipart form is looked for, in place; the upload is not parsed
or copied (unless a deployment's name for the model differs, which rewrites that field).

The Responses API (_responses) takes this path with its own model and deployment, estimate,
stream usage and bookkeeping (``_destination``, ``_estimate``, ``_stream_usage``, ``_done``).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson

from ..auth import Principal
from ..errors import GatewayError, InvalidRequestError, MethodNotAllowedError
from ..limits import Usage
from ..router import RouteRequest
from ..tokens import ZERO, Estimate, usage_details
from ..upstream import DeploymentTarget, Scrubber, UpstreamBodies
from ._asgi import Receive, RequestHeaders, Scope, Send, read_body, request_id_headers
from ._disconnect import DisconnectWatch, Watches
from ._proxy import _MODEL_CHARS, Proxy
from ._ratelimit import rate_limit_error, ratelimit_headers
from ._record import RequestRecord, error_type
from ._relay import relay_stream
from ._stream_usage import StreamUsage
from ._tenant import TenantCharge

# The head of one part of a multipart form is a few short lines; past this it is not looked at.
_MAX_PART_HEAD = 8 * 1024
_PART_NAME = re.compile(rb'(?im)^content-disposition:[^\r\n]*;\s*name="([^"\r\n]*)"')
_BOUNDARY = re.compile(r'(?i);\s*boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))')
# The provider's Content-Type is relayed only in this shape, and never one holding a secret: a
# header is the provider's text (see _relay).
_CONTENT_TYPE = re.compile(r'[\w.+-]+/[\w.+-]+(\s*;\s*[\w.-]+=("[^"\r\n]*"|[\w.+/=-]+))*')
_OCTET_STREAM = b"application/octet-stream"


class Asked:
    """The model a request's body names, and where its value is in a multipart body (to rewrite
    it for a deployment that calls the model otherwise)."""

    __slots__ = ("json", "model", "span")

    def __init__(self, model: str | None, json: dict[str, Any] | None, span: tuple[int, int] | None) -> None:
        self.model = model
        self.json = json  # the parsed JSON body that named it
        self.span = span  # the model field's value in a multipart body


def _asked_model(raw: bytes, content_type: str | None) -> Asked:
    """The ``model`` a JSON body or a multipart/form-data body names (Asked(None, ...): none)."""
    kind = (content_type or "").partition(";")[0].strip().lower()
    if kind == "multipart/form-data" and content_type is not None:
        span = _form_field(raw, content_type, b"model")
        if span is None:
            return Asked(None, None, None)
        try:
            return Asked(raw[span[0] : span[1]].decode(), None, span)
        except UnicodeDecodeError:
            raise InvalidRequestError("The form's model field is not UTF-8 text.", param="model") from None
    if not raw or (kind and kind != "application/json"):
        return Asked(None, None, None)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Asked(None, None, None)  # not the gateway's to judge: the provider answers it
    if not isinstance(body, dict) or "model" not in body:
        return Asked(None, None, None)
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("The model must be a non-empty string.", param="model")
    return Asked(model, body, None)


def _form_field(raw: bytes, content_type: str, name: bytes) -> tuple[int, int] | None:
    """Where the value of the form field ``name`` is in a multipart body: searched in place, the
    files in it neither parsed nor copied."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    delimiter = b"--" + (found.group(1) or found.group(2)).encode("latin-1")
    position = raw.find(delimiter)
    while position >= 0:
        head_start = position + len(delimiter)
        if raw.startswith(b"--", head_start):
            return None  # the closing delimiter
        head_end = raw.find(b"\r\n\r\n", head_start, head_start + _MAX_PART_HEAD)
        if head_end < 0:
            return None
        value_end = raw.find(b"\r\n" + delimiter, head_end + 4)
        if value_end < 0:
            return None
        part = _PART_NAME.search(raw, head_start, head_end)
        if part is not None and part.group(1) == name:
            return head_end + 4, value_end
        position = value_end + 2
    return None


# A path as the passthrough sends it on: segments of the characters OpenAI's paths and ids use.
# Not "%": the client's bytes are what goes upstream, so an encoded "#", "?" or "/" would reach the
# provider as a path the gateway's routes did not see (/v1/chat/completions%23 is chat,
# unlimited); not "." or ".." segments, which a provider would resolve to another path.
_PATH = re.compile(r"/v1(?:/[A-Za-z0-9._~:@+,;=!$*'()-]+)+")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_ONE_TOKEN = Estimate(1, 0)


def _forwarded_path(scope: Scope) -> str:
    """The request's path as it came (not decoded), if the passthrough may send it on; a 400, or
    405 for a method no provider endpoint takes (HEAD, whose answer has no body to wait for)."""
    method = scope["method"]
    if method not in _METHODS:
        raise MethodNotAllowedError(
            f"{method} is not allowed on {scope['path']}.", headers={"Allow": ", ".join(sorted(_METHODS))}
        )
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else scope["path"]
    if not _PATH.fullmatch(path) or any(segment in (".", "..") for segment in path.split("/")):
        raise InvalidRequestError(f"The path {path[:200]!r} is not one the gateway passes on.", code="invalid_path")
    return path


class PassthroughBodies(UpstreamBodies):
    """The body each deployment is sent: the client's bytes, with the deployment's name for the
    model where it has its own, to go with the client's method and Content-Type."""

    __slots__ = ("_asked", "_sent", "content_type", "method")

    def __init__(self, raw: bytes, asked: Asked, method: str, content_type: str | None) -> None:
        super().__init__(asked.json or {}, raw, asked.model or "", False, False)
        self._asked = asked
        self._sent: dict[str, bytes] = {}
        self.method = method
        self.content_type = content_type

    def for_target(self, target: DeploymentTarget) -> bytes:
        sent = self._sent.get(target.id)
        if sent is None:
            sent = self._sent[target.id] = self._body(target)
        return sent

    def asked_for_usage(self, target: DeploymentTarget) -> bool:
        return False

    def path_for(self, target: DeploymentTarget, path: str) -> str:
        return path  # as the client asked, whichever API the deployment speaks

    def _body(self, target: DeploymentTarget) -> bytes:
        asked = self._asked
        if asked.model is None or target.provider_model == asked.model:
            return self.raw
        if asked.json is not None:
            return orjson.dumps({**asked.json, "model": target.provider_model})
        assert asked.span is not None
        start, end = asked.span
        return b"".join((self.raw[:start], target.provider_model.encode(), self.raw[end:]))


def _reported_usage(payload: Any) -> tuple[int, int, int] | None:
    """(input, output, cached input) tokens of a JSON answer's ``usage``: chat's field names, or
    the ones images, transcriptions and the Responses API use (``input_tokens``, ...)."""
    details = usage_details(payload)
    if details is not None:
        return details
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict) or type(usage.get("input_tokens")) is not int:
        return None
    output = usage.get("output_tokens")
    cached = usage.get("input_tokens_details")
    cached = cached.get("cached_tokens") if isinstance(cached, dict) else None
    return usage["input_tokens"], output if type(output) is int else 0, cached if type(cached) is int else 0


def _content_type(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            text: str = value.decode("latin-1")
            return text
    return None


class Passthrough:
    """Serves any method on a ``/v1/*`` path that no dedicated route takes (see the module)."""

    def __init__(self, proxy: Proxy, default_model: str | None) -> None:
        self.proxy = proxy
        self.default_model = default_model
        self._scrubber = Scrubber(proxy.router.secrets)
        self._watches = Watches()

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        began = time.perf_counter()
        proxy = self.proxy
        # Authenticate before reading the body, as the proxy does.
        principal = await proxy.authenticate(headers)
        path = _forwarded_path(scope)
        content_type = _content_type(scope)
        model: str | None = None
        try:
            raw = await read_body(receive, headers.content_length, proxy.max_body_bytes, scope)
            asked = _asked_model(raw, content_type)
            model, deployment = await self._destination(scope, principal, asked)
            proxy.check_model(principal, model)
            if proxy.planner is not None and proxy.planner.routes(model):
                raise InvalidRequestError(
                    f"`{model}` is a routed model: it serves chat completions only.", param="model"
                )
        except GatewayError as exc:
            refused = RequestRecord(
                request_id,
                headers.client_request_id,
                principal,
                model[:_MODEL_CHARS] if model else None,
                False,
                began,
            )
            await proxy.books.account(refused, exc.status, error_type(exc))
            raise
        record = RequestRecord(request_id, headers.client_request_id, principal, model, False, began)
        # What the deployment is asked: the path under its base URL (which ends in /v1).
        path = path[len("/v1") :]
        query = scope.get("query_string", b"")
        if query:
            path += "?" + query.decode("latin-1")
        bodies = PassthroughBodies(raw, asked, scope["method"], content_type)
        del raw  # the bodies hold the one copy
        try:
            await self._handle(receive, send, principal, record, path, bodies, deployment)
        except GatewayError as exc:
            await proxy.books.account(record, exc.status, error_type(exc))
            raise
        except Exception:
            await proxy.books.account(record, 500, "internal_error")
            raise
        finally:
            if not record.done:
                await proxy.books.account(record, 499, "client_disconnected")

    async def _handle(
        self,
        receive: Receive,
        send: Send,
        principal: Principal,
        record: RequestRecord,
        path: str,
        bodies: PassthroughBodies,
        deployment: str | None,
    ) -> None:
        proxy, books, router = self.proxy, self.proxy.books, self.proxy.router
        model = record.model
        assert model is not None
        # policy and limits: the tenant's request limits (and token limits, where the endpoint
        # knows its estimate); tokens are settled with what was used.
        tenant = record.tenant = TenantCharge(proxy.limiter, proxy.policy, principal, model, ZERO, proxy.price_of)
        if (tenant.applied is not None and tenant.applied.counts_tokens) or router.needs_estimate(model):
            tenant.estimate = self._estimate(path, bodies, model)
        waited = time.perf_counter()
        reservation = await tenant.admit()
        if reservation is not None:
            books.metrics.wait.observe(time.perf_counter() - waited)
            proxy.note_decision(principal, reservation.decision)
            if not reservation.decision.allowed:
                raise rate_limit_error(reservation.decision, time.time())
        max_wait, priority = proxy.policy.shaping(principal) if proxy.policy is not None else (0.0, 0)
        # stream=True: an event stream (a streamed transcription, ...) is relayed as one.
        route = RouteRequest(
            path,
            bodies,
            True,
            tenant.estimate,
            max_wait,
            priority,
            tenant,
            method=bodies.method,
            content_type=bodies.content_type,
            deployment=deployment,
            unbuffered=True,
        )
        watch = record.watch = DisconnectWatch(receive, self._watches)
        try:
            try:
                exchange = record.exchange = await router.exchange(model, route)
                record.upstream_answered = True  # a stream that breaks off is charged what it sent
                extra = request_id_headers(record.request_id, record.client_request_id)
                extra.append((b"x-quotagate-deployment", exchange.target.label_bytes))
                if tenant.reservation is not None:
                    extra.extend(ratelimit_headers(tenant.reservation.decision))
                outcome: bool | None = False
                try:
                    if exchange.streamed:
                        record.stream = True
                        usage = record.stream_usage = self._stream_usage(record)
                        outcome = await relay_stream(exchange, send, extra, usage, record, self._scrubber, self._done)
                    else:
                        await self._relay(exchange.response, exchange.first_chunk, send, extra, record)
                        outcome = True
                except asyncio.CancelledError:
                    outcome = None  # the client left: nothing said about the deployment
                    raise
                finally:
                    record.collect_stream_usage()
                    await router.finish(exchange, outcome, Usage(*record.actual()))
            except asyncio.CancelledError:
                if not watch.gone:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            watch.stop()
            await proxy.settle(record)

    async def _relay(
        self, response: Any, first: bytes, send: Send, extra: list[tuple[bytes, bytes]], record: RequestRecord
    ) -> None:
        """Any answer but an event stream: JSON and text whole (usage read from JSON, secrets
        scrubbed), anything else (audio, a file's content) chunk by chunk as it comes, from
        ``first``, the chunk the router read to know the deployment answered."""
        status: int = response.status
        given = response.headers.get("content-type", "")
        kind = given.partition(";")[0].strip().lower()
        content_type = given.encode("latin-1") if _CONTENT_TYPE.fullmatch(given) else _OCTET_STREAM
        if self._scrubber.body(content_type) != content_type:
            content_type = _OCTET_STREAM
        head = [(b"content-type", content_type), *extra]
        if kind == "application/json" or kind.startswith("text/"):
            body = await response.read()
            if kind == "application/json":
                try:
                    payload = orjson.loads(body)
                except orjson.JSONDecodeError:
                    payload = None
                record.answer = payload
                used = _reported_usage(payload)
                if used is not None:
                    record.reported, record.cached = (used[0], used[1]), used[2]
            body = self._scrubber.body(body)
            await self._done(record, status, None)
            head.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": head})
            await send({"type": "http.response.body", "body": body})
            return
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and "content-encoding" not in response.headers:
            head.append((b"content-length", length.encode()))  # else chunked: the client reads to the end
        await send({"type": "http.response.start", "status": status, "headers": head})
        try:
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in response.iter_chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            response.close()
        await self._done(record, status, None)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _destination(self, scope: Scope, principal: Principal, asked: Asked) -> tuple[str, str | None]:
        """The model the request is for, and the one deployment of it that must serve it (None:
        any): the body's model, else ``passthrough.default_model``."""
        model = asked.model or self.default_model
        if model is None:
            raise InvalidRequestError(
                f"{scope['method']} {scope['path']} names no model, and the gateway has no "
                "passthrough.default_model to send it to.",
                code="no_default_model",
            )
        return model, None

    def _estimate(self, path: str, bodies: PassthroughBodies, model: str) -> Estimate:
        """The request's tokens before it runs, where its tenant's limits count tokens or spend. An
        endpoint the gateway does not understand: one token, the usage it reports settles the
        rest; not none, which every limit admits, an exhausted quota or budget too."""
        return _ONE_TOKEN

    def _stream_usage(self, record: RequestRecord) -> StreamUsage:
        """What reads the usage out of an event stream as it is relayed."""
        return StreamUsage(strip_usage_chunk=False, keep_events=False)

    async def _done(self, record: RequestRecord, status: int, error: str | None) -> None:
        """The response's last message is next: the watch stops, the ledger row is written."""
        await self.proxy.complete(record, status, error)
