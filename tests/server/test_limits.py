"""Limits as clients see them: 429s, quotas, headers, /v1/quota, overrides, waiting, settlement."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import pytest
from openai import OpenAI

from quotagate.tokens import count_chat_tokens, get_encoding

from ..conftest import REDIS_URL, RunningGateway, ServerThread, closed_port, gateway_config
from .test_errors import assert_openai_error

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def post(gw: RunningGateway, key: str, body: dict[str, Any] = CHAT) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=30)


@pytest.fixture(params=["memory", "redis"])
def store_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Gateway tests of limits run with the in-process store and with the real Redis."""
    if request.param == "memory":
        return {}
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return {"redis": REDIS_URL}


def start(
    start_gateway: Callable[..., RunningGateway], mock: ServerThread, sqlite_url: str, **overrides: Any
) -> RunningGateway:
    return start_gateway(gateway_config(sqlite_url, mock.url, **overrides))


def test_rpm_exceeded_gets_429_with_retry_after(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    store_config: dict[str, Any],
) -> None:
    """Past its RPM a key gets 429 rate_limit_exceeded, naming the limit, with Retry-After."""
    gw = start(start_gateway, mock_upstream, sqlite_url, tiers={"free": {"rpm": 3}}, **store_config)
    key = gw.create_key()["key"]
    ok = [post(gw, key) for _ in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3"
    assert re.fullmatch(r"(59\.\d+s|1m0s)", ok[2].headers["x-ratelimit-reset-requests"])
    refused = post(gw, key)
    error = assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_exceeded"
    assert re.fullmatch(
        r"Rate limit reached for requests per minute \(RPM\): limit 3, used 3, requested 1\. Try again in (19\.\d|20\.0)s\.",
        error["message"],
    )
    assert refused.headers["retry-after"] == "20"
    assert len(refused.headers.get_list("x-request-id")) == 1
    # Another key on the same tier has its own budget.
    assert post(gw, gw.create_key()["key"]).status_code == 200


def test_a_tpm_refusal_does_not_consume_rpm(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    store_config: dict[str, Any],
) -> None:
    """A request refused by the key's TPM leaves its RPM untouched."""
    gw = start(start_gateway, mock_upstream, sqlite_url, tiers={"free": {"rpm": 5, "tpm": 100}}, **store_config)
    key = gw.create_key()["key"]
    assert post(gw, key, {**CHAT, "max_tokens": 80}).status_code == 200  # charged ~88, settled to ~18
    refused = post(gw, key, {**CHAT, "max_tokens": 80})  # 18 used + 88 estimated > 100
    error = assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "tokens_rate_limit_exceeded"
    assert "tokens per minute (TPM)" in error["message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "4"


def test_quota_exhausted_is_insufficient_quota(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    store_config: dict[str, Any],
) -> None:
    """An exhausted daily quota answers insufficient_quota and says when it resets."""
    gw = start(
        start_gateway,
        mock_upstream,
        sqlite_url,
        tiers={"free": {"rpd": 2}},
        timezone="Asia/Shanghai",
        **store_config,
    )
    key = gw.create_key()["key"]
    assert [post(gw, key).status_code for _ in range(2)] == [200, 200]
    error = assert_openai_error(post(gw, key), 429, "insufficient_quota")
    assert error["type"] == "insufficient_quota"
    assert "quota of requests per day (RPD): limit 2, used 2, requested 1. It resets at " in error["message"]
    assert "T00:00:00+08:00" in error["message"]


def test_a_request_that_can_never_fit(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A request bigger than a limit's whole capacity says so, without a Retry-After."""
    gw = start(start_gateway, mock_upstream, sqlite_url, tiers={"free": {"tpm": 1000}})
    refused = post(gw, gw.create_key()["key"], {**CHAT, "max_tokens": 5000})
    error = assert_openai_error(refused, 429, "request_too_large")
    assert "can never be admitted" in error["message"] and "limit 1000" in error["message"]
    assert "retry-after" not in refused.headers


def test_headers_on_streams_and_quota_endpoint(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    store_config: dict[str, Any],
) -> None:
    """Streams carry the x-ratelimit headers before the first byte; /v1/quota shows usage."""
    gw = start(
        start_gateway,
        mock_upstream,
        sqlite_url,
        tiers={"free": {"rpm": 10, "tpm": 10000, "tpd": 50000}},
        **store_config,
    )
    key = gw.create_key()["key"]
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**CHAT, "stream": True},
    ) as response:
        assert response.headers["x-ratelimit-remaining-requests"] == "9"
        assert int(response.headers["x-ratelimit-remaining-tokens"]) < 10000
        text = response.read().decode()
    # The client did not ask for usage: the gateway's extra usage chunk is not relayed.
    assert '"usage":{' not in text and text.rstrip().endswith("data: [DONE]")

    quota = httpx.get(gw.v1 + "/quota", headers={"Authorization": f"Bearer {key}"}).json()
    by_name = {entry["name"]: entry for entry in quota["limits"]}
    assert quota["tier"] == "free" and set(by_name) == {
        "requests per minute (RPM)",
        "tokens per minute (TPM)",
        "tokens per day (TPD)",
    }
    prompt = count_chat_tokens(CHAT, get_encoding("o200k_base"))
    assert by_name["tokens per day (TPD)"]["used"] == prompt + 10  # settled on the mock's usage
    assert by_name["requests per minute (RPM)"]["remaining"] == 9
    with gw.admin() as admin:
        key_id = admin.get("/admin/keys").json()["data"][0]["id"]
        from_admin = admin.get(f"/admin/keys/{key_id}/quota").json()["limits"]
        # Rates refill between the two reads; the daily quota does not.
        assert [e["name"] for e in from_admin] == [e["name"] for e in quota["limits"]]
        assert from_admin[2]["used"] == by_name["tokens per day (TPD)"]["used"]


def test_per_key_overrides(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A key's own limits replace its tier's, and can be changed through the admin API."""
    gw = start(start_gateway, mock_upstream, sqlite_url, tiers={"free": {"rpm": 100}})
    created = gw.create_key(limits={"rpm": 2})
    key = created["key"]
    assert created["limits"] == {"rpm": 2}
    assert [post(gw, key).status_code for _ in range(3)] == [200, 200, 429]
    with gw.admin() as admin:
        assert admin.patch(f"/admin/keys/{created['id']}", json={"limits": {"rpm": 5}}).json()["limits"] == {"rpm": 5}
        assert_openai_error(admin.patch(f"/admin/keys/{created['id']}", json={"limits": {"rpx": 5}}), 400)
    assert post(gw, key).status_code == 200


def test_scoped_limits_user_and_global(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    store_config: dict[str, Any],
) -> None:
    """A per-user limit is shared by the user's keys; a model limit by everyone."""
    gw = start(
        start_gateway,
        mock_upstream,
        sqlite_url,
        limits=[
            {"scope": "user", "unit": "requests", "amount": 2, "per": "minute"},
            {
                "scope": "model",
                "unit": "requests",
                "amount": 3,
                "per": "minute",
                "match": {"model": ["house-model"]},
            },
        ],
        **store_config,
    )
    first, second = gw.create_key(user="ann")["key"], gw.create_key(user="ann")["key"]
    assert [post(gw, first).status_code, post(gw, second).status_code, post(gw, first).status_code] == [
        200,
        200,
        429,
    ]
    assert "for user ann" in post(gw, second).json()["error"]["message"]
    house = {**CHAT, "model": "house-model"}
    others = [gw.create_key(user=f"u{i}")["key"] for i in range(4)]
    assert [post(gw, k, house).status_code for k in others] == [200, 200, 200, 429]


def test_waiting_for_capacity(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """With max_wait, a burst over the rate is smoothed out instead of refused."""
    gw = start(
        start_gateway,
        mock_upstream,
        sqlite_url,
        tiers={"free": {"max_wait": 3}},
        limits=[{"scope": "key", "unit": "requests", "amount": 4, "per": "1s", "burst": 1}],
    )
    key = gw.create_key()["key"]

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.post(
                    gw.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    return r.status

            return await asyncio.gather(*(one() for _ in range(8)))

    started = time.monotonic()
    statuses = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert statuses == [200] * 8
    assert 1.5 <= elapsed < 3.5  # 8 requests at 4/s, one at a time


def test_fail_closed_and_open_when_redis_is_down(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """With Redis unreachable: fail-closed answers 503 quickly; fail-open keeps serving."""
    down = f"redis://127.0.0.1:{closed_port()}/0"
    closed = start(start_gateway, mock_upstream, sqlite_url, redis=down, tiers={"free": {"rpm": 10}})
    started = time.monotonic()
    assert_openai_error(post(closed, closed.create_key()["key"]), 503, "limit_store_unavailable")
    assert time.monotonic() - started < 2
    opened = start(
        start_gateway,
        mock_upstream,
        sqlite_url,
        redis=down,
        tiers={"free": {"rpm": 10}},
        limiter={"on_store_failure": "open", "fallback_share": 0.5},
    )
    key = opened.create_key()["key"]
    assert [post(opened, key).status_code for _ in range(6)] == [200] * 5 + [429]


def test_settled_tokens_equal_reported_usage(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    store_config: dict[str, Any],
) -> None:
    """After plain, streamed and abandoned requests, the store holds exactly the tokens used."""
    mock = start_mock(stream_chunk_delay_ms=30, completion_tokens=20)
    gw = start(start_gateway, mock, sqlite_url, tiers={"free": {"tpd": 1_000_000, "tpm": 100_000}}, **store_config)
    key = gw.create_key()["key"]
    client = OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    reported = 0
    for max_tokens in (5, 17, 64):  # 64: more than the mock generates, so settling refunds
        usage = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"plain {max_tokens}"}],
            max_tokens=max_tokens,
        ).usage
        assert usage is not None
        reported += usage.total_tokens
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "streamed, usage asked"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None  # asked for: relayed
    reported += chunks[-1].usage.total_tokens
    silent = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "streamed, usage not asked"}],
            stream=True,
        )
    )
    assert all(c.usage is None for c in silent)
    reported += (
        count_chat_tokens(
            {"messages": [{"role": "user", "content": "streamed, usage not asked"}]},
            get_encoding("o200k_base"),
        )
        + 20
    )

    # Abandoned after 3 content chunks: charged the prompt plus what was generated by then.
    abandoned = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "abandoned"}],
    }
    with httpx.stream(
        "POST", gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=abandoned
    ) as response:
        seen = 0
        for line in response.iter_lines():
            if '"content":" ' in line:
                seen += 1
                if seen == 3:
                    break
    time.sleep(0.5)  # the gateway notices the disconnect and settles
    prompt = count_chat_tokens({"messages": abandoned["messages"]}, get_encoding("o200k_base"))
    used = {
        e["name"]: e["used"]
        for e in httpx.get(gw.v1 + "/quota", headers={"Authorization": f"Bearer {key}"}).json()["limits"]
    }
    abandoned_cost = used["tokens per day (TPD)"] - reported
    assert prompt + 3 <= abandoned_cost <= prompt + 6, abandoned_cost


