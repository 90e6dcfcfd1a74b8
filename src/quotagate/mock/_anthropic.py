"""The mock provider's Anthropic Messages API: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

It answers as Anthropic does where a gateway can tell the difference: ``x-api-key`` (or a bearer
token) when the mock has a key, the ``anthropic-version`` header required, errors shaped
``{"type": "error", "error": {...}}``, ``anthropic-ratelimit-requests-*`` headers, and streams with
every event type (message_start, ping, content_block_start/delta/stop for text, thinking and
tool_use, message_delta with usage, message_stop).

The answer is decided by the request, so tests can steer it:

- tool use when the request has tools and its last user message names one of them or says
  "tool" (or ``tool_choice`` forces one); a last user message of tool results gets text;
- a thinking block first when ``thinking`` is enabled;
- prompt caching when a block carries ``cache_control``: the prefix up to the last such block is
  written on first sight (``cache_creation_input_tokens``) and read on the next request that
  repeats it (``cache_read_input_tokens``).

The mock's faults apply too: 429 (rate_limit_error with retry-after), 500 (answered as Anthropic's
529 overloaded_error, its usual server-side failure), hangs and dropped streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from ..surfaces import anthropic_error
from ..tokens import count_text, get_encoding
from . import _app

if TYPE_CHECKING:
    from ._app import MockUpstream, Scope

__all__ = ["serve_messages"]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
REQUESTS_LIMIT = 4000  # what the rate-limit headers say when the mock enforces no rpm
THINKING = " Let me think about this step by step."


@dataclass
class _AnthropicState:
    cached_prefixes: set[str] = field(default_factory=set)
    started: deque[float] = field(default_factory=deque)  # request times within the rate window
    next_id: int = 0


_states: weakref.WeakKeyDictionary[MockUpstream, _AnthropicState] = weakref.WeakKeyDictionary()


async def serve_messages(mock: MockUpstream, scope: Scope, receive: Any, send: Any) -> None:
    """Answer one request under ``/v1/messages``, as Anthropic would."""
    state = _states.setdefault(mock, _AnthropicState())
    path, method = scope["path"], scope["method"]
    headers = dict(scope["headers"])
    if method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
        await _error(send, 404, "not_found_error", f"Not found: {method} {path}")
        return
    body_bytes = await _app.MockUpstream._read(receive)
    key = mock.options.api_key
    sent = {headers.get(b"x-api-key"), headers.get(b"authorization", b"").removeprefix(b"Bearer ")}
    if key is not None and key.encode() not in sent:
        await _error(send, 401, "authentication_error", "invalid x-api-key")
        return
    if b"anthropic-version" not in headers:
        await _error(send, 400, "invalid_request_error", "anthropic-version: header is required")
        return
    try:
        body = orjson.loads(body_bytes)
    except orjson.JSONDecodeError:
        await _error(send, 400, "invalid_request_error", "The request body is not valid JSON.")
        return
    problem = _invalid(body, count_only=path.endswith("/count_tokens"))
    if problem:
        await _error(send, 400, "invalid_request_error", problem)
        return
    if mock.options.record:
        shown = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        mock.state.recorded.append(_app.RecordedRequest(path, shown, body))
    if path.endswith("/count_tokens"):
        await _json(send, 200, {"input_tokens": _input_tokens(_pieces(body))})
        return

    mock.state.requests_served += 1
    mock.state.arrivals.append(time.monotonic())
    limits = _rate_headers(mock, state)
    if limits is None:
        return await _error(
            send, 429, "rate_limit_error", "Number of requests has exceeded your rate limit.", _retry(mock)
        )
    fault = "429" if mock.state.requests_served <= mock.options.fail_first else mock._draw_fault()
    if mock.options.latency_ms:
        await asyncio.sleep(mock.options.latency_ms / 1000)
    if fault == "429":
        return await _error(
            send, 429, "rate_limit_error", "Number of requests has exceeded your rate limit.", _retry(mock)
        )
    if fault == "500":
        return await _error(send, 529, "overloaded_error", "Overloaded")
    if fault == "hang":
        while (await receive())["type"] != "http.disconnect":
            pass
        return

    state.next_id += 1
    message = _answer(mock, state, body, f"msg_mock{state.next_id:020d}")
    mock.state.tokens_served += sum(message["usage"].values())
    if body.get("stream"):
        await _stream(mock, send, message, limits, drop=fault == "drop")
    else:
        await _json(send, 200, message, limits)


def _invalid(body: Any, count_only: bool) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages: Field required"
    if not count_only and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    return None


async def _json(send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON + (headers or [])})
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


async def _error(
    send: Any, status: int, kind: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON + (headers or [])})
    await send({"type": "http.response.body", "body": anthropic_error(status, kind, message)})


def _retry(mock: MockUpstream) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", f"{mock.options.retry_after:g}".encode())]


def _rate_headers(mock: MockUpstream, state: _AnthropicState) -> list[tuple[bytes, bytes]] | None:
    """Anthropic's request limit headers, or None when the mock's rpm is exceeded."""
    now = time.monotonic()
    window = mock.options.rate_window
    started = state.started
    while started and started[0] <= now - window:
        started.popleft()
    limit = mock.options.rpm or REQUESTS_LIMIT
    if len(started) >= limit:
        mock.state.rate_limited += 1
        return None
    started.append(now)
    reset = datetime.fromtimestamp(time.time() + (started[0] + window - now), UTC)
    return [
        (b"anthropic-ratelimit-requests-limit", str(limit).encode()),
        (b"anthropic-ratelimit-requests-remaining", str(limit - len(started)).encode()),
        (b"anthropic-ratelimit-requests-reset", reset.strftime("%Y-%m-%dT%H:%M:%SZ").encode()),
        (b"request-id", f"req_mock{len(started):012d}".encode()),
    ]


# -- the answer ---------------------------------------------------------------------------------


def _pieces(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The request's parts in Anthropic's cache order (tools, system, messages), as (the text
    its tokens are counted from, cache breakpoint?)."""
    out: list[tuple[str, bool]] = []
    for tool in body.get("tools") or []:
        out.append(
            (orjson.dumps({k: v for k, v in tool.items() if k != "cache_control"}).decode(), "cache_control" in tool)
        )
    system = body.get("system")
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system or []
    for message in [*blocks, *body["messages"]]:
        content = message.get("content", message)
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if isinstance(parts, dict):
            parts = [parts]
        out.append((f"<{message.get('role', 'system')}>", False))  # a turn's own few tokens
        for part in parts:
            out.append((_block_text(part), "cache_control" in part))
    return out


