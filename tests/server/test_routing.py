"""Routing over several real mock providers: failover, cooldowns, breakers, fallbacks, timeouts."""

from __future__ import annotations

import asyncio
import re
import socketserver
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from quotagate.config import parse_config
from quotagate.upstream import HttpTransport

from ..conftest import RawHttpServer, RunningGateway, ServerThread, closed_port
from .test_errors import assert_openai_error

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def dep(mock: ServerThread | str, **extra: Any) -> dict[str, Any]:
    url = mock if isinstance(mock, str) else mock.url
    return {"provider": "openai-compatible", "base_url": url + "/v1", "model": "gpt-4o-mini", **extra}


def start(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, models: list[dict[str, Any]], **extra: Any
) -> tuple[RunningGateway, str]:
    config = parse_config(
        {
            "database": sqlite_url,
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {}},
            "models": models,
            **extra,
        }
    )
    gw = start_gateway(config)
    return gw, str(gw.create_key()["key"])


def post(gw: RunningGateway, key: str, body: dict[str, Any] = CHAT, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=timeout
    )


def deployments(gw: RunningGateway) -> dict[str, dict[str, Any]]:
    with gw.admin() as admin:
        reply = admin.get("/admin/deployments").json()
    assert "data" in reply, reply
    return {d["label"]: d for d in reply["data"]}


