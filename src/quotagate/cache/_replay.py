"""A chat completion as the cache keeps it, and as a stream: assembled from a streamed answer
before it is stored, and replayed as one to a client that asked for ``stream: true``.

The cache keeps one form, the whole completion (``choices`` with their messages, ``usage``), so
that an answer first streamed can be served whole and the other way round. Only complete answers
are kept: a stream without its finish reason, or one that ended in an error event, assembles to
nothing.
"""

from __future__ import annotations

from typing import Any

import orjson


def assemble_stream(events: bytes) -> dict[str, Any] | None:
    """The whole chat completion a streamed answer's SSE events make, or None when the stream is
    not a complete answer (an error event, a choice without its finish reason, no ``[DONE]``)."""
    completion: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    done = False
    for line in events.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        if completion is None:
            completion = {
                "id": chunk.get("id"),
                "object": "chat.completion",
                "created": chunk.get("created"),
                "model": chunk.get("model"),
            }
            if chunk.get("system_fingerprint") is not None:
                completion["system_fingerprint"] = chunk["system_fingerprint"]
        if chunk.get("usage"):
            completion["usage"] = chunk["usage"]
        for delta_choice in chunk.get("choices") or ():
            delta = delta_choice.get("delta") or {} if isinstance(delta_choice, dict) else None
            if not isinstance(delta, dict) or not _replayable(delta_choice, delta):
                return None
            index = delta_choice.get("index", 0)
            choice = choices.setdefault(
                index, {"index": index, "message": {"role": "assistant", "content": ""}, "finish_reason": None}
            )
            message = choice["message"]
            if delta.get("role"):
                message["role"] = delta["role"]
            if delta.get("content"):
                message["content"] += delta["content"]
            if delta.get("refusal"):
                message["refusal"] = message.get("refusal", "") + delta["refusal"]
            for call in delta.get("tool_calls") or ():
                calls = message.setdefault("tool_calls", [])
                at = call.get("index", len(calls))
                while len(calls) <= at:
                    calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                into = calls[at]
                if call.get("id"):
                    into["id"] = call["id"]
                function = call.get("function") or {}
                into["function"]["name"] += function.get("name") or ""
                into["function"]["arguments"] += function.get("arguments") or ""
            if delta_choice.get("finish_reason"):
                choice["finish_reason"] = delta_choice["finish_reason"]
    if completion is None or not done or not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None
    completion["choices"] = [choices[index] for index in sorted(choices)]
    return completion


# What both forms of an answer carry, so that a cached one is the same streamed or not. An answer
# with anything more (logprobs, audio, a legacy function_call) is not cached: its other form would
# lose it.
_CHOICE_FIELDS = frozenset({"index", "message", "delta", "finish_reason", "logprobs"})
_MESSAGE_FIELDS = frozenset({"role", "content", "refusal", "tool_calls", "annotations"})


def _replayable(choice: dict[str, Any], message: dict[str, Any]) -> bool:
    return (
        not choice.get("logprobs")
        and all(name in _CHOICE_FIELDS or not value for name, value in choice.items())
        and all(name in _MESSAGE_FIELDS or not value for name, value in message.items())
        and not message.get("annotations")
    )


def replayable(completion: dict[str, Any]) -> bool:
    """Whether ``completion``'s choices hold only what its stream form carries too."""
    choices = completion.get("choices")
    return isinstance(choices, list) and all(
        isinstance(choice, dict) and isinstance(choice.get("message"), dict) and _replayable(choice, choice["message"])
        for choice in choices
    )


def replay_as_stream(completion: dict[str, Any], include_usage: bool) -> bytes:
    """``completion`` as the SSE events of a stream: per choice a role chunk, its content (and tool
    calls) in one chunk, a finish chunk; then the usage chunk if the client asked for it; then
    ``[DONE]``. The OpenAI SDKs parse it as they parse a provider's stream."""
    head = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]
    events = []

    def event(choices: list[dict[str, Any]], **extra: Any) -> None:
        events.append(b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n")

    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        event(
            [
                {
                    "index": index,
                    "delta": {"role": message.get("role", "assistant"), "content": ""},
                    "finish_reason": None,
                }
            ]
        )
        delta: dict[str, Any] = {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": at, **call} for at, call in enumerate(message["tool_calls"])]
        if delta:
            event([{"index": index, "delta": delta, "finish_reason": None}])
        event([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}])
    if include_usage and completion.get("usage"):
        event([], usage=completion["usage"])
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)
