"""A cached answer replayed as a stream the OpenAI SDK reads, and a streamed answer assembled
into the whole completion the cache keeps (issue 20, first part)."""

from __future__ import annotations

import socketserver
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from openai import OpenAI

from quotagate.cache._replay import assemble_stream, replay_as_stream, replayable

from ..conftest import RawHttpServer

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "We ship with DHL."}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}
TOOL_CALL: dict[str, Any] = {
    **COMPLETION,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "track", "arguments": '{"order": 7}'}}
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
}


def test_a_replayed_answer_assembles_back_to_itself() -> None:
    """Replay then assembly gives the answer back: content, tool calls, finish reason, usage."""
    for completion in (COMPLETION, TOOL_CALL):
        assembled = assemble_stream(replay_as_stream(completion, include_usage=True))
        assert assembled is not None
        assert assembled["choices"] == completion["choices"]
        assert assembled["usage"] == completion["usage"]


def test_the_usage_chunk_only_when_asked() -> None:
    """A client that did not ask for usage gets no usage chunk."""
    assert b'"usage"' not in replay_as_stream(COMPLETION, include_usage=False)
    assert b'"usage"' in replay_as_stream(COMPLETION, include_usage=True)


def test_an_incomplete_stream_is_not_an_answer() -> None:
    """No [DONE], a choice without its finish reason, or an error event: nothing to keep."""
    whole = replay_as_stream(COMPLETION, include_usage=True)
    assert assemble_stream(whole.replace(b"data: [DONE]\n\n", b"")) is None
    assert assemble_stream(whole.replace(b'"finish_reason":"stop"', b'"finish_reason":null')) is None
    broken = whole.replace(b"data: [DONE]", b'data: {"error": {"message": "upstream died"}}\n\ndata: [DONE]')
    assert assemble_stream(broken) is None


class _Stream(socketserver.StreamRequestHandler):
    body = b""

    def handle(self) -> None:
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # the head; the body is small and ignored
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + self.body)


@pytest.fixture
def replaying() -> Iterator[RawHttpServer]:
    _Stream.body = replay_as_stream(COMPLETION, include_usage=True)
    server = RawHttpServer(_Stream)
    yield server
    server.close()


def test_the_openai_sdk_reads_a_replayed_stream(replaying: RawHttpServer) -> None:
    """The official SDK parses the replay: the content, the finish reason and the usage."""
    client = OpenAI(base_url=replaying.url + "/v1", api_key="sk-test", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Which courier do you use?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "We ship with DHL."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 17


def test_answers_whose_other_form_would_lose_something_are_not_kept() -> None:
    """logprobs, audio or a legacy function_call would not survive the other form: not cached."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    with_logprobs = (
        b"data: "
        + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [1]}}]})
        + b"\n\ndata: "
        + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + b"\n\ndata: [DONE]\n\n"
    )
    assert assemble_stream(with_logprobs) is None
    old_call = with_logprobs.replace(b'"logprobs":{"content":[1]}', b'"logprobs":null').replace(
        b'"delta":{"content":"a"}', b'"delta":{"function_call":{"name":"f","arguments":"{}"}}'
    )
    assert assemble_stream(old_call) is None
    plain = old_call.replace(b'"delta":{"function_call":{"name":"f","arguments":"{}"}}', b'"delta":{"content":"a"}')
    assert assemble_stream(plain) is not None
    message = {"role": "assistant", "content": "a", "refusal": None, "annotations": []}
    assert replayable({"choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}]})
    audio = {**message, "audio": {"id": "x"}}
    assert not replayable({"choices": [{"index": 0, "message": audio, "finish_reason": "stop"}]})
    logprobs = {"content": [{"token": "a", "logprob": -0.1}]}
    assert not replayable(
        {"choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": logprobs}]}
    )
