"""Anthropic Messages <-> OpenAI chat translation, checked by the official SDKs' typed models."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import anthropic
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from quotagate.errors import InvalidRequestError, NotFoundError, UpstreamStatusError
from quotagate.surfaces import (
    ChatStreamToMessages,
    MessagesStreamToChat,
    SSEDecoder,
    anthropic_error,
    anthropic_error_for,
    chat_to_messages,
    chat_to_messages_response,
    messages_to_chat,
    messages_to_chat_response,
    openai_error_from_anthropic,
)

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
PNG = "iVBORw0KGgoAAAANSUhEUg=="
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CHAT = {
    "model": "claude-sonnet-4-5",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these, and the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "15C, rain"},
        {"role": "assistant", "content": "Paris is sunny."},
        {"role": "user", "content": "Thanks!"},
    ],
    "tools": [WEATHER],
    "tool_choice": "required",
    "max_completion_tokens": 300,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": "END",
    "stream": True,
    "user": "user-42",
}
MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "the weather."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 20,
    },
}


def sse(*payloads: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + p["type"].encode() + b"\ndata: " + orjson.dumps(p) + b"\n\n" for p in payloads)


ANTHROPIC_STREAM = sse(
    {
        "type": "message_start",
        "message": {**MESSAGE, "content": [], "stop_reason": None, "usage": {**MESSAGE["usage"], "output_tokens": 1}},
    },
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking "}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "the weather."}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    },
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 20},
    },
    {"type": "message_stop"},
)


def chat_sse(*chunks: dict[str, Any]) -> bytes:
    head = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    return b"".join(b"data: " + orjson.dumps({**head, **c}) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]}


CHAT_STREAM = chat_sse(
    delta({"role": "assistant", "content": ""}),
    delta({"content": "Checking"}),
    delta({"content": " the weather."}),
    delta(
        {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        }
    ),
    delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    delta({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
    delta(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
                }
            ]
        }
    ),
    delta({}, "tool_calls"),
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": 7,
            "total_tokens": 57,
            "prompt_tokens_details": {"cached_tokens": 32},
        },
    },
)


def data_events(raw: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    return [data for _, data in decoder.feed(raw)]


def chat_chunks(raw: bytes) -> list[ChatCompletionChunk]:
    events = data_events(raw)
    assert events[-1] == b"[DONE]"
    return [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]


def anthropic_events(raw: bytes) -> list[Any]:
    decoder = SSEDecoder()
    out = []
    for name, data in decoder.feed(raw):
        if name == "ping":  # the SDK skips pings before parsing, so its event union has none
            assert orjson.loads(data) == {"type": "ping"}
            out.append(SimpleNamespace(type="ping"))
            continue
        event = EVENTS.validate_json(data)
        assert name == event.type  # the event: line names the data's type, as the SDK expects
        out.append(event)
    return out


def test_chat_request_becomes_a_messages_request() -> None:
    """System, images, tool calls, merged tool results, tools and sampling options all carry over."""
    out = chat_to_messages(CHAT)
    assert out["system"] == "Be brief."
    # Recent Claude models refuse temperature and top_p together: temperature is kept.
    assert out["max_tokens"] == 300 and out["temperature"] == 0.5 and "top_p" not in out
    assert out["stop_sequences"] == ["END"] and out["stream"] is True
    assert out["metadata"] == {"user_id": "user-42"}
    assert out["tool_choice"] == {"type": "any"}
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
        }
    ]
    user, assistant, results, last_assistant, last_user = out["messages"]
    assert user["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert user["content"][2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert assistant["content"][1] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "15C, rain"},
        ],
    }
    assert last_assistant == {"role": "assistant", "content": "Paris is sunny."}
    assert last_user == {"role": "user", "content": "Thanks!"}


def test_the_sdk_accepts_the_translated_request() -> None:
    """The anthropic SDK's request types accept what chat_to_messages builds."""
    out = chat_to_messages(CHAT)
    params = anthropic.types.MessageCreateParams  # a TypedDict: checked through pydantic
    TypeAdapter(params).validate_python(out)


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, None, None),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: Any, expected: Any) -> None:
    """Each OpenAI tool_choice has its Anthropic equivalent; parallel_tool_calls=false disables parallel use."""
    out = chat_to_messages({**CHAT, "tool_choice": choice, "parallel_tool_calls": parallel})
    assert out.get("tool_choice") == expected


