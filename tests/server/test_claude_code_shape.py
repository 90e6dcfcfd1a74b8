"""Claude Code against the gateway: its requests, as it sends them, served by either kind of model.

Claude Code (2.x) was run by hand against a gateway in front of the mock (README, "Anthropic's
Messages API"); its requests were captured and are reproduced here in their shape, not their
76 kB of prompt: the beta endpoint (``/v1/messages?beta=true``, as the SDK's ``client.beta``
sends it) with a list of ``anthropic-beta`` flags, a system prompt of text blocks with
``cache_control`` breakpoints, tools with ``input_schema``, ``thinking: {type: adaptive}``,
``context_management`` and ``output_config``, ``metadata.user_id`` holding JSON, a stream, and, for
a model whose name is not Claude's, a message with the role ``system`` after the user's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from quotagate.config import parse_config

from ..conftest import RunningGateway, ServerThread

BETAS = ["claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27"]
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": "You are an interactive CLI tool.", "cache_control": {"type": "ephemeral"}},
]
TOOLS = [
    {
        "name": "Bash",
        "description": "Executes a given bash command.",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
    {
        "name": "Read",
        "description": "Reads a file.",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]},
    },
]
USER_TURN = {
    "role": "user",
    "content": [
        {"type": "text", "text": "<system-reminder>\nThe current date is 2026-12-05.\n</system-reminder>"},
        {"type": "text", "text": "say hello", "cache_control": {"type": "ephemeral"}},
    ],
}
EXTRA = {
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
}
METADATA = {"user_id": '{"device_id":"5dd88b56","account_uuid":"","session_id":"33b48f2e"}'}


@pytest.fixture
def gateway(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> tuple[RunningGateway, ServerThread]:
    mock = start_mock(record=True, api_key="sk-upstream-test-key-123456")
    upstream = {"base_url": mock.url, "api_key": "env:TEST_UPSTREAM_KEY"}
    config = parse_config(
        {
            "database": sqlite_url,
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {"rpm": 100, "tpm": 1_000_000}},
            "models": [
                {
                    "name": "claude-sonnet-4.5",
                    # Its own default differs from the client's: the client's must be what is sent.
                    "deployments": [{"provider": "anthropic", **upstream, "anthropic_version": "2024-01-01"}],
                },
                {
                    "name": "gpt-4o-mini",
                    "deployments": [{"provider": "openai", **upstream, "base_url": mock.url + "/v1"}],
                },
            ],
        }
    )
    return start_gateway(config), mock


def ask(gw: RunningGateway, model: str, messages: list[dict[str, Any]]) -> tuple[str, Any]:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.create_key()["key"], max_retries=0)
    with client.beta.messages.stream(
        model=model,
        max_tokens=32000,
        system=SYSTEM,  # type: ignore[arg-type]
        messages=messages,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        thinking={"type": "adaptive"},  # type: ignore[arg-type, typeddict-item]
        metadata=METADATA,  # type: ignore[arg-type]
        betas=BETAS,
        extra_body=EXTRA,
        extra_headers={"anthropic-version": "2023-06-01"},  # Claude Code's (this SDK sends its own)
    ) as stream:
        text = "".join(stream.text_stream)
        return text, stream.get_final_message()


def test_a_claude_model_gets_claude_codes_request_as_it_was_sent(gateway: tuple[RunningGateway, ServerThread]) -> None:
    gw, mock = gateway
    text, final = ask(gw, "claude-sonnet-4.5", [USER_TURN])
    assert text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    sent = mock.app.state.recorded[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["anthropic-beta"] == ",".join(BETAS)
    assert sent.headers["anthropic-version"] == "2023-06-01"  # the client's, not the deployment's default
    # The body as the client wrote it (the gateway's own name for the model is also the provider's).
    assert sent.body["system"] == SYSTEM and sent.body["tools"] == TOOLS
    assert sent.body["messages"] == [USER_TURN]
    assert sent.body["thinking"] == {"type": "adaptive"} and sent.body["max_tokens"] == 32000
    assert {name: sent.body[name] for name in EXTRA} == EXTRA


def test_an_openai_model_serves_claude_code_translated(gateway: tuple[RunningGateway, ServerThread]) -> None:
    gw, mock = gateway
    reminder = {"role": "system", "content": "The user is in /work."}  # only to models not named Claude's
    text, final = ask(gw, "gpt-4o-mini", [USER_TURN, reminder])
    assert text and final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    sent = mock.app.state.recorded[-1]
    assert sent.path == "/v1/chat/completions"
    assert "anthropic-beta" not in sent.headers  # Anthropic's flags are no OpenAI provider's business
    roles = [message["role"] for message in sent.body["messages"]]
    assert roles == ["system", "user", "system"]
    assert [tool["function"]["name"] for tool in sent.body["tools"]] == ["Bash", "Read"]
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    # OpenAI's reasoning models refuse max_tokens; every OpenAI chat model takes this.
    assert sent.body["max_completion_tokens"] == 32000 and "max_tokens" not in sent.body


def test_a_system_turn_to_a_claude_model_joins_its_system_prompt(gateway: tuple[RunningGateway, ServerThread]) -> None:
    """A model given another name (an alias) gets Claude Code's system turns; Anthropic refuses
    that role, so the gateway moves their text to the end of the system prompt."""
    gw, mock = gateway
    reminder = {"role": "system", "content": "The user is in /work."}
    text, _ = ask(gw, "claude-sonnet-4.5", [USER_TURN, reminder])
    assert text
    sent = mock.app.state.recorded[-1].body
    assert sent["messages"] == [USER_TURN]
    assert sent["system"] == [*SYSTEM, {"type": "text", "text": "The user is in /work."}]
