"""The mock provider speaks the OpenAI API with real usage and injects faults on demand."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson

from quotagate.tokens import count_chat_tokens, get_encoding

from ..conftest import ServerThread

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count my tokens, please."}]}


def test_usage_is_counted_from_the_request(start_mock: Callable[..., ServerThread]) -> None:
    """prompt_tokens is the request's real token count; completion_tokens what it generated."""
    mock = start_mock(completion_tokens=12)
    data = httpx.post(mock.url + "/v1/chat/completions", json=BODY).json()
    assert data["usage"]["prompt_tokens"] == count_chat_tokens(BODY, get_encoding("o200k_base"))
    assert (
        data["usage"]["completion_tokens"]
        == 12
        == len(get_encoding("o200k_base").encode(data["choices"][0]["message"]["content"]))
    )
    capped = httpx.post(mock.url + "/v1/chat/completions", json={**BODY, "max_tokens": 5}).json()
    assert capped["usage"]["completion_tokens"] == 5 and capped["choices"][0]["finish_reason"] == "length"


def test_stream_usage_chunk_only_when_asked(start_mock: Callable[..., ServerThread]) -> None:
    """The final usage chunk is sent when stream_options.include_usage is true, and only then."""
    mock = start_mock(completion_tokens=4)

    def events(body: dict[str, object]) -> list[object]:
        text = httpx.post(mock.url + "/v1/chat/completions", json=body).text
        payloads = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
        assert payloads[-1] == "[DONE]"
        return [orjson.loads(p) for p in payloads[:-1]]

    plain = events({**BODY, "stream": True})
    assert all("usage" not in e for e in plain)  # type: ignore[operator]
    with_usage = events({**BODY, "stream": True, "stream_options": {"include_usage": True}})
    last = with_usage[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4  # type: ignore[index]
    assert len(with_usage) == len(plain) + 1


def test_faults(start_mock: Callable[..., ServerThread]) -> None:
    """Each fault does what it says: 429 with Retry-After, 500, and a hang until timeout."""
    assert (
        httpx.post(start_mock(rate_429=1.0, retry_after=3).url + "/v1/chat/completions", json=BODY).headers[
            "retry-after"
        ]
        == "3"
    )
    assert httpx.post(start_mock(rate_500=1.0).url + "/v1/chat/completions", json=BODY).status_code == 500
    hanging = start_mock(rate_hang=1.0)
    try:
        httpx.post(hanging.url + "/v1/chat/completions", json=BODY, timeout=0.3)
        raise AssertionError("expected a timeout")
    except httpx.ReadTimeout:
        pass


def test_fault_rates_are_shares(start_mock: Callable[..., ServerThread]) -> None:
    """A 30 % 429 rate gives about 30 % 429s."""
    mock = start_mock(rate_429=0.3, seed=7)
    with httpx.Client(base_url=mock.url) as client:
        statuses = [client.post("/v1/chat/completions", json=BODY).status_code for _ in range(400)]
    share = statuses.count(429) / len(statuses)
    assert 0.22 < share < 0.38
    assert set(statuses) == {200, 429}


def test_embeddings_dimensions_are_validated_like_openai(start_mock: Callable[..., ServerThread]) -> None:
    """dimensions outside 1..the model's size, or not an integer, and over 2048 inputs are a 400
    naming the parameter, answered at once (2**63 used to spin the mock at 100 % CPU)."""
    mock = start_mock(embedding_dimensions=256)
    url = mock.url + "/v1/embeddings"
    body = {"model": "text-embedding-3-small", "input": "hi"}
    for dimensions, code in [
        (257, "integer_above_max_value"),  # first: the old mock answers it (and never 2**63)
        (2**63, "integer_above_max_value"),
        (0, "integer_below_min_value"),
        (-1, "integer_below_min_value"),
        (True, "invalid_type"),
        ("8", "invalid_type"),
        (8.5, "invalid_type"),
    ]:
        response = httpx.post(url, json={**body, "dimensions": dimensions}, timeout=5)
        assert response.status_code == 400, dimensions
        error = response.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "dimensions", code)
    many = httpx.post(url, json={**body, "input": ["x"] * 2049}, timeout=5)
    assert many.status_code == 400 and many.json()["error"]["param"] == "input"
    served = httpx.post(url, json={**body, "dimensions": 256}, timeout=5).json()
    assert len(served["data"][0]["embedding"]) == 256
    assert len(httpx.post(url, json=body, timeout=5).json()["data"][0]["embedding"]) == 256
