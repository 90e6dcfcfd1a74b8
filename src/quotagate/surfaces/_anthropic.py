"""Anthropic Messages <-> OpenAI chat completions: requests, responses, streams and errors.

Two directions, four pieces each::

    OpenAI chat in, Anthropic out           Anthropic Messages in, OpenAI-compatible out
    chat_to_messages(request)               messages_to_chat(request)
    messages_to_chat_response(message)      chat_to_messages_response(completion)
    MessagesStreamToChat (SSE bytes)        ChatStreamToMessages (SSE bytes)
    openai_error_from_anthropic(body)       anthropic_error_for(GatewayError)

Everything here is a pure function of its input (the stream translators keep the state of one
stream), so the gateway's stages call them without caring about I/O, and the tests check them
against the official SDKs' typed models.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from ..errors import GatewayError, InvalidRequestError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ChatStreamToMessages",
    "MessagesStreamToChat",
    "SSEDecoder",
    "anthropic_error",
    "anthropic_error_for",
    "anthropic_error_type",
    "chat_to_messages",
    "chat_to_messages_response",
    "messages_text",
    "messages_to_chat",
    "messages_to_chat_response",
    "messages_usage",
    "openai_error_from_anthropic",
]

# Anthropic requires max_tokens; OpenAI does not. What an OpenAI request without one gets.
DEFAULT_MAX_TOKENS = 4096

JSONDict = dict[str, Any]

_FINISH_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic error types as OpenAI names them (type, code), for chat clients of a Claude model.
_OPENAI_ERROR = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "timeout_error": ("upstream_error", "upstream_timeout"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
}


def _json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)


def _text_of(content: Any) -> str:
    """The text of an OpenAI or Anthropic content value: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


# -- errors -------------------------------------------------------------------------------------


def anthropic_error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status; 5xx without their own type are api_error."""
    if status in _ERROR_TYPE_BY_STATUS:
        return _ERROR_TYPE_BY_STATUS[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error(status: int, type_: str | None, message: str) -> bytes:
    """An Anthropic-shaped error body; ``type_`` None takes the type from the status."""
    kind = type_ or anthropic_error_type(status)
    return _json_bytes({"type": "error", "error": {"type": kind, "message": message}})


def anthropic_error_for(exc: GatewayError) -> tuple[int, bytes]:
    """The status and Anthropic-shaped body for one of the gateway's errors.

    The gateway's statuses keep their meaning; only the body changes shape. A provider's own
    Anthropic-shaped error (a native upstream's 529 overloaded_error) is relayed as it came.
    """
    raw = getattr(exc, "raw_body", None)
    if isinstance(raw, bytes):
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and payload.get("type") == "error":
            return exc.status, raw
    return exc.status, anthropic_error(exc.status, None, exc.message)


def openai_error_from_anthropic(payload: Any, status: int = 500) -> JSONDict:
    """An Anthropic error body (parsed) as an OpenAI error body, for chat clients."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {"type": anthropic_error_type(status), "message": "The upstream answered with an error."}
    kind, code = _OPENAI_ERROR.get(str(error.get("type")), ("server_error", None))
    return {"error": {"message": str(error.get("message", "")), "type": kind, "param": None, "code": code}}


# -- requests: OpenAI chat -> Anthropic Messages ------------------------------------------------


def _malformed_is_invalid(translate: Callable[..., JSONDict]) -> Callable[..., JSONDict]:
    """A request translated by ``translate``, or a 400 where its body is not what the API says
    (a content part that is not an object, ...): the gateway checks only what it relies on, and
    such a body would otherwise fail the translation as a bug, a 500."""

    @functools.wraps(translate)
    def checked(body: JSONDict, *args: Any, **kwargs: Any) -> JSONDict:
        try:
            return translate(body, *args, **kwargs)
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise InvalidRequestError(
                f"The request's body could not be translated for the model's deployment: {exc}."
            ) from None

    return checked


@_malformed_is_invalid
def chat_to_messages(body: JSONDict, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> JSONDict:
    """An OpenAI chat completions request as an Anthropic Messages request. A text part's
    ``cache_control`` (Anthropic's prompt-cache breakpoint, as LiteLLM's clients send it in chat
    requests) is kept. What Anthropic cannot honour is a 400, never silently dropped: several
    choices, logprobs, a response_format (structured outputs)."""
    _refuse_what_messages_cannot_do(body)
    system: list[JSONDict] = []
    turns: list[JSONDict] = []
    for message in body.get("messages") or []:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(message.get("content")))
            continue
        if role == "tool":
            turn_role, blocks = "user", [_tool_result_block(message)]
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(message)
        elif role == "user":
            turn_role, blocks = "user", _user_blocks(message.get("content"))
        else:
            raise InvalidRequestError(f"Unsupported message role for an Anthropic model: {role!r}", param="messages")
        if not blocks:
            continue  # an empty assistant message (content ""): Anthropic refuses an empty turn
        # Anthropic wants turns to alternate: consecutive tool results (and a user message after
        # them) share one user turn.
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})

    out: JSONDict = {"model": body.get("model"), "messages": [_compact(t) for t in turns]}
    if any("cache_control" in block for block in system):
        out["system"] = system
    elif system:
        out["system"] = "\n\n".join(block["text"] for block in system)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) else default_max_tokens
    if body.get("stream") is not None:
        out["stream"] = body["stream"]
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        out["temperature"] = min(temperature, 1.0)  # OpenAI's range is 0-2, Anthropic's 0-1
    elif body.get("top_p") is not None:
        out["top_p"] = body["top_p"]  # not both: recent Claude models refuse the pair
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    tools = [_anthropic_tool(t) for t in body.get("tools") or [] if t.get("type") == "function"]
    if tools:
        out["tools"] = tools
    choice = _anthropic_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _refuse_what_messages_cannot_do(body: JSONDict) -> None:
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise InvalidRequestError("Anthropic's Messages API answers one choice: n must be 1.", param="n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise InvalidRequestError("Anthropic's Messages API has no logprobs.", param="logprobs")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise InvalidRequestError(
            "Anthropic's Messages API has no response_format; ask for JSON in the prompt, or use a tool.",
            param="response_format",
        )


