"""The mock's Responses API: ``POST /v1/responses`` (whole or streamed), and a stored response's
``GET``, ``DELETE``, ``input_items`` and ``cancel``.

Responses are kept in this mock's memory, as a provider keeps them in one account: a request whose
``previous_response_id`` names one this mock does not hold is refused with a 404, as OpenAI
refuses it. That is what lets a test see which deployment a gateway sent a request to.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from ..tokens import count_text, encoding_for_model

if TYPE_CHECKING:
    from ._app import MockUpstream

_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _input_text(value: Any) -> list[str]:
    """The texts of an ``input`` or ``instructions``: a string, or items whose content is a string
    or a list of parts with text."""
    if isinstance(value, str):
        return [value]
    texts: list[str] = []
    if isinstance(value, list):
        for item in value:
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return texts


def _input_items(value: Any, new_id: Any) -> list[dict[str, Any]]:
    """The request's input as the input items a stored response lists."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    items = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        items.append({"type": "message", "status": "completed", **item, "id": new_id("msg_"), "content": content})
    return items


class MockResponses:
    """The Responses API's endpoints over this mock's stored responses."""

    def __init__(self, mock: MockUpstream) -> None:
        self.mock = mock
        self.responses: dict[str, dict[str, Any]] = {}
        self.inputs: dict[str, list[dict[str, Any]]] = {}

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{self.mock._rng.getrandbits(64):016x}"

    async def _not_found(self, send: Any, response_id: str, param: str | None = None) -> None:
        await self.mock._error(
            send, 404, f"Response with id '{response_id}' not found.", "invalid_request_error", None, param=param
        )

    async def create(self, send: Any, body: dict[str, Any], form: Any, object_id: str) -> None:
        from ._app import _completion

        mock = self.mock
        model = body.get("model")
        if not isinstance(model, str):
            await mock._error(send, 400, "Missing required parameter: 'model'.", "invalid_request_error", None)
            return
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.responses:
            await self._not_found(send, str(previous), "previous_response_id")
            return
        encoding = encoding_for_model(model)
        texts = _input_text(body.get("instructions")) + _input_text(body.get("input"))
        input_tokens = sum(count_text(text, encoding) for text in texts)
        cap = body.get("max_output_tokens")
        n = mock.options.completion_tokens
        incomplete = isinstance(cap, int) and 0 < cap < n
        text, pieces, output_tokens = _completion(cap if incomplete else n)
        mock.state.tokens_served += input_tokens + output_tokens
        response_id, message_id = self._new_id("resp_"), self._new_id("msg_")
        message = {
            "type": "message",
            "id": message_id,
            "role": "assistant",
            "status": "incomplete" if incomplete else "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
        background = body.get("background") is True
        response: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "queued" if background else "incomplete" if incomplete else "completed",
            "background": background,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": cap,
            "metadata": body.get("metadata") or {},
            "model": model,
            "output": [] if background else [message],
            "parallel_tool_calls": True,
            "previous_response_id": previous,
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None
            if background
            else {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        }
        if response["store"] is not False:
            self.responses[response_id] = response
            self.inputs[response_id] = _input_items(body.get("input"), self._new_id)
        if not body.get("stream"):
            await mock._json(send, 200, response)
            return
        await self._stream(send, response, message, pieces)

    async def _stream(
        self, send: Any, response: dict[str, Any], message: dict[str, Any], pieces: tuple[str, ...]
    ) -> None:
        """The response as OpenAI streams it: created, in progress, the message's item and part,
        its text in deltas, then each closed, and ``response.completed`` with the usage."""
        events: list[bytes] = []

        def event(kind: str, **fields: Any) -> None:
            data = {"type": kind, "sequence_number": len(events), **fields}
            events.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
        event("response.created", response=pending)
        event("response.in_progress", response=pending)
        event("response.output_item.added", output_index=0, item={**message, "status": "in_progress", "content": []})
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        event("response.content_part.added", **where, part=empty)
        for piece in pieces:
            event("response.output_text.delta", **where, delta=piece, logprobs=[])
        part = message["content"][0]
        event("response.output_text.done", **where, text=part["text"], logprobs=[])
        event("response.content_part.done", **where, part=part)
        event("response.output_item.done", output_index=0, item=message)
        event("response.incomplete" if response["status"] == "incomplete" else "response.completed", response=response)
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})

    async def retrieve(self, send: Any, body: Any, form: Any, object_id: str) -> None:
        if object_id not in self.responses:
            await self._not_found(send, object_id)
            return
        await self.mock._json(send, 200, self.responses[object_id])

    async def delete(self, send: Any, body: Any, form: Any, object_id: str) -> None:
        if self.responses.pop(object_id, None) is None:
            await self._not_found(send, object_id)
            return
        del self.inputs[object_id]
        await self.mock._json(send, 200, {"id": object_id, "object": "response.deleted", "deleted": True})

    async def input_items(self, send: Any, body: Any, form: Any, object_id: str) -> None:
        if object_id not in self.responses:
            await self._not_found(send, object_id)
            return
        items = self.inputs[object_id]
        page = {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": False,
        }
        await self.mock._json(send, 200, page)

    async def cancel(self, send: Any, body: Any, form: Any, object_id: str) -> None:
        response = self.responses.get(object_id)
        if response is None:
            await self._not_found(send, object_id)
            return
        if not response["background"]:
            await self.mock._error(
                send,
                400,
                "Only responses created with background=true can be cancelled.",
                "invalid_request_error",
                None,
            )
            return
        if response["status"] in ("queued", "in_progress"):
            response["status"] = "cancelled"
        await self.mock._json(send, 200, response)
