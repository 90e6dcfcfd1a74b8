"""Both transports behind the gateway: the default (quotagate's own client) and AiohttpTransport,
for embedders who hand it in, relay completions and streams alike."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from openai import OpenAI

from quotagate.upstream import AiohttpTransport, HttpTransport, Transport

from ..conftest import RunningGateway, ServerThread, gateway_config


@pytest.mark.parametrize("make_transport", [HttpTransport, AiohttpTransport], ids=["own", "aiohttp"])
def test_a_completion_and_a_stream_go_through(
    make_transport: Callable[[], Transport],
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
) -> None:
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url), transport=make_transport())
    client = OpenAI(base_url=gw.v1, api_key=gw.create_key()["key"], max_retries=0)
    messages = [{"role": "user", "content": "Say hello in three words."}]
    completion = client.chat.completions.create(model="house-model", messages=messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.model == "gpt-4.1"  # the deployment's name went upstream
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]
        if chunk.choices
    ]
    assert len(pieces) > 1 and "".join(pieces)  # relayed event by event


@pytest.mark.parametrize("make_transport", [HttpTransport, AiohttpTransport], ids=["own", "aiohttp"])
def test_other_methods_and_the_messages_api_go_through(
    make_transport: Callable[[], Transport],
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
) -> None:
    """The passthrough's own methods and Content-Type (a file uploaded, listed, deleted) and a
    deployment that speaks Anthropic's Messages API, whichever transport sends them."""
    claude = {
        "name": "claude",
        "deployments": [{"provider": "anthropic", "base_url": mock_upstream.url, "api_key": "env:TEST_UPSTREAM_KEY"}],
    }
    config = gateway_config(sqlite_url, mock_upstream.url, passthrough={"default_model": "gpt-4o-mini"})
    config = config.model_copy(update={"models": [*config.models, type(config.models[0]).model_validate(claude)]})
    gw = start_gateway(config, transport=make_transport())
    client = OpenAI(base_url=gw.v1, api_key=gw.create_key()["key"], max_retries=0)
    uploaded = client.files.create(file=("notes.jsonl", b'{"a": 1}\n'), purpose="batch")
    assert uploaded.id in [listed.id for listed in client.files.list()]
    assert client.files.delete(uploaded.id).deleted
    answer = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content and answer.usage is not None