def test_failing_deployment_is_routed_around(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """With one deployment always failing, every request succeeds on the other, and the breaker opens."""
    bad, good = start_mock(rate_500=1.0), start_mock()
    gw, key = start(
        start_gateway,
        sqlite_url,
        [{"name": "gpt-4o-mini", "deployments": [dep(bad), dep(good)]}],
        router={"breaker": {"failures": 3, "cooldown_seconds": 60}},
    )
    served = [post(gw, key) for _ in range(12)]
    assert all(r.status_code == 200 for r in served)
    assert {r.headers["x-quotagate-deployment"] for r in served} == {"gpt-4o-mini#1 (openai-compatible/gpt-4o-mini)"}
    state = deployments(gw)
    assert state["gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)"]["breaker"] == "open"
    assert state["gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)"]["failures"] == 3  # then it was left alone
    assert state["gpt-4o-mini#1 (openai-compatible/gpt-4o-mini)"]["breaker"] == "closed"
    assert bad.app.state.requests_served == 3


def test_provider_429_puts_the_deployment_in_cooldown(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A provider 429 cools its deployment for the Retry-After it named; traffic goes elsewhere."""
    limited, spare = start_mock(rate_429=1.0, retry_after=7), start_mock()
    gw, key = start(
        start_gateway,
        sqlite_url,
        [{"name": "gpt-4o-mini", "deployments": [dep(limited, priority=0), dep(spare, priority=1)]}],
    )
    first = post(gw, key)
    assert first.status_code == 200 and first.headers["x-quotagate-deployment"].startswith("gpt-4o-mini#1 ")
    cooling = deployments(gw)["gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)"]
    assert 6.0 < cooling["cooldown_seconds_left"] <= 7.0
    assert all(post(gw, key).headers["x-quotagate-deployment"].startswith("gpt-4o-mini#1 ") for _ in range(5))
    assert limited.app.state.requests_served == 1  # not asked again while cooling down


def test_priorities(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Lower-priority deployments serve only when the higher ones are unavailable; weights split traffic."""
    a, b, backup = start_mock(), start_mock(), start_mock()
    gw, key = start(
        start_gateway,
        sqlite_url,
        [
            {
                "name": "gpt-4o-mini",
                "deployments": [dep(a, weight=3), dep(b, weight=1), dep(backup, priority=1)],
            }
        ],
    )
    for _ in range(80):
        assert post(gw, key).status_code == 200
    served_a, served_b = a.app.state.requests_served, b.app.state.requests_served
    assert backup.app.state.requests_served == 0 and served_a + served_b == 80
    assert 45 <= served_a <= 75  # about three in four


def test_model_fallback_chain(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """When all of a model's deployments fail, the next model in its chain serves, and says so."""
    broken, other = start_mock(rate_500=1.0), start_mock()
    gw, key = start(
        start_gateway,
        sqlite_url,
        [
            {"name": "gpt-4o-mini", "deployments": [dep(broken)], "fallbacks": ["backup-model"]},
            {"name": "backup-model", "deployments": [dep(other, model="gpt-4.1")]},
        ],
        router={"max_attempts": 4},
    )
    response = post(gw, key)
    assert response.status_code == 200
    assert response.json()["model"] == "gpt-4.1"
    assert response.headers["x-quotagate-deployment"] == "backup-model#0 (openai-compatible/gpt-4.1)"


def test_context_window_fallback(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A request too long for the model goes to its long-context model instead of failing upstream."""
    short, long_ = start_mock(), start_mock()
    gw, key = start(
        start_gateway,
        sqlite_url,
        [
            {
                "name": "gpt-4o-mini",
                "deployments": [dep(short)],
                "context_window": 200,
                "context_window_fallback": "long-context",
            },
            {"name": "long-context", "deployments": [dep(long_, model="gemini-2.5-flash")]},
        ],
    )
    assert post(gw, key).headers["x-quotagate-deployment"].startswith("gpt-4o-mini#0 ")
    long_body = {**CHAT, "messages": [{"role": "user", "content": "word " * 400}]}
    response = post(gw, key, long_body)
    assert response.status_code == 200 and response.json()["model"] == "gemini-2.5-flash"
    assert short.app.state.requests_served == 1


def test_errors_retrying_cannot_fix_return_at_once(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A provider 400 is returned after one attempt, with its message; no other deployment is tried."""
    strict = start_mock(api_key="sk-right-key-000000")
    other = start_mock()
    gw, key = start(
        start_gateway,
        sqlite_url,
        [{"name": "gpt-4o-mini", "deployments": [dep(strict, priority=0), dep(other, priority=1)]}],
    )
    bad = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    # The mock answers 401 to the gateway's (wrong) upstream key: the client sees a 502, once.
    response = post(gw, key, bad)
    assert_openai_error(response, 502, "upstream_auth_error")
    assert strict.app.state.requests_served == 0 and other.app.state.requests_served == 0


def test_hanging_deployment_times_out_and_fails_over(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A deployment that never answers is abandoned after its first-byte timeout; another serves."""
    hanging, fine = start_mock(rate_hang=1.0), start_mock()
    gw, key = start(
        start_gateway,
        sqlite_url,
        [
            {
                "name": "gpt-4o-mini",
                "deployments": [dep(hanging, first_byte_timeout=0.3), dep(fine, priority=1)],
            }
        ],
    )
    started = time.monotonic()
    response = post(gw, key)
    assert response.status_code == 200 and response.headers["x-quotagate-deployment"].startswith("gpt-4o-mini#1 ")
    assert time.monotonic() - started < 2.0


def test_retries_back_off_and_honour_retry_after(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """With a single deployment, a 429 with Retry-After is waited out and the retry succeeds."""
    mock = start_mock(fail_first=1, retry_after=0.5)
    gw, key = start(start_gateway, sqlite_url, [{"name": "gpt-4o-mini", "deployments": [dep(mock)]}])
    started = time.monotonic()
    response = post(gw, key)
    assert response.status_code == 200
    assert 0.5 <= time.monotonic() - started < 3.0
    assert mock.app.state.requests_served == 2


def test_gateway_429_instead_of_the_providers(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Past a deployment's RPM and the router's wait the gateway answers its own 429; the provider never sees the excess."""
    mock = start_mock(rpm=10, rate_window=1.0)
    gw, key = start(
        start_gateway,
        sqlite_url,
        [{"name": "gpt-4o-mini", "deployments": [dep(mock, rpm=60)]}],  # paced: 1/s
        router={"max_queue_wait": 0},
    )
    statuses = [post(gw, key).status_code for _ in range(3)]
    assert statuses == [200, 429, 429]
    refused = post(gw, key)
    assert "provider limits" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) >= 1
    assert mock.app.state.rate_limited == 0 and mock.app.state.requests_served == 1


def test_offered_3x_a_deployments_rpm_causes_no_provider_429(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Offered three times what a deployment takes, with waiting allowed, the provider sees no excess."""
    mock = start_mock(rpm=10, rate_window=1.0)  # the provider allows 10 in any rolling second
    # A provider that strict is what burst 1 is for: the gateway sends one every 1/9 s.
    config = {"name": "gpt-4o-mini", "deployments": [dep(mock, rpm=540, burst=1)]}
    gw, key = start(start_gateway, sqlite_url, [config], tiers={"free": {"max_wait": 10}})

    async def offer() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(delay: float) -> int:
                await asyncio.sleep(delay)
                async with session.post(
                    gw.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    return r.status

            return await asyncio.gather(*(one(i / 27.0) for i in range(54)))  # 27/s for 2 s

    statuses = asyncio.run(offer())
    assert mock.app.state.rate_limited == 0
    assert statuses.count(200) == mock.app.state.requests_served
    assert statuses.count(200) >= 30


def test_client_disconnect_cancels_the_upstream_call(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A client that hangs up releases its concurrency slot at once: the upstream call was cancelled."""
    slow = start_mock(latency_ms=3000)
    gw, key = start(
        start_gateway,
        sqlite_url,
        [{"name": "gpt-4o-mini", "deployments": [dep(slow)]}],
        tiers={"free": {"concurrency": 1}},
    )
    with pytest.raises(httpx.ReadTimeout):
        post(gw, key, timeout=0.3)
    time.sleep(0.2)
    started = time.monotonic()
    second = post(gw, key)
    assert second.status_code == 200  # the slot was free, not held by the abandoned call
    assert time.monotonic() - started >= 2.5


def test_all_deployments_down_is_an_upstream_error(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str
) -> None:
    """With nothing reachable, the client gets 502 after the allowed attempts, quickly."""
    gw, key = start(
        start_gateway,
        sqlite_url,
        [
            {
                "name": "gpt-4o-mini",
                "deployments": [
                    dep(f"http://127.0.0.1:{closed_port()}"),
                    dep(f"http://127.0.0.1:{closed_port()}"),
                ],
            }
        ],
    )
    started = time.monotonic()
    assert_openai_error(post(gw, key), 502, "bad_gateway")
    assert time.monotonic() - started < 5


def test_clients_hanging_up_do_not_open_the_breaker(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Streams abandoned by their clients midway say nothing about the deployment: its breaker stays closed."""
    slow = start_mock(stream_chunk_delay_ms=200, completion_tokens=10)
    gw, key = start(
        start_gateway,
        sqlite_url,
        [{"name": "gpt-4o-mini", "deployments": [dep(slow)]}],
        router={"breaker": {"failures": 2}},
    )
    for _ in range(4):
        with httpx.stream(
            "POST",
            gw.v1 + "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={**CHAT, "stream": True},
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        # leaving the block hangs up mid-stream
    time.sleep(0.5)
    state = deployments(gw)["gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)"]
    assert state["breaker"] == "closed" and state["failures"] == 0 and state["in_flight"] == 0
    assert post(gw, key).status_code == 200


class DroppingUpstream(RawHttpServer):
    """A real HTTP/1.1 upstream on 127.0.0.1 that closes the connection, without a byte of
    answer, on a request whose body holds ``poison`` (as a provider's front end does with a
    request it cannot parse), and answers every other one with a small chat completion."""

    ANSWER = orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
        }
    )

    def __init__(self, poison: bytes) -> None:
        self.poisoned = 0
        upstream = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = self.rfile.readline()
                        if not line:
                            return
                        head += line
                    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                    if poison in self.rfile.read(length):
                        upstream.poisoned += 1
                        return  # the connection is closed unanswered
                    self.wfile.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(upstream.ANSWER), upstream.ANSWER)
                    )

        super().__init__(Handler)


@pytest.mark.parametrize("fault", ["500", "dropped"])
@pytest.mark.parametrize("count", [1, 2], ids=["one deployment", "two deployments"])
def test_one_tenants_bad_requests_do_not_open_the_breaker_for_others(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    fault: str,
    count: int,
) -> None:
    """Requests that break every deployment they reach (a 500, or the connection closed, for
    their body alone) fail for their tenant but count against no deployment: another tenant's
    good requests meanwhile are all served and every breaker stays closed."""
    if fault == "500":
        mocks = [start_mock(poison="BREAK-ME") for _ in range(count)]
        urls = [mock.url for mock in mocks]
    else:
        droppers = [DroppingUpstream(b"BREAK-ME") for _ in range(count)]
        urls = [dropper.url for dropper in droppers]
    try:
        gw, good_key = start(
            start_gateway,
            sqlite_url,
            [{"name": "gpt-4o-mini", "deployments": [dep(url) for url in urls]}],
            router={"breaker": {"failures": 2, "cooldown_seconds": 60}, "backoff_base": 0.01},
        )
        bad_key = str(gw.create_key(user="mallory")["key"])
        bad = {**CHAT, "messages": [{"role": "user", "content": "BREAK-ME"}]}
        good, refused = [], []
        for _ in range(6):
            good.append(post(gw, good_key).status_code)
            refused.append(post(gw, bad_key, bad).status_code)
        good += [post(gw, good_key).status_code for _ in range(5)]
        assert good == [200] * 11
        assert set(refused) == {502}
        reached = sum(m.app.state.poisoned for m in mocks) if fault == "500" else sum(d.poisoned for d in droppers)
        assert reached >= 6  # the bad requests did reach the deployments
        for state in deployments(gw).values():
            assert (state["breaker"], state["failures"]) == ("closed", 0)
    finally:
        if fault != "500":
            for dropper in droppers:
                dropper.close()


def test_a_deployment_that_answers_no_one_still_opens_its_breaker(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Failures that may be the request's still count when the deployment answers nobody: a
    lone deployment failing every request opens its breaker."""
    broken = start_mock(rate_500=1.0)
    gw, key = start(
        start_gateway,
        sqlite_url,
        [{"name": "gpt-4o-mini", "deployments": [dep(broken)]}],
        router={"breaker": {"failures": 3, "cooldown_seconds": 60}, "backoff_base": 0.01},
    )
    assert [post(gw, key).status_code for _ in range(3)] == [502, 429, 429]
    state = deployments(gw)["gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)"]
    assert state["breaker"] == "open" and state["failures"] == 3


class FailingUpstream(RawHttpServer):
    """A real HTTP/1.1 upstream on 127.0.0.1 that answers every request with ``status`` and an
    OpenAI-shaped error (a provider that is down), counting the requests it was sent."""

    def __init__(self, status: int) -> None:
        self.requests = 0
        upstream = self
        answer = orjson.dumps({"error": {"message": "The service is unavailable.", "type": "server_error"}})
        head = b"HTTP/1.1 %d Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    request_head = b""
                    while not request_head.endswith(b"\r\n\r\n"):
                        line = self.rfile.readline()
                        if not line:
                            return
                        request_head += line
                    found = re.search(rb"(?i)content-length: *(\d+)", request_head)
                    self.rfile.read(int(found.group(1)) if found else 0)
                    upstream.requests += 1
                    self.wfile.write(head % (status, len(answer)) + answer)

        super().__init__(Handler)


def _until_refused(gw: RunningGateway, key: str) -> list[int]:
    """The statuses of requests sent one after another until the gateway's own 429 (at most 6)."""
    statuses: list[int] = []
    while len(statuses) < 6 and 429 not in statuses:
        statuses.append(post(gw, key).status_code)
    return statuses


def _assert_left_alone(gw: RunningGateway, key: str, asked: Callable[[], int]) -> None:
    """Every breaker is open, and the gateway answers at once without asking any deployment."""
    for state in deployments(gw).values():
        assert state["breaker"] == "open", state
    before = asked()
    started = time.monotonic()
    assert [post(gw, key).status_code for _ in range(5)] == [429] * 5
    assert time.monotonic() - started < 2.5
    assert asked() == before


def test_two_deployments_of_a_provider_that_is_down_open_their_breakers(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str
) -> None:
    """Two deployments that answer 503 to every request (their provider is down) count it at
    once, though they fail alike: both breakers open, and requests stop trying them."""
    down = [FailingUpstream(503) for _ in range(2)]
    try:
        gw, key = start(
            start_gateway,
            sqlite_url,
            [{"name": "gpt-4o-mini", "deployments": [dep(upstream.url) for upstream in down]}],
            router={"breaker": {"failures": 3, "cooldown_seconds": 60}, "backoff_base": 0.01},
        )
        statuses = _until_refused(gw, key)
        assert statuses[0] == 502 and statuses[-1] == 429 and len(statuses) <= 4, statuses
        assert sum(upstream.requests for upstream in down) <= 3 * (len(statuses) - 1)
        _assert_left_alone(gw, key, lambda: sum(upstream.requests for upstream in down))
    finally:
        for upstream in down:
            upstream.close()


def test_two_deployments_that_answer_no_one_open_their_breakers(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A 500 on two deployments is not the request's when neither answers anyone: both breakers
    open, and requests stop trying them."""
    broken = [start_mock(rate_500=1.0) for _ in range(2)]
    gw, key = start(
        start_gateway,
        sqlite_url,
        [{"name": "gpt-4o-mini", "deployments": [dep(mock) for mock in broken]}],
        router={"breaker": {"failures": 3, "cooldown_seconds": 60}, "backoff_base": 0.01},
    )
    statuses = _until_refused(gw, key)
    assert statuses[0] == 502 and statuses[-1] == 429 and len(statuses) <= 4, statuses
    _assert_left_alone(gw, key, lambda: sum(mock.app.state.requests_served for mock in broken))


def test_failures_of_a_request_whose_client_leaves_during_the_backoff_still_count(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A 500 held for its verdict is judged when the client leaves while the gateway waits to
    retry: the lone deployment, answering no one, opens its breaker."""
    broken = start_mock(rate_500=1.0)
    gw, key = start(
        start_gateway,
        sqlite_url,
        [{"name": "gpt-4o-mini", "deployments": [dep(broken)]}],
        router={"breaker": {"failures": 1, "cooldown_seconds": 60}, "backoff_base": 30, "backoff_cap": 30},
    )
    with pytest.raises(httpx.ReadTimeout):
        post(gw, key, timeout=0.5)  # leaves during the backoff (up to 30 s)
    time.sleep(0.3)
    state = deployments(gw)["gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)"]
    # (A backoff under 0.5 s, one time in 60, lets a second attempt fail before the client leaves.)
    assert state["breaker"] == "open" and state["failures"] >= 1 and state["in_flight"] == 0


def test_an_answer_too_large_to_hold_does_not_open_the_breaker(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """An answer over the gateway's limit fails its request (502) but is the request's doing (it
    asked for that much): the deployment's breaker stays closed and it serves the next request."""
    mock = start_mock(completion_tokens=200_000)  # about 1 MB, when max_tokens allows
    config = parse_config(
        {
            "database": sqlite_url,
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {}},
            "models": [{"name": "gpt-4o-mini", "deployments": [dep(mock)]}],
            "router": {"breaker": {"failures": 1, "cooldown_seconds": 60}},
        }
    )
    gw = start_gateway(config, transport=HttpTransport(max_response_bytes=300 * 1024))
    key = str(gw.create_key()["key"])
    assert post(gw, key, {**CHAT, "max_tokens": 200_000}).status_code == 502
    state = deployments(gw)["gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)"]
    assert (state["breaker"], state["failures"], state["in_flight"]) == ("closed", 0, 0)
    assert post(gw, key).status_code == 200
