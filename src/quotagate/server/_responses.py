"""The Responses API: ``POST /v1/responses`` (whole or streamed), and a stored response's ``GET``,
``DELETE``, ``input_items`` and ``cancel``.

These take the passthrough's path (_passthrough), with what the gateway knows of this API:

    model     a create names it; a stored response's is the model of the deployment holding it
    tokens    ``instructions``, ``input`` and ``tools`` counted with the model's tokenizer, plus
              ``max_output_tokens`` (else ``limiter.expected_output_tokens``): token limits
              refuse a request that cannot fit before it goes upstream
    sticky    a provider keeps a response in the account that made it, so a request about one
              (``previous_response_id``, or its id in the path) goes to that deployment only,
              never another; ``ResponseHomes`` remembers which, and whose the response is
    settle    usage's ``input_tokens``, ``output_tokens`` (reasoning tokens are part of them) and
              ``input_tokens_details.cached_tokens``; of a stream, its ``response.completed``
              event's, read as it passes (``ResponseStreamUsage``)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, NamedTuple

import orjson

from ..auth import Principal
from ..errors import InvalidRequestError, NotFoundError
from ..redis import RedisClient
from ..tokens import ZERO, Estimate, count_text, encoding_for_model
from ..upstream import DeploymentTarget
from ._asgi import Scope
from ._passthrough import Asked, Passthrough, PassthroughBodies, _reported_usage
from ._proxy import Proxy
from ._record import RequestRecord
from ._stream_usage import StreamUsage

logger = logging.getLogger("quotagate.responses")

# A provider keeps a stored response for 30 days.
HOME_TTL_SECONDS = 30 * 86400
MAX_HOMES = 100_000
# A response id is ~50 characters; a longer one is no response's, and no Redis key's.
_MAX_ID_CHARS = 200
# /v1/responses/{these}: endpoints of the API that name a model, not a stored response.
_NOT_IDS = frozenset({"", "input_tokens", "compact"})
# The events of a stream that carry its id, its usage, or its text.
_CREATED = b"response.created"
_ENDED = (b"response.completed", b"response.incomplete", b"response.failed")
_DELTA = b"response.output_text.delta"


class Home(NamedTuple):
    """The deployment (target id) that holds a response, and whose it is (the user who made it)."""

    target: str
    owner: str


class ResponseHomes:
    """Which deployment holds each response the gateway relayed, and whose it is: the last
    ``size`` in this process, and where the gateway has Redis, there too (for as long as the
    provider keeps a response) so that every node finds them."""

    def __init__(
        self,
        redis: RedisClient | None,
        size: int = MAX_HOMES,
        ttl: int = HOME_TTL_SECONDS,
        prefix: str = "qg:response:",
    ) -> None:
        self.redis = redis
        self._size = size
        self._ttl = ttl
        self._prefix = prefix
        self._here: OrderedDict[str, Home] = OrderedDict()

    def remember_here(self, response_id: str, home: Home) -> None:
        """Remember a home in this process (at once: a stream's id, before the stream ends)."""
        self._here[response_id] = home
        self._here.move_to_end(response_id)
        if len(self._here) > self._size:
            self._here.popitem(last=False)

    async def remember(self, response_id: str, home: Home) -> None:
        self.remember_here(response_id, home)
        if self.redis is not None and len(response_id) <= _MAX_ID_CHARS:
            try:
                await self.redis.execute("SET", self._prefix + response_id, orjson.dumps(list(home)), "EX", self._ttl)
            except Exception as exc:  # other nodes will not find it; this one still does
                logger.warning("could not store response %s's deployment in Redis: %s", response_id, exc)

    async def find(self, response_id: str) -> Home | None:
        home = self._here.get(response_id)
        if home is not None or self.redis is None or len(response_id) > _MAX_ID_CHARS:
            return home
        try:
            stored = await self.redis.execute("GET", self._prefix + response_id)
        except Exception as exc:
            logger.warning("could not read response %s's deployment from Redis: %s", response_id, exc)
            return None
        if stored is None:
            return None
        home = Home(*orjson.loads(stored))
        self.remember_here(response_id, home)
        return home

    async def forget(self, response_id: str) -> None:
        self._here.pop(response_id, None)
        if self.redis is not None and len(response_id) <= _MAX_ID_CHARS:
            try:
                await self.redis.execute("DEL", self._prefix + response_id)
            except Exception as exc:
                logger.warning("could not delete response %s's deployment from Redis: %s", response_id, exc)


def _event_type(event: bytes) -> bytes | None:
    """The type an SSE event names in its ``event:`` line (OpenAI sends one), else None."""
    if event.startswith(b"event:"):
        return event[6 : event.find(b"\n") if b"\n" in event else None].strip()
    return None


class ResponseStreamUsage(StreamUsage):
    """Reads a Responses API stream as it passes: the response's id (remembered at once, with the
    deployment serving it), its usage from the final event, and its text (counted if the stream
    breaks off first). Only those events are parsed; the rest pass unread."""

    __slots__ = ("_home", "_homes", "response_id")

    def __init__(self, homes: ResponseHomes, home: Home) -> None:
        super().__init__(strip_usage_chunk=False)
        self._homes = homes
        self._home = home
        self.response_id: str | None = None

    def feed(self, events: bytes) -> bytes:
        text = events.replace(b"\r\n", b"\n") if b"\r" in events else events
        for event in text.split(b"\n\n"):
            event = event.strip()
            kind = _event_type(event)
            if kind is not None and kind != _CREATED and kind != _DELTA and kind not in _ENDED:
                continue
            data = event.find(b"data:")
            if data < 0:
                continue
            try:
                payload = orjson.loads(event[data + 5 :])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(payload, dict):
                continue
            kind = str(payload.get("type", "")).encode()
            if kind == _DELTA:
                delta = payload.get("delta")
                if isinstance(delta, str):
                    self.pieces.append(delta)
                continue
            response = payload.get("response")
            if not isinstance(response, dict):
                continue
            if kind == _CREATED and isinstance(response.get("id"), str):
                self.response_id = response["id"]
                self._homes.remember_here(response["id"], self._home)
            elif kind in _ENDED:
                used = _reported_usage(response)
                if used is not None:
                    self.usage, self.cached = (used[0], used[1]), used[2]
        return events


def _texts(value: Any) -> list[str]:
    """The texts of ``instructions`` or ``input``: a string, or items whose content is a string or
    parts with text (a tool call's arguments and a tool's output count too)."""
    if isinstance(value, str):
        return [value]
    texts: list[str] = []
    if not isinstance(value, list):
        return texts
    for item in value:
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        for field in ("arguments", "output"):
            if isinstance(item.get(field), str):
                texts.append(item[field])
    return texts


class Responses(Passthrough):
    """Serves the Responses API (see the module)."""

    def __init__(self, proxy: Proxy, default_model: str | None, homes: ResponseHomes) -> None:
        super().__init__(proxy, default_model)
        self.homes = homes

    async def _destination(self, scope: Scope, principal: Principal, asked: Asked) -> tuple[str, str | None]:
        parts = scope["path"].split("/")[3:]  # after /v1/responses
        if not parts or parts[0] in _NOT_IDS:
            if asked.model is None:
                raise InvalidRequestError("Missing required parameter: 'model'.", param="model")
            previous = asked.json.get("previous_response_id") if asked.json is not None else None
            if isinstance(previous, str):
                holder = await self._holder(principal, previous, "previous_response_id")
                # A response the gateway did not relay (made before it, or elsewhere, or forgotten):
                # refused, as an unknown id is on GET. Sent on, it would let a tenant continue a
                # conversation of another's on the provider account they share.
                if holder is None:
                    raise NotFoundError(
                        f"Response with id '{previous}' not found.",
                        param="previous_response_id",
                        code="response_not_found",
                    )
                if holder.model == asked.model:
                    return asked.model, holder.id
            return asked.model, None
        holder = await self._holder(principal, parts[0], None)
        if holder is None:
            raise NotFoundError(f"Response with id '{parts[0]}' not found.", code="response_not_found")
        return holder.model, holder.id

    async def _holder(self, principal: Principal, response_id: str, param: str | None) -> DeploymentTarget | None:
        """The deployment holding a response the gateway relayed (None: it relayed none of that
        id); a 404 when the response is another user's, or its deployment is gone."""
        home = await self.homes.find(response_id)
        if home is None:
            return None
        target = self.proxy.routes.by_id.get(home.target)
        if home.owner != principal.user:
            # As for an id that does not exist: whether another user's does is not told.
            raise NotFoundError(f"Response with id '{response_id}' not found.", param=param, code="response_not_found")
        if target is None:
            raise NotFoundError(
                f"Response with id '{response_id}' is held by a deployment that is no longer configured.",
                param=param,
                code="response_not_found",
            )
        return target

    def _estimate(self, path: str, bodies: PassthroughBodies, model: str) -> Estimate:
        """A create's input tokens (instructions, input, tools) and the most it may write."""
        if bodies.method != "POST" or path.partition("?")[0] != "/responses":
            return ZERO  # counting input tokens, a stored response's GET, DELETE, cancel: no output
        body = bodies.body
        encoding = encoding_for_model(model)
        prompt = sum(
            count_text(text, encoding) for text in _texts(body.get("instructions")) + _texts(body.get("input"))
        )
        if body.get("tools"):
            prompt += count_text(orjson.dumps(body["tools"]).decode(), encoding)
        cap = body.get("max_output_tokens")
        output = cap if type(cap) is int and cap > 0 else self.proxy.expected_output_tokens
        window = self.proxy.routes.models[model].context_window
        if window is not None:
            output = max(0, min(output, window - prompt))
        return Estimate(prompt, output)

    def _stream_usage(self, record: RequestRecord) -> StreamUsage:
        assert record.exchange is not None
        return ResponseStreamUsage(self.homes, Home(record.exchange.target.id, record.principal.user))

    async def _done(self, record: RequestRecord, status: int, error: str | None) -> None:
        """Before the client has the answer: the deployment holding the response is remembered
        (a deleted one forgotten), then the ledger row, as the passthrough writes it."""
        exchange = record.exchange
        if exchange is not None and status < 300:
            home = Home(exchange.target.id, record.principal.user)
            usage = record.stream_usage
            answer = record.answer if isinstance(record.answer, dict) else {}
            if isinstance(usage, ResponseStreamUsage) and usage.response_id is not None:
                await self.homes.remember(usage.response_id, home)
            elif isinstance(answer.get("id"), str):
                if answer.get("object") == "response":
                    await self.homes.remember(answer["id"], home)
                elif answer.get("object") == "response.deleted":
                    await self.homes.forget(answer["id"])
        await super()._done(record, status, error)