def test_max_tokens_default() -> None:
    """Anthropic requires max_tokens: a chat request without one gets the given default."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_to_messages(body, default_max_tokens=123)["max_tokens"] == 123
    assert chat_to_messages({**body, "max_tokens": 7})["max_tokens"] == 7


def test_round_trip_chat_messages_chat() -> None:
    """chat -> messages -> chat keeps system, text, images, tool calls, tool results and tools."""
    back = messages_to_chat(chat_to_messages(CHAT))
    assert back["messages"] == CHAT["messages"]
    assert back["tools"] == CHAT["tools"]
    assert back["tool_choice"] == "required"
    assert back["max_tokens"] == 300 and back["stop"] == ["END"] and back["user"] == "user-42"
    assert back["stream_options"] == {"include_usage": True}


def test_messages_response_becomes_a_chat_completion() -> None:
    """Text joined, tool_use as tool_calls, thinking aside, usage counting cache reads and writes."""
    out = ChatCompletion.model_validate(messages_to_chat_response(MESSAGE, "claude", created=5))
    message = out.choices[0].message
    assert message.content == "Checking the weather."
    assert message.tool_calls is not None and message.tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert message.model_extra == {"reasoning_content": "Hmm."}
    assert out.choices[0].finish_reason == "tool_calls" and out.model == "claude" and out.id == "msg_01"
    assert out.usage is not None and out.usage.prompt_tokens == 1110 and out.usage.completion_tokens == 20
    assert out.usage.total_tokens == 1130
    assert out.usage.prompt_tokens_details is not None and out.usage.prompt_tokens_details.cached_tokens == 1000


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reason_mapping(stop_reason: str, finish_reason: str) -> None:
    """Anthropic's stop_reason maps to OpenAI's finish_reason, and back."""
    out = messages_to_chat_response({**MESSAGE, "stop_reason": stop_reason}, "claude")
    assert ChatCompletion.model_validate(out).choices[0].finish_reason == finish_reason
    chat = {**out, "choices": [{**out["choices"][0], "finish_reason": finish_reason}]}
    back = Message.model_validate(chat_to_messages_response(chat, "claude")).stop_reason
    assert back == ("end_turn" if stop_reason == "stop_sequence" else stop_reason)


def test_messages_stream_becomes_chat_chunks() -> None:
    """Every Anthropic event type translates into valid chunks: text, tool call head and arguments, finish, usage."""
    translator = MessagesStreamToChat("claude", include_usage=True, created=5)
    chunks = chat_chunks(translator.feed(ANTHROPIC_STREAM))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].id == "msg_01"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Checking the weather."
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert calls[0].id == "toolu_1" and calls[0].function and calls[0].function.name == "get_weather"
    assert "".join(c.function.arguments or "" for c in calls if c.function) == '{"city": "Paris"}'
    assert {c.index for c in calls} == {0}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (1110, 20)
    assert translator.done and translator.usage["cache_creation_input_tokens"] == 100


def test_stream_without_usage_has_no_usage_chunk() -> None:
    """Without include_usage, no chunk carries a usage field (as OpenAI streams)."""
    chunks = chat_chunks(MessagesStreamToChat("claude").feed(ANTHROPIC_STREAM))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_stream_split_at_every_byte_gives_the_same_output() -> None:
    """Fed a byte at a time, both translators produce exactly what they produce from the whole stream."""
    whole = MessagesStreamToChat("claude", include_usage=True, created=5).feed(ANTHROPIC_STREAM)
    translator = MessagesStreamToChat("claude", include_usage=True, created=5)
    assert b"".join(translator.feed(ANTHROPIC_STREAM[i : i + 1]) for i in range(len(ANTHROPIC_STREAM))) == whole
    crlf = CHAT_STREAM.replace(b"\n", b"\r\n")
    whole = ChatStreamToMessages("claude").feed(CHAT_STREAM)
    translator2 = ChatStreamToMessages("claude")
    assert b"".join(translator2.feed(crlf[i : i + 1]) for i in range(len(crlf))) == whole


def test_stream_error_event_becomes_an_openai_error() -> None:
    """An Anthropic error event mid-stream becomes an OpenAI error event, and the stream ends."""
    raw = (
        ANTHROPIC_STREAM[:200]
        + b"\n\n"
        + sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    )
    translator = MessagesStreamToChat("claude")
    out = data_events(translator.feed(ANTHROPIC_STREAM.split(b"event: ping")[0] + raw[200:]))
    assert orjson.loads(out[-1]) == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded"}
    }
    assert translator.done


def test_messages_request_becomes_a_chat_request() -> None:
    """System blocks, images, tool_use and tool_result blocks, tools and tool_choice map to chat."""
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "x", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "And now?"},
                ],
            },
        ],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u1"},
        "top_k": 5,
    }
    out = messages_to_chat(body)
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},  # a string: some providers (DeepSeek) take no list
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "user", "content": "And now?"},
    ]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["parallel_tool_calls"] is False and out["user"] == "u1" and "top_k" not in out


def test_chat_completion_becomes_a_message() -> None:
    """A chat.completion parses as the anthropic SDK's Message, usage split into uncached and cached input."""
    chat = {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Sure.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": 7,
            "total_tokens": 57,
            "prompt_tokens_details": {"cached_tokens": 32},
        },
    }
    message = Message.model_validate(chat_to_messages_response(chat, "my-model"))
    assert message.id == "msg_xyz" and message.model == "my-model" and message.stop_reason == "tool_use"
    assert message.content[0].type == "text" and message.content[0].text == "Sure."
    assert message.content[1].type == "tool_use" and message.content[1].input == {"a": 1}
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        18,
        32,
        7,
    )