def _compact(turn: JSONDict) -> JSONDict:
    # A turn of one text block reads (and round-trips) as a plain string.
    blocks = turn["content"]
    if len(blocks) == 1 and blocks[0]["type"] == "text" and set(blocks[0]) == {"type", "text"}:
        return {"role": turn["role"], "content": blocks[0]["text"]}
    return turn


def _text_block(part: JSONDict) -> JSONDict:
    block = {"type": "text", "text": part.get("text", "")}
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _system_blocks(content: Any) -> list[JSONDict]:
    if isinstance(content, list):
        return [_text_block(part) for part in content if part.get("type") == "text"]
    return [{"type": "text", "text": _text_of(content)}]


def _user_blocks(content: Any) -> list[JSONDict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[JSONDict] = []
    for part in content or []:
        kind = part.get("type")
        if kind == "text":
            blocks.append(_text_block(part))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            blocks.append({"type": "image", "source": _image_source(url)})
        else:
            raise InvalidRequestError(f"Unsupported content part for an Anthropic model: {kind!r}", param="messages")
    return blocks


def _image_source(url: str) -> JSONDict:
    # data:image/png;base64,AAAA -> Anthropic's base64 source; anything else is fetched by URL.
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type = header.split(";")[0] or "image/png"
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _assistant_blocks(message: JSONDict) -> list[JSONDict]:
    blocks: list[JSONDict] = []
    text = _text_of(message.get("content"))
    if text:  # Anthropic refuses empty text blocks
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _parse_arguments(function.get("arguments")),
            }
        )
    return blocks


def _parse_arguments(arguments: Any) -> JSONDict:
    # OpenAI sends a JSON string that models occasionally get wrong; Anthropic needs an object.
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError("tool_calls arguments must be a JSON object", param="messages") from exc
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _tool_result_block(message: JSONDict) -> JSONDict:
    content = message.get("content")
    block: JSONDict = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    if isinstance(content, list):
        block["content"] = [{"type": "text", "text": p.get("text", "")} for p in content if p.get("type") == "text"]
    else:
        block["content"] = content or ""
    return block


def _anthropic_tool(tool: JSONDict) -> JSONDict:
    function = tool.get("function") or {}
    out: JSONDict = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _anthropic_tool_choice(choice: Any, parallel: Any) -> JSONDict | None:
    out: JSONDict | None
    if choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    else:
        out = None
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


# -- responses: Anthropic Message -> OpenAI chat.completion -------------------------------------


def _chat_usage(usage: Any) -> JSONDict:
    """Anthropic's usage as OpenAI's: prompt_tokens counts every input token, cached or not."""
    usage = usage if isinstance(usage, dict) else {}
    uncached = usage.get("input_tokens") or 0
    created = usage.get("cache_creation_input_tokens") or 0
    read = usage.get("cache_read_input_tokens") or 0
    completion = usage.get("output_tokens") or 0
    prompt = uncached + created + read
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
        # Not OpenAI's: kept so accounting can price cache writes and reads at their own rates.
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }


