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