def test_chat_stream_becomes_messages_events() -> None:
    """Chat chunks become a valid Anthropic event sequence that the SDK's accumulator turns into the message."""
    raw = ChatStreamToMessages("my-model", input_tokens=48).feed(CHAT_STREAM)
    events = anthropic_events(raw)
    assert [e.type for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.usage.input_tokens == 48
    final = events[-2]
    assert final.delta.stop_reason == "tool_use"
    assert (final.usage.output_tokens, final.usage.input_tokens, final.usage.cache_read_input_tokens) == (7, 18, 32)
    # The SDK's own accumulator builds the final message from these events.
    from anthropic.lib.streaming._messages import accumulate_event

    # Newer SDKs keep partial tool JSON in a caller's buffer; older ones on the snapshot.
    extra: dict[str, Any] = {"json_bufs": {}} if "json_bufs" in inspect.signature(accumulate_event).parameters else {}
    snapshot = None
    for event in events[:1] + events[2:]:  # no ping: the SDK drops it before accumulating
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, **extra)
    assert snapshot is not None
    assert [b.type for b in snapshot.content] == ["text", "tool_use", "tool_use"]
    assert snapshot.content[0].text == "Checking the weather."  # type: ignore[union-attr]
    assert [b.input for b in snapshot.content[1:]] == [{"city": "Paris"}, {"city": "Lyon"}]  # type: ignore[union-attr]


def test_chat_stream_without_done_is_closed_by_finish() -> None:
    """A chat stream that ends after its finish_reason but without [DONE] still closes properly."""
    translator = ChatStreamToMessages("m")
    raw = translator.feed(CHAT_STREAM.removesuffix(b"data: [DONE]\n\n")) + translator.finish()
    assert [e.type for e in anthropic_events(raw)][-2:] == ["message_delta", "message_stop"]
    assert translator.finish() == b""