def _input_tokens(pieces: list[tuple[str, bool]]) -> int:
    encoding = get_encoding("o200k_base")
    return sum(count_text(text, encoding) for text, _ in pieces)


def _block_text(block: dict[str, Any]) -> str:
    if block.get("type") == "text":
        return str(block.get("text", ""))
    if block.get("type") == "image":
        return "image " * 85  # a flat 85 tokens an image, as OpenAI's low-detail images cost
    return orjson.dumps({k: v for k, v in block.items() if k != "cache_control"}).decode()


def _cache(state: _AnthropicState, body: dict[str, Any]) -> tuple[int, int, int]:
    """(uncached input tokens, cache writes, cache reads) for a request."""
    pieces = _pieces(body)
    total = _input_tokens(pieces)
    marks = [i for i, (_, mark) in enumerate(pieces) if mark]
    if not marks:
        return total, 0, 0
    prefix = pieces[: marks[-1] + 1]
    prefix_tokens = _input_tokens(prefix)
    key = hashlib.sha256(orjson.dumps([body["model"], *prefix])).hexdigest()
    if key in state.cached_prefixes:
        return total - prefix_tokens, 0, prefix_tokens
    state.cached_prefixes.add(key)
    return total - prefix_tokens, prefix_tokens, 0


def _wants_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool the mock calls for this request, if any."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
    if not tools:
        return None
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), tools[0])
    last = body["messages"][-1]
    content = last.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    if choice.get("type") != "any" and any(b.get("type") == "tool_result" for b in blocks):
        return None  # the tool has answered: now the model speaks
    text = " ".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text").lower()
    named = next((t for t in tools if str(t["name"]).lower() in text), None)
    if named is not None:
        return named
    return tools[0] if "tool" in text or choice.get("type") == "any" else None


