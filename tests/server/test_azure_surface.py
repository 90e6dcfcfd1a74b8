"""Clients built for Azure OpenAI (the OpenAI SDK's AzureOpenAI) work against the gateway: the
deployment in the URL is the gateway's model, the key comes in an api-key header."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import AsyncAzureOpenAI, AzureOpenAI

from ..conftest import RunningGateway, ServerThread
from .test_errors import assert_openai_error

API_VERSION = "2024-10-21"
MESSAGES = [{"role": "user", "content": "Say hello in three words."}]


def azure_client(gateway: RunningGateway, key: str, deployment: str | None = None) -> AzureOpenAI:
    return AzureOpenAI(
        azure_endpoint=gateway.url, azure_deployment=deployment, api_key=key, api_version=API_VERSION, max_retries=0
    )


def test_chat_with_the_azure_client(gateway: RunningGateway, api_key: str, mock_upstream: ServerThread) -> None:
    """AzureOpenAI's chat completion is served as the gateway's model named by the deployment."""
    completion = azure_client(gateway, api_key).chat.completions.create(model="house-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content and completion.usage is not None
    assert completion.model == "gpt-4.1"  # house-model's deployment
    sent = mock_upstream.app.state.recorded[-1]
    assert sent.path == "/v1/chat/completions" and sent.body["model"] == "gpt-4.1"


def test_stream_and_embeddings_with_the_azure_client(gateway: RunningGateway, api_key: str) -> None:
    """A streamed chat and an embedding through AzureOpenAI come back whole."""
    client = azure_client(gateway, api_key)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=5))  # type: ignore[arg-type]
    assert len("".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split()) == 5
    embedding = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [len(d.embedding) for d in embedding.data] == [1536, 1536]
    completion = client.completions.create(model="gpt-4o-mini", prompt="Once", max_tokens=3)
    assert completion.usage is not None and completion.usage.completion_tokens == 3


async def test_async_azure_client_streams(gateway: RunningGateway, api_key: str) -> None:
    """AsyncAzureOpenAI works too, streaming and not."""
    client = AsyncAzureOpenAI(azure_endpoint=gateway.url, api_key=api_key, api_version=API_VERSION, max_retries=0)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(p or "" for p in pieces) == completion.choices[0].message.content
    await client.close()


def test_the_urls_deployment_wins_over_the_bodys_model(
    gateway: RunningGateway, api_key: str, mock_upstream: ServerThread
) -> None:
    """With azure_deployment set, the model the URL names serves, whatever the body says, and is sent on."""
    client = azure_client(gateway, api_key, "house-model")
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.model == "gpt-4.1"
    assert mock_upstream.app.state.recorded[-1].body["model"] == "gpt-4.1"


def test_a_body_without_a_model_is_served(gateway: RunningGateway, api_key: str) -> None:
    """Azure's clients may leave the model out of the body: the URL's deployment is the model."""
    response = httpx.post(
        f"{gateway.url}/openai/deployments/gpt-4o-mini/chat/completions",
        params={"api-version": API_VERSION},
        headers={"api-key": api_key},
        json={"messages": MESSAGES, "max_tokens": 2},
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


def test_a_wrong_key_is_an_openai_shaped_401(gateway: RunningGateway) -> None:
    """A key the gateway does not know, sent in api-key, is refused with OpenAI's 401."""
    with pytest.raises(openai.AuthenticationError) as refused:
        azure_client(gateway, "qg-not-a-key").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert_openai_error(refused.value.response, 401, "invalid_api_key")


def test_a_deployment_that_is_no_model_is_404(gateway: RunningGateway, api_key: str) -> None:
    """A deployment name the gateway does not serve is OpenAI's 404 for an unknown model."""
    with pytest.raises(openai.NotFoundError) as refused:
        azure_client(gateway, api_key).chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert_openai_error(refused.value.response, 404, "model_not_found")


def test_other_methods_and_operations(gateway: RunningGateway, api_key: str) -> None:
    """GET on a deployment's operation is a 405; an operation the gateway does not serve is a 404."""
    base = f"{gateway.url}/openai/deployments/gpt-4o-mini"
    wrong_method = httpx.get(base + "/chat/completions", params={"api-version": API_VERSION})
    assert_openai_error(wrong_method, 405)
    assert wrong_method.headers["allow"] == "POST"
    unknown = httpx.post(base + "/nothing/here", headers={"api-key": api_key}, json={})
    assert_openai_error(unknown, 404, "unknown_url")