def test_error_shapes() -> None:
    """Gateway errors become Anthropic-shaped bodies that the SDK parses; Anthropic errors become OpenAI-shaped."""
    assert orjson.loads(anthropic_error(429, None, "slow down")) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    for status, kind in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
    ]:
        assert orjson.loads(anthropic_error(status, None, "m"))["error"]["type"] == kind
    status, body = anthropic_error_for(NotFoundError("no such model"))
    assert status == 404 and anthropic.types.ErrorResponse.model_validate_json(body).error.type == "not_found_error"
    native = anthropic_error(529, "overloaded_error", "Overloaded")
    assert anthropic_error_for(UpstreamStatusError(529, "Overloaded", raw_body=native)) == (529, native)
    assert (
        openai_error_from_anthropic(orjson.loads(anthropic_error(429, None, "x")))["error"]["code"]
        == "rate_limit_exceeded"
    )


def test_a_text_parts_cache_control_reaches_anthropic() -> None:
    """A prompt-cache breakpoint sent in a chat request (as LiteLLM's clients do) is kept, on the
    system prompt and on a user's text part; without one the system prompt stays a string."""
    marker = {"type": "ephemeral"}
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": marker}]},
            {"role": "user", "content": [{"type": "text", "text": "long doc", "cache_control": marker}]},
        ],
    }
    sent = chat_to_messages(body)
    assert sent["system"] == [{"type": "text", "text": "rules", "cache_control": marker}]
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "long doc", "cache_control": marker}]
    plain = chat_to_messages({"model": "m", "messages": [{"role": "system", "content": "rules"}]})
    assert plain["system"] == "rules"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": [1, 2]}],
        [{"role": "assistant", "content": "x", "tool_calls": ["not an object"]}],
        [{"role": "tool", "tool_call_id": "t", "content": ["not a part"]}],
    ],
)
def test_a_malformed_chat_body_is_a_400_not_a_crash(messages: list[Any]) -> None:
    with pytest.raises(InvalidRequestError, match="could not be translated"):
        chat_to_messages({"model": "m", "messages": messages})


def test_a_malformed_messages_body_is_a_400_not_a_crash() -> None:
    with pytest.raises(InvalidRequestError, match="could not be translated"):
        messages_to_chat({"model": "m", "max_tokens": 5, "messages": [], "tools": ["not a tool"]})


def test_what_anthropic_cannot_honour_is_refused_not_dropped() -> None:
    """Several choices, logprobs and structured outputs would silently change the answer."""
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for extra, param in (
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ):
        with pytest.raises(InvalidRequestError) as refused:
            chat_to_messages({**base, **extra})
        assert refused.value.param == param
    assert chat_to_messages({**base, "n": 1, "response_format": {"type": "text"}})["messages"]


def test_sampling_and_empty_turns_as_anthropic_takes_them() -> None:
    body = {
        "model": "m",
        "temperature": 1.7,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "again"},
        ],
    }
    out = chat_to_messages(body)
    assert out["temperature"] == 1.0  # OpenAI's 0-2, Anthropic's 0-1
    # The empty assistant turn is left out; the user turns around it become one.
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}
    ]
    assert chat_to_messages({"model": "m", "top_p": 0.5, "messages": body["messages"][:1]})["top_p"] == 0.5


def test_messages_chat_cannot_say_are_named_when_asked_to_skip() -> None:
    """The form the gateway counts by leaves out what chat cannot say and names it; the strict
    form (for an OpenAI deployment) refuses it."""
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
                    },
                    {"type": "text", "text": "Summarise this."},
                ],
            }
        ],
        "tools": [
            {"type": "web_search_20250305", "name": "web_search"},
            {"name": "f", "input_schema": {"type": "object"}},
        ],
    }
    skipped: list[str] = []
    out = messages_to_chat(body, skipped)
    assert out["messages"] == [{"role": "user", "content": "Summarise this."}]
    assert [tool["function"]["name"] for tool in out["tools"]] == ["f"]
    assert skipped == ["content blocks of type 'document'", "the tool type 'web_search_20250305'"]
    with pytest.raises(InvalidRequestError):
        messages_to_chat(body)