def test_streams_from_providers_without_stream_usage(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """With stream_usage off, the gateway does not ask for usage and counts the streamed text itself."""
    config = gateway_config(sqlite_url, mock_upstream.url, tiers={"free": {"tpd": 100000}})
    data = config.model_dump()
    data["models"][0]["deployments"][0]["stream_usage"] = False
    gw = start_gateway(type(config).model_validate(data))
    key = gw.create_key()["key"]
    marker = "no stream_options please"
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": marker}]}
    with httpx.stream(
        "POST", gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body
    ) as response:
        response.read()
    sent = [r for r in httpx.get(mock_upstream.url + "/mock/requests").json() if marker in str(r["body"])]
    assert "stream_options" not in sent[0]["body"]
    used = httpx.get(gw.v1 + "/quota", headers={"Authorization": f"Bearer {key}"}).json()["limits"][0]["used"]
    assert used == count_chat_tokens({"messages": body["messages"]}, get_encoding("o200k_base")) + 16


def test_a_stream_holds_its_concurrency_slot_until_it_ends(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    store_config: dict[str, Any],
) -> None:
    """With concurrency 1, a second request is refused while a stream is still running."""
    slow = start_mock(stream_chunk_delay_ms=100, completion_tokens=8)
    gw = start(start_gateway, slow, sqlite_url, tiers={"free": {"concurrency": 1}}, **store_config)
    key = gw.create_key()["key"]
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**CHAT, "stream": True},
    ) as response:
        lines = response.iter_lines()  # kept: a dropped iterator would close the stream
        assert next(lines).startswith("data: ")
        refused = post(gw, key)
        error = assert_openai_error(refused, 429, "rate_limit_exceeded")
        assert error["message"].startswith("Too many concurrent requests: limit 1, in flight 1.")
        for _ in lines:  # to the end of the stream
            pass
    time.sleep(0.2)
    assert post(gw, key).status_code == 200
