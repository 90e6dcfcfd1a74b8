"""The official OpenAI SDK works against the gateway by changing base_url only."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from quotagate.tokens import count_chat_tokens, get_encoding

from ..conftest import RunningGateway, ServerThread

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello in three words."},
]


def test_chat_completion_sync(gateway: RunningGateway, api_key: str) -> None:
    """A non-streaming chat completion comes back with the provider's content and usage."""
    client = OpenAI(base_url=gateway.v1, api_key=api_key, max_retries=0)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    expected_prompt = count_chat_tokens({"messages": MESSAGES}, get_encoding("o200k_base"))
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected_prompt
    assert completion.usage.completion_tokens == 16


def test_chat_completion_stream_sync(gateway: RunningGateway, api_key: str) -> None:
    """A streamed chat completion arrives chunk by chunk, with the usage chunk when asked for."""
    client = OpenAI(base_url=gateway.v1, api_key=api_key, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        max_tokens=5,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


async def test_chat_completion_async_and_stream(gateway: RunningGateway, api_key: str) -> None:
    """The async client works too, streaming and not."""
    client = AsyncOpenAI(base_url=gateway.v1, api_key=api_key, max_retries=0)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(p or "" for p in pieces) == completion.choices[0].message.content
    await client.close()


def test_legacy_completions(gateway: RunningGateway, api_key: str) -> None:
    """POST /v1/completions, streaming and not."""
    client = OpenAI(base_url=gateway.v1, api_key=api_key, max_retries=0)
    completion = client.completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=4)
    assert completion.object == "text_completion"
    assert completion.usage is not None and completion.usage.prompt_tokens == 4
    assert completion.usage.completion_tokens == 4
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="gpt-4o-mini", prompt="Hi", max_tokens=3, stream=True)
    )
    assert streamed == completion.choices[0].text[: len(streamed)] and len(streamed.split()) == 3


async def test_embeddings_float_and_base64(gateway: RunningGateway, api_key: str) -> None:
    """Embeddings come back in the SDK's default base64 format and as floats, equal per input."""
    client = AsyncOpenAI(base_url=gateway.v1, api_key=api_key, max_retries=0)
    result = await client.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
    assert [len(d.embedding) for d in result.data] == [1536, 1536]
    assert result.usage.prompt_tokens == 3
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input="hello world", encoding_format="float", dimensions=8
    )
    assert len(floats.data[0].embedding) == 8
    again = await client.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert again.data[0].embedding == result.data[0].embedding
    await client.close()


def test_models_lists_only_what_the_key_may_use(gateway: RunningGateway) -> None:
    """GET /v1/models shows the key's allowed models; retrieving another one is refused."""
    key = gateway.create_key(models=["gpt-4o-mini", "house-model"])["key"]
    client = OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    assert sorted(m.id for m in client.models.list()) == ["gpt-4o-mini", "house-model"]
    assert client.models.retrieve("house-model").id == "house-model"
    with pytest.raises(openai.PermissionDeniedError):
        client.models.retrieve("text-embedding-3-small")
    unrestricted = gateway.create_key()["key"]
    everything = OpenAI(base_url=gateway.v1, api_key=unrestricted).models.list()
    assert sorted(m.id for m in everything) == ["gpt-4o-mini", "house-model", "text-embedding-3-small"]


def test_model_name_is_mapped_and_keys_stay_where_they_belong(
    gateway: RunningGateway, api_key: str, mock_upstream: ServerThread
) -> None:
    """The provider gets its own model name and the upstream key; never the gateway key."""
    client = OpenAI(base_url=gateway.v1, api_key=api_key, max_retries=0)
    marker = "mapping-check-" + api_key[-6:]
    completion = client.chat.completions.create(
        model="house-model", messages=[{"role": "user", "content": marker}], temperature=0.25, user="u-1"
    )
    assert completion.model == "gpt-4.1"
    recorded = [r for r in httpx.get(mock_upstream.url + "/mock/requests").json() if marker in str(r["body"])]
    assert len(recorded) == 1
    sent = recorded[0]
    # Everything but the model name passes through unchanged.
    assert sent["body"] == {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": marker}],
        "temperature": 0.25,
        "user": "u-1",
    }
    assert sent["headers"]["authorization"] == "Bearer sk-upstream-test-key-123456"
    assert api_key not in str(sent["headers"])
    assert "x-api-key" not in sent["headers"]


def test_x_api_key_header_is_accepted(gateway: RunningGateway, api_key: str) -> None:
    """Clients may send the key as x-api-key instead of a Bearer token."""
    response = httpx.post(
        gateway.v1 + "/chat/completions",
        headers={"x-api-key": api_key},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
