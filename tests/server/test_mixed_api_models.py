"""A model whose deployments speak different APIs: each request goes to a deployment whose API
can take it, and what only one API has never reaches the other.

A chat request with audio, or an embeddings request, cannot go to a Messages deployment; a Messages
request with a PDF or Anthropic's web search cannot go to an OpenAI one. Such a deployment is
passed over (no try, no breaker verdict) for the model's next; only when none can take it is the
request a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from quotagate.config import parse_config

from ..conftest import RunningGateway, ServerThread

UPSTREAM_KEY = "sk-upstream-test-key-123456"
PDF = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}
WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


@pytest.fixture
def mock(start_mock: Callable[..., ServerThread]) -> ServerThread:
    return start_mock(record=True, api_key=UPSTREAM_KEY)


def gateway(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, mock: ServerThread, *apis: str
) -> RunningGateway:
    """One model, ``mix``, with a deployment of each of ``apis`` in that order of priority."""
    deployments: list[dict[str, Any]] = []
    for priority, api in enumerate(apis):
        base = mock.url if api == "anthropic" else mock.url + "/v1"
        deployments.append(
            {"provider": api, "base_url": base, "api_key": "env:TEST_UPSTREAM_KEY", "priority": priority, "model": "m"}
        )
    config = parse_config(
        {
            "database": sqlite_url,
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {"rpm": 100}},
            "models": [{"name": "mix", "deployments": deployments}],
        }
    )
    return start_gateway(config)


def test_chat_with_audio_passes_over_a_messages_deployment(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, mock: ServerThread
) -> None:
    gw = gateway(start_gateway, sqlite_url, mock, "anthropic", "openai")
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.create_key()["key"], max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model="mix",
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is said?"}, AUDIO]}],  # type: ignore[list-item]
    )
    assert reply.headers["x-quotagate-deployment"].endswith("(openai/m)")
    assert [r.path for r in mock.app.state.recorded] == ["/v1/chat/completions"]  # never sent to the other


def test_embeddings_pass_over_a_messages_deployment(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, mock: ServerThread
) -> None:
    gw = gateway(start_gateway, sqlite_url, mock, "anthropic", "openai")
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.create_key()["key"], max_retries=0)
    assert client.embeddings.create(model="mix", input="hello").data
    with gw.admin() as admin:
        states = {d["label"]: d for d in admin.get("/admin/deployments").json()["data"]}
    # Passed over, never tried: nothing counts against it.
    passed_over = states["mix#0 (anthropic/m)"]
    assert passed_over["breaker"] == "closed" and passed_over["requests"] == 0 and passed_over["failures"] == 0


def test_a_pdf_or_web_search_passes_over_an_openai_deployment(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, mock: ServerThread
) -> None:
    gw = gateway(start_gateway, sqlite_url, mock, "openai", "anthropic")
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.create_key()["key"], max_retries=0)
    pdf = [{"role": "user", "content": [PDF, {"type": "text", "text": "Summarise it."}]}]
    reply = client.messages.with_raw_response.create(model="mix", max_tokens=20, messages=pdf)  # type: ignore[arg-type]
    assert reply.headers["x-quotagate-deployment"].endswith("(anthropic/m)")
    assert mock.app.state.recorded[-1].body["messages"] == pdf  # whole, as the client sent it
    searched = client.messages.create(
        model="mix",
        max_tokens=20,
        messages=[{"role": "user", "content": "Search the news."}],
        tools=[WEB_SEARCH],  # type: ignore[list-item]
    )
    assert searched.content
    assert all(r.path == "/v1/messages" for r in mock.app.state.recorded)


def test_when_no_deployment_can_take_it_the_request_is_a_400(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, mock: ServerThread
) -> None:
    gw = gateway(start_gateway, sqlite_url, mock, "openai")
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.create_key()["key"], max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model="mix",
            max_tokens=20,
            messages=[{"role": "user", "content": [PDF, {"type": "text", "text": "Summarise it."}]}],  # type: ignore[list-item]
        )
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "document" in refused.value.message
    assert mock.app.state.recorded == type(mock.app.state.recorded)()  # nothing was sent


def test_the_clients_other_key_headers_never_reach_the_provider(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, mock: ServerThread
) -> None:
    """A client that sends its gateway key twice (x-api-key and api-key) and two request ids:
    only anthropic-version and anthropic-beta of its headers go on, never a key of its own."""
    gw = gateway(start_gateway, sqlite_url, mock, "anthropic")
    key = gw.create_key()["key"]
    headers = {
        "x-api-key": key,
        "api-key": key,
        "x-client-request-id": "mine",
        "x-request-id": "trace",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "a,b",
    }
    body = {"model": "mix", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gw.url + "/v1/messages", json=body, headers=headers).status_code == 200
    sent = mock.app.state.recorded[-1].headers
    assert key not in str(sent)
    assert "api-key" not in sent and "x-request-id" not in sent
    assert sent["x-api-key"] == UPSTREAM_KEY and sent["anthropic-beta"] == "a,b"