def _tool_input(schema: Any) -> dict[str, Any]:
    sample = {"string": "fox", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return {name: sample.get(str(spec.get("type"))) for name, spec in (properties or {}).items()}


def _answer(mock: MockUpstream, state: _AnthropicState, body: dict[str, Any], message_id: str) -> dict[str, Any]:
    encoding = get_encoding("o200k_base")
    cap = body["max_tokens"]
    n = min(mock.options.completion_tokens, cap)
    text, _, text_tokens = _app._completion(n)
    content: list[dict[str, Any]] = []
    output_tokens = 0
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        content.append({"type": "thinking", "thinking": THINKING, "signature": "mock-signature"})
        output_tokens += count_text(THINKING, encoding)
    tool = _wants_tool(body)
    if tool is not None:
        tool_input = _tool_input(tool.get("input_schema"))
        content.append({"type": "text", "text": f"I will use {tool['name']}."})
        content.append(
            {"type": "tool_use", "id": f"toolu_mock{state.next_id:016d}", "name": tool["name"], "input": tool_input}
        )
        output_tokens += count_text(f"I will use {tool['name']}.", encoding)
        output_tokens += count_text(orjson.dumps(tool_input).decode(), encoding)
        stop_reason = "tool_use"
    else:
        content.append({"type": "text", "text": text})
        output_tokens += text_tokens
        stop_reason = "max_tokens" if n < mock.options.completion_tokens else "end_turn"
    uncached, written, read = _cache(state, body)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": uncached,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": output_tokens,
        },
    }


# -- the stream ---------------------------------------------------------------------------------


def _event(payload: dict[str, Any]) -> bytes:
    kind: str = payload["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _events(message: dict[str, Any]) -> list[bytes]:
    """The stream of events Anthropic would send for this message."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [_event({"type": "message_start", "message": start}), _event({"type": "ping"})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            head: dict[str, Any] = {"type": "text", "text": ""}
            words = block["text"].split(" ")
            pieces = [(" " if i else "") + w for i, w in enumerate(words)]
            deltas = [{"type": "text_delta", "text": p} for p in pieces if p]
        elif kind == "thinking":
            head = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": block["thinking"]},
                {"type": "signature_delta", "signature": block["signature"]},
            ]
        else:
            head = {**block, "input": {}}
            arguments = orjson.dumps(block["input"]).decode()
            half = len(arguments) // 2
            # Anthropic's first input_json_delta is often empty; a split mid-token is the norm.
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ("", arguments[:half], arguments[half:])]
        events.append(_event({"type": "content_block_start", "index": index, "content_block": head}))
        events.extend(_event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas)
        events.append(_event({"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    events.append(_event({"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(_event({"type": "message_stop"}))
    return events


async def _stream(
    mock: MockUpstream, send: Any, message: dict[str, Any], headers: list[tuple[bytes, bytes]], drop: bool
) -> None:
    events = _events(message)
    await send({"type": "http.response.start", "status": 200, "headers": _SSE + headers})
    if drop:
        half = b"".join(events[: len(events) // 2])
        await send({"type": "http.response.body", "body": half, "more_body": True})
        raise _app.DroppedConnection("fault injected: stream dropped midway")
    delay = mock.options.stream_chunk_delay_ms / 1000
    if delay:
        for item in events:
            await send({"type": "http.response.body", "body": item, "more_body": True})
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