def messages_to_chat_response(msg: JSONDict, model: str, created: int | None = None) -> JSONDict:
    """An Anthropic Messages response as an OpenAI chat.completion."""
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[JSONDict] = []
    for block in msg.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            thinking.append(block.get("thinking", ""))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": orjson.dumps(block.get("input", {})).decode()},
                }
            )
    message: JSONDict = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking:
        # Not OpenAI's; the name DeepSeek and others use for a model's reasoning.
        message["reasoning_content"] = "".join(thinking)
    return {
        "id": msg.get("id"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _FINISH_REASON.get(str(msg.get("stop_reason")), "stop"),
            }
        ],
        "usage": _chat_usage(msg.get("usage")),
    }


# -- server-sent events ---------------------------------------------------------------------------


class SSEDecoder:
    """Server-sent events from bytes as they arrive: an event may be split across any chunks.

    Lines end in LF or CRLF (a bare CR, which the spec also allows, is not used by either API).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, bytes]]:
        """Yield (event name, data) for every event completed by this chunk."""
        self._buffer += chunk
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                return
            self._buffer = rest
            line = line.removesuffix(b"\r")
            if not line:
                if self._data:
                    yield self._event, b"\n".join(self._data)
                self._event, self._data = None, []
            elif line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" "))
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode()
            # Comments (":...") and id/retry fields mean nothing to either API.


def _anthropic_event(payload: JSONDict) -> bytes:
    kind: str = payload["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _data_event(payload: JSONDict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class MessagesStreamToChat:
    """An Anthropic Messages stream in, OpenAI chat.completion.chunk events out.

    ``feed(bytes) -> bytes`` as the upstream's bytes arrive. ``usage`` is the OpenAI-shaped usage
    so far (final once ``done``), for the limit settle.
    """

    def __init__(self, model: str, include_usage: bool = False, created: int | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created
        self.id = ""
        self.done = False
        self._anthropic_usage: JSONDict = {}
        self._decoder = SSEDecoder()
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index

    @property
    def usage(self) -> JSONDict:
        return _chat_usage(self._anthropic_usage)

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for _, data in self._decoder.feed(chunk):
            if self.done:
                break
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                out.extend(self._translate(event))
        return b"".join(out)

    def _chunk(self, delta: JSONDict, finish_reason: str | None = None) -> bytes:
        payload: JSONDict = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            payload["usage"] = None  # as OpenAI sends it on every chunk but the last
        return _data_event(payload)

    def _translate(self, event: JSONDict) -> list[bytes]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = str(message.get("id", ""))
            self._anthropic_usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tool_index[event.get("index", 0)] = len(self._tool_index)
                head = {"name": block.get("name"), "arguments": ""}
                call = {"index": index, "id": block.get("id"), "type": "function", "function": head}
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self._tool_index.get(event.get("index", 0), 0)
                arguments = {"arguments": delta.get("partial_json", "")}
                return [self._chunk({"tool_calls": [{"index": index, "function": arguments}]})]
            return []  # thinking and signature deltas have no place in a chat chunk
        if kind == "message_delta":
            # message_delta's usage is cumulative: it replaces what message_start said.
            self._anthropic_usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, _FINISH_REASON.get(str(stop_reason), "stop"))]
        if kind == "message_stop":
            self.done = True
            out = []
            if self.include_usage:
                payload = {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage,
                }
                out.append(_data_event(payload))
            return [*out, b"data: [DONE]\n\n"]
        if kind == "error":
            # OpenAI streams an error as a data event holding an error object, and then ends.
            self.done = True
            return [_data_event(openai_error_from_anthropic(event))]
        return []  # ping, content_block_stop and event types added later


# -- requests: Anthropic Messages -> OpenAI chat ------------------------------------------------


@_malformed_is_invalid
def messages_to_chat(body: JSONDict, skipped: list[str] | None = None) -> JSONDict:
    """An Anthropic Messages request as an OpenAI chat completions request. What chat cannot say
    (a PDF document block, Anthropic's server tools such as web search) is a 400, unless
    ``skipped`` is given: then it is left out and named there (the form the gateway counts and
    routes by, while an Anthropic deployment gets the request whole). Text-only content becomes
    a string: some OpenAI-compatible providers (DeepSeek) take nothing else."""
    messages: list[JSONDict] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list) and system:
        text = "\n\n".join(b.get("text", "") for b in system if b.get("type") == "text")
        messages.append({"role": "system", "content": text})
    for turn in body.get("messages") or []:
        if turn.get("role") == "assistant":
            messages.append(_chat_assistant(turn.get("content")))
        elif turn.get("role") == "system":
            # Not Anthropic's (its API refuses it), but Claude Code sends one to models whose names
            # are not Claude's, as gateways in front of OpenAI models take it.
            messages.append({"role": "system", "content": _text_of(turn.get("content"))})
        else:
            messages.extend(_chat_user(turn.get("content"), skipped))

    out: JSONDict = {"model": body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        # Anthropic streams always end with usage; OpenAI's only when asked.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        out["user"] = user
    tools = [_chat_tool(t) for t in body.get("tools") or [] if _chat_has_tool(t, skipped)]
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        out.update(_chat_tool_choice(choice))
    return out


def _chat_user(content: Any, skipped: list[str] | None) -> list[JSONDict]:
    """One Anthropic user turn as chat messages: its tool results first, then its other content."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[JSONDict] = []
    parts: list[JSONDict] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "tool_result":
            result = block.get("content")
            text = result if isinstance(result, str) else _text_of(result)
            tool_messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source") or {})}})
        elif skipped is not None:
            skipped.append(f"content blocks of type {kind!r}")
        else:
            raise InvalidRequestError(
                f"Content blocks of type {kind!r} cannot be sent to this model's provider", param="messages"
            )
    if not parts:
        return tool_messages
    if all(part["type"] == "text" for part in parts):
        text = "\n\n".join(part["text"] for part in parts)
        return [*tool_messages, {"role": "user", "content": text}]
    return [*tool_messages, {"role": "user", "content": parts}]


def _image_url(source: JSONDict) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    return str(source.get("url", ""))


def _chat_assistant(content: Any) -> JSONDict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[JSONDict] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            function = {"name": block.get("name"), "arguments": orjson.dumps(block.get("input", {})).decode()}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        # thinking blocks (sent back by clients such as Claude Code) mean nothing to another provider
    message: JSONDict = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _chat_has_tool(tool: JSONDict, skipped: list[str] | None) -> bool:
    """Whether chat has ``tool``: Anthropic's server tools (web search, bash, ...) run at Anthropic,
    and nobody else has them."""
    if tool.get("type") in (None, "custom"):
        return True
    if skipped is None:
        raise InvalidRequestError(f"Tool type {tool.get('type')!r} is only available from Anthropic", param="tools")
    skipped.append(f"the tool type {tool.get('type')!r}")
    return False


def _chat_tool(tool: JSONDict) -> JSONDict:
    function: JSONDict = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: JSONDict) -> JSONDict:
    kind = choice.get("type")
    out: JSONDict = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


# -- responses: OpenAI chat.completion -> Anthropic Message -------------------------------------


def messages_usage(usage: Any) -> tuple[int, int, int, int] | None:
    """(prompt, output, cache read, cache written) tokens of an Anthropic ``usage``: the prompt is
    all of it (input_tokens counts only what was neither read from nor written to the cache), as
    the gateway's limits and OpenAI's prompt_tokens count it. None: no usage there."""
    if type(usage) is not dict:
        return None
    uncached = usage.get("input_tokens")
    if type(uncached) is not int:
        return None
    output = usage.get("output_tokens")
    read = usage.get("cache_read_input_tokens")
    written = usage.get("cache_creation_input_tokens")
    read = read if type(read) is int else 0
    written = written if type(written) is int else 0
    return uncached + read + written, output if type(output) is int else 0, read, written


def messages_text(message: Any) -> str:
    """The text an Anthropic Message or content block delta carries (text, thinking, tool input)."""
    if not isinstance(message, dict):
        return ""
    blocks = message.get("content")
    if not isinstance(blocks, list):
        blocks = [message]
    parts = []
    for block in blocks:
        if isinstance(block, dict):
            for field in ("text", "thinking", "partial_json"):
                value = block.get(field)
                if isinstance(value, str):
                    parts.append(value)
            if block.get("type") == "tool_use" and isinstance(block.get("input"), dict):
                parts.append(orjson.dumps(block["input"]).decode())
    return "".join(parts)


def _message_id(chat_id: Any) -> str:
    return "msg_" + str(chat_id or "").removeprefix("chatcmpl-")


def _anthropic_usage(usage: Any) -> JSONDict:
    """OpenAI's usage as Anthropic's: input_tokens excludes the cached tokens, reported apart."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    return {
        "input_tokens": max((usage.get("prompt_tokens") or 0) - cached, 0),
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def chat_to_messages_response(chat: JSONDict, model: str) -> JSONDict:
    """An OpenAI chat.completion as an Anthropic Message."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[JSONDict] = []
    text = _text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _lenient_arguments(function.get("arguments")),
            }
        )
    return {
        "id": _message_id(chat.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP_REASON.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": _anthropic_usage(chat.get("usage")),
    }


def _lenient_arguments(arguments: Any) -> JSONDict:
    # A model's malformed arguments are its answer: keep them rather than fail the response.
    try:
        return _parse_arguments(arguments)
    except InvalidRequestError:
        return {"raw_arguments": str(arguments)}


class ChatStreamToMessages:
    """An OpenAI chat.completion.chunk stream in, Anthropic Messages events out.

    ``input_tokens`` (the gateway's estimate) goes into message_start, which Anthropic sends
    before any usage is known; message_delta carries the provider's own count at the end.
    ``finish()`` closes a stream whose upstream ended without ``[DONE]`` but with a finish_reason.
    """

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self.done = False
        self.usage: JSONDict = {"input_tokens": input_tokens, "output_tokens": 0}
        self._decoder = SSEDecoder()
        self._started = False
        self._block = -1  # index of the open content block, -1 when none is open
        self._block_kind: str | None = None
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> Anthropic block index
        self._stop_reason: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for _, data in self._decoder.feed(chunk):
            if self.done:
                break
            if data.strip() == b"[DONE]":
                out.extend(self._end())
                continue
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(payload, dict):
                out.extend(self._translate(payload))
        return b"".join(out)

    def finish(self) -> bytes:
        """The closing events if the upstream finished a choice but never sent [DONE]."""
        if self.done or self._stop_reason is None:
            return b""
        return b"".join(self._end())

    def _translate(self, chunk: JSONDict) -> list[bytes]:
        if isinstance(chunk.get("error"), dict):
            self.done = True
            error = chunk["error"]
            kind = "rate_limit_error" if error.get("code") == "rate_limit_exceeded" else "api_error"
            return [_anthropic_event({"type": "error", "error": {"type": kind, "message": str(error.get("message"))}})]
        out = self._start(chunk) if not self._started else []
        if isinstance(chunk.get("usage"), dict):
            self.usage = _anthropic_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # Anthropic has no n > 1
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                out.extend(self._open("text", {"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": content}))
            for call in delta.get("tool_calls") or []:
                out.extend(self._tool_delta(call))
            if choice.get("finish_reason"):
                self._stop_reason = _STOP_REASON.get(choice["finish_reason"], "end_turn")
        return out

    def _start(self, chunk: JSONDict) -> list[bytes]:
        self._started = True
        message: JSONDict = {
            "id": _message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return [_anthropic_event({"type": "message_start", "message": message}), _anthropic_event({"type": "ping"})]

    def _open(self, kind: str, block: JSONDict) -> list[bytes]:
        """Close the open block unless it is a text block and text goes on; open a new one."""
        if kind == "text" and self._block_kind == "text":
            return []
        out = self._close()
        self._block += 1
        self._block_kind = kind
        out.append(_anthropic_event({"type": "content_block_start", "index": self._block, "content_block": block}))
        return out

    def _close(self) -> list[bytes]:
        if self._block_kind is None:
            return []
        self._block_kind = None
        return [_anthropic_event({"type": "content_block_stop", "index": self._block})]

    def _delta(self, delta: JSONDict, index: int | None = None) -> bytes:
        return _anthropic_event(
            {"type": "content_block_delta", "index": self._block if index is None else index, "delta": delta}
        )

    def _tool_delta(self, call: JSONDict) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self._tool_blocks:
            block: JSONDict = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
            out.extend(self._open("tool_use", block))
            self._tool_blocks[index] = self._block
        arguments = function.get("arguments")
        if arguments:
            # OpenAI streams tool calls one after another, so the block is still the open one.
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(self._delta(delta, self._tool_blocks[index]))
        return out

    def _end(self) -> list[bytes]:
        self.done = True
        out = self._start({}) if not self._started else []
        out.extend(self._close())
        usage = {k: v for k, v in self.usage.items() if k != "input_tokens" or v}
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        out.append(_anthropic_event({"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(_anthropic_event({"type": "message_stop"}))
        return out
