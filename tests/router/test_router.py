"""Routing decisions of the Router, through its public interface, with a scripted transport.

No network and no wall-clock waiting: deployments answer from a script, the router's sleeps are
recorded and advance a fake clock, and the limiter and deployment states run in process on the
same clock.
"""

from __future__ import annotations

import asyncio
import random
import types
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from quotagate.config import parse_config
from quotagate.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from quotagate.limits import InProcessStore, Limiter
from quotagate.router import (
    DeploymentStates,
    Exchange,
    MemoryStateStore,
    Router,
    RouteRequest,
    _attempt,
    _capacity,
    _router,
)
from quotagate.tokens import Estimate
from quotagate.upstream import DeploymentTarget, ModelRoutes, UpstreamBodies, UpstreamRequest, UpstreamResponse
from quotagate.upstream._http import ConnectFailed, ConnectTimeout, Disconnected, ReadTimeout

SHORT = Estimate(10, 10)


class Clock:
    """Seconds that pass only when a test (or the router's sleep) says so. Starts at a whole
    number so that cooldowns kept in milliseconds by the state store come out exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Response:
    def __init__(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers: Mapping[str, str] = {"content-type": "application/json", **(headers or {})}
        self.closed = False

    async def read(self) -> bytes:
        return self.body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    def close(self) -> None:
        self.closed = True


# One step of a deployment's script: what it does with one request.
Step = Callable[[UpstreamRequest, Clock], UpstreamResponse]


def ok(content: str = "hello") -> Step:
    body = orjson.dumps({"id": "x", "choices": [{"message": {"role": "assistant", "content": content}}]})
    return lambda request, clock: Response(200, body)


def status(code: int, headers: Mapping[str, str] | None = None) -> Step:
    body = orjson.dumps({"error": {"message": f"provider says {code}", "type": "some_error"}})
    return lambda request, clock: Response(code, body, headers)


# The upstream errors the gateway's own transport (upstream/_transport.py) raises, with the
# client errors they come from as their cause.
def connect_failure() -> Step:
    def step(request: UpstreamRequest, clock: Clock) -> UpstreamResponse:
        raise UpstreamError(f"Upstream {request.label} is unreachable: refused.") from ConnectFailed("refused")

    return step


def connect_timeout() -> Step:
    def step(request: UpstreamRequest, clock: Clock) -> UpstreamResponse:
        raise UpstreamTimeoutError(f"Upstream {request.label} could not be reached.") from ConnectTimeout()

    return step


def read_timeout(after: float = 0.0) -> Step:
    """No answer: the first-byte timeout, ``after`` seconds into the attempt."""

    def step(request: UpstreamRequest, clock: Clock) -> UpstreamResponse:
        clock.advance(after)
        raise UpstreamTimeoutError(f"Upstream {request.label} did not answer.") from ReadTimeout()

    return step


def disconnect() -> Step:
    def step(request: UpstreamRequest, clock: Clock) -> UpstreamResponse:
        raise UpstreamError(f"Upstream {request.label} is unreachable: closed.") from Disconnected(answered=False)

    return step


def host(url: str) -> str:
    return (urlsplit(url).hostname or "").split(".")[0]


def served_by(exchange: Exchange) -> str:
    return host(exchange.target.base_url)


class ScriptedTransport:
    """Each deployment (named by its host, "a" for http://a.test) answers by its script: a list
    of steps taken in turn, the last one repeating."""

    def __init__(self, clock: Clock, script: dict[str, list[Step]]) -> None:
        self.clock = clock
        self.script = {name: list(steps) for name, steps in script.items()}
        self.sent: list[str] = []

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        name = host(request.url)
        self.sent.append(name)
        steps = self.script[name]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        return step(request, self.clock)

    async def aclose(self) -> None:
        pass


class HighestRng(random.Random):
    """Full jitter at its ceiling, so that a backoff's length is known."""

    def uniform(self, a: float, b: float) -> float:
        return b


def deployment(name: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai-compatible", "base_url": f"http://{name}.test/v1", "model": name, **extra}


class Harness:
    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        models: list[dict[str, Any]],
        script: dict[str, list[Step]],
        **router: Any,
    ) -> None:
        self.clock = Clock()
        # The router's layers read time.monotonic() (the retry loop for its deadline, capacity for
        # cooldowns and the wait line, an attempt for its start): they read this clock.
        for module in (_router, _capacity, _attempt):
            monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=self.clock))
        self.config = parse_config({"models": models, "router": router})
        self.routes = ModelRoutes(self.config)
        self.transport = ScriptedTransport(self.clock, script)
        self.sleeps: list[float] = []
        self.switched: list[str] = []
        self.refuse: set[str] = set()  # models whose tenant limits refuse the request
        self.states = DeploymentStates(MemoryStateStore(self.clock), self.config.router.breaker, monotonic=self.clock)
        limiter = Limiter(InProcessStore(self.clock), clock=self.clock, sleep=self.sleep)
        self.router = Router(
            self.config, self.routes, self.transport, limiter, self.states, rng=HighestRng(0), sleep=self.sleep
        )

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)

    async def move_to(self, name: str) -> bool:
        """The tenant's charge moving to a fallback model (the router's TenantCharge)."""
        self.switched.append(name)
        return name not in self.refuse

    def target(self, name: str) -> DeploymentTarget:
        return next(t for t in self.routes.by_id.values() if host(t.base_url) == name)

    async def request(self, model: str = "m", estimate: Estimate = SHORT) -> Exchange:
        """One request as the proxy makes it: the exchange, then finish() once relayed."""
        exchange = await self.router.exchange(
            model,
            RouteRequest(
                "/chat/completions", UpstreamBodies({}, b"{}", model, False, False), False, estimate, 0.0, 0, self
            ),
        )
        await self.router.finish(exchange, True, None)
        return exchange

    async def served(self, count: int, model: str = "m") -> list[str]:
        return [served_by(await self.request(model)) for _ in range(count)]


def one_model(*deployments: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    return [{"name": "m", "deployments": list(deployments), **extra}]


# -- choosing a deployment ----------------------------------------------------------------------


async def test_lower_priority_number_is_tried_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request goes to the best priority group (lowest number) while it is healthy."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=1), deployment("b", priority=0)),
        {"a": [ok()], "b": [ok()]},
    )
    assert await h.served(4) == ["b"] * 4


async def test_equal_weights_alternate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two deployments of equal weight in one group take turns, request by request."""
    h = Harness(monkeypatch, one_model(deployment("a"), deployment("b")), {"a": [ok()], "b": [ok()]})
    served = await h.served(6)
    assert Counter(served) == {"a": 3, "b": 3}
    assert all(first != second for first, second in pairwise(served))


async def test_weights_three_to_one_split_three_to_one_over_each_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights 3:1 give 3:1 over every cycle of four requests, not only on average."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", weight=3), deployment("b", weight=1)),
        {"a": [ok()], "b": [ok()]},
    )
    served = await h.served(12)
    for cycle in range(3):
        assert Counter(served[cycle * 4 : cycle * 4 + 4]) == {"a": 3, "b": 1}


# -- failing over ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(connect_failure, id="connect-failure"),
        pytest.param(connect_timeout, id="connect-timeout"),
        pytest.param(read_timeout, id="first-byte-timeout"),
        pytest.param(disconnect, id="disconnect"),
        pytest.param(lambda: status(500), id="500"),
        pytest.param(lambda: status(502), id="502"),
        pytest.param(lambda: status(503), id="503"),
        pytest.param(lambda: status(504), id="504"),
    ],
)
async def test_a_failed_attempt_moves_to_the_next_deployment_at_once(
    monkeypatch: pytest.MonkeyPatch, failure: Callable[[], Step]
) -> None:
    """A connection error, timeout, disconnect or 5xx is retried on the next deployment, without
    waiting."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [failure()], "b": [ok("from b")]},
    )
    exchange = await h.request()
    assert served_by(exchange) == "b"
    assert orjson.loads(await exchange.response.read())["choices"][0]["message"]["content"] == "from b"
    assert h.transport.sent == ["a", "b"]
    assert exchange.attempts == 2
    assert exchange.tried == [h.target("a").id, h.target("b").id]
    assert h.sleeps == []


async def test_max_attempts_bounds_the_deployments_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    """With max_attempts 2, a third deployment is never tried; the last failure is returned as 502."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1), deployment("c", priority=2)),
        {"a": [status(503)], "b": [status(503)], "c": [ok()]},
        max_attempts=2,
    )
    with pytest.raises(GatewayError) as caught:
        await h.request()
    assert caught.value.status == 502
    assert h.transport.sent == ["a", "b"]


@pytest.mark.parametrize(("provider", "client"), [(400, 400), (401, 502), (403, 502), (404, 404), (422, 422)])
async def test_client_errors_are_returned_at_once(monkeypatch: pytest.MonkeyPatch, provider: int, client: int) -> None:
    """A 400/404/422 is the request's fault and is returned as it came, with no other attempt; a
    provider's 401/403 (the gateway's credentials) becomes a 502, also without retrying."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [status(provider)], "b": [ok()]},
    )
    with pytest.raises(GatewayError) as caught:
        await h.request()
    assert caught.value.status == client
    assert h.transport.sent == ["a"]
    assert h.sleeps == []


# -- provider 429 and cooldowns ------------------------------------------------------------------


async def test_provider_429_cools_its_deployment_down_for_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider 429 with Retry-After: 7 sends this request and the next ones elsewhere until the
    7 seconds are over, then the deployment is used again."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [status(429, {"retry-after": "7"}), ok()], "b": [ok()]},
    )
    assert served_by(await h.request()) == "b"
    assert h.transport.sent == ["a", "b"]
    h.clock.advance(6.5)
    assert served_by(await h.request()) == "b"
    assert h.transport.sent == ["a", "b", "b"]  # a was not asked
    h.clock.advance(1.0)
    assert served_by(await h.request()) == "a"
    assert h.sleeps == []


async def test_provider_429_without_retry_after_cools_down_for_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider 429 that names no wait cools its deployment down for default_cooldown_seconds."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [status(429), ok()], "b": [ok()]},
        default_cooldown_seconds=4,
    )
    assert served_by(await h.request()) == "b"
    h.clock.advance(3.5)
    assert served_by(await h.request()) == "b"
    h.clock.advance(1.0)
    assert served_by(await h.request()) == "a"


async def test_provider_429_does_not_count_towards_the_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Provider 429s are a cooldown, not a failure: they never open the deployment's breaker."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [status(429, {"retry-after": "1"})] * 3 + [ok()], "b": [ok()]},
        breaker={"failures": 2},
    )
    for _ in range(3):
        assert served_by(await h.request()) == "b"
        h.clock.advance(1.0)
    assert served_by(await h.request()) == "a"


# -- the breaker --------------------------------------------------------------------------------


async def test_breaker_opens_after_failures_and_half_opens_after_its_cooldown(monkeypatch: pytest.MonkeyPatch) -> None:
    """After `failures` failures the deployment is skipped; once the breaker's cooldown is over
    one probe goes to it, and a probe that succeeds closes the breaker again."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [status(503), status(503), ok()], "b": [ok()]},
        breaker={"failures": 2, "window_seconds": 60, "cooldown_seconds": 30},
    )
    assert await h.served(2) == ["b", "b"]
    assert h.transport.sent == ["a", "b", "a", "b"]
    h.clock.advance(29.0)
    assert await h.served(1) == ["b"]
    assert h.transport.sent[-1:] == ["b"]  # open: a is not asked
    h.clock.advance(1.5)
    assert await h.served(2) == ["a", "a"]  # the probe, then closed again


async def test_a_failed_probe_opens_the_breaker_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A half-open deployment whose probe fails is skipped for another breaker cooldown."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [connect_failure()], "b": [ok()]},
        breaker={"failures": 1, "cooldown_seconds": 30},
    )
    await h.request()
    h.clock.advance(31.0)
    await h.request()  # the probe fails, b serves
    assert h.transport.sent == ["a", "b", "a", "b"]
    h.clock.advance(29.0)
    await h.request()
    assert h.transport.sent[-1:] == ["b"]


# -- fallbacks ----------------------------------------------------------------------------------


async def test_fallback_model_serves_when_every_deployment_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """When all of a model's deployments fail, its fallback model serves, and the tenant's
    limits are moved to the fallback (TenantCharge.move_to)."""
    h = Harness(
        monkeypatch,
        [
            {"name": "m", "deployments": [deployment("a"), deployment("b")], "fallbacks": ["backup"]},
            {"name": "backup", "deployments": [deployment("z")]},
        ],
        {"a": [status(503)], "b": [connect_failure()], "z": [ok()]},
        max_attempts=3,
    )
    exchange = await h.request()
    assert served_by(exchange) == "z"
    assert exchange.target.model == "backup"
    assert sorted(h.transport.sent[:2]) == ["a", "b"]
    assert h.switched == ["backup"]
    assert h.sleeps == []  # a fallback is better than waiting for the same deployments


async def test_fallback_refused_by_tenant_limits_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fallback whose tenant limits refuse the request is not sent; the last failure is returned."""
    h = Harness(
        monkeypatch,
        [
            {"name": "m", "deployments": [deployment("a")], "fallbacks": ["backup"]},
            {"name": "backup", "deployments": [deployment("z")]},
        ],
        {"a": [status(503)], "z": [ok()]},
    )
    h.refuse.add("backup")
    with pytest.raises(GatewayError) as caught:
        await h.request()
    assert caught.value.status == 502
    assert h.transport.sent == ["a"]


async def test_context_window_fallback_takes_long_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request longer than the model's context window goes to its context_window_fallback;
    a short one stays on the model."""
    h = Harness(
        monkeypatch,
        [
            {
                "name": "m",
                "deployments": [deployment("a")],
                "context_window": 1000,
                "context_window_fallback": "long",
            },
            {"name": "long", "deployments": [deployment("l")]},
        ],
        {"a": [ok()], "l": [ok()]},
    )
    assert served_by(await h.request(estimate=Estimate(900, 200))) == "l"
    assert h.switched == ["long"]
    assert served_by(await h.request(estimate=Estimate(500, 200))) == "a"
    assert h.transport.sent == ["l", "a"]


# -- waiting: backoff, Retry-After, the deadline ------------------------------------------------


async def test_backoff_when_no_other_deployment_is_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no other deployment left, the router sleeps with exponential backoff (full jitter up to
    backoff_base * 2**(attempt-1)) and tries the same deployment again."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a")),
        {"a": [status(503), status(503), ok()]},
        max_attempts=3,
        backoff_base=0.25,
    )
    assert served_by(await h.request()) == "a"
    assert h.transport.sent == ["a", "a", "a"]
    assert h.sleeps == [0.25, 0.5]


async def test_backoff_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """No backoff is longer than backoff_cap."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a")),
        {"a": [status(503)] * 4 + [ok()]},
        max_attempts=5,
        backoff_base=1.0,
        backoff_cap=3.0,
    )
    await h.request()
    assert h.sleeps == [1.0, 2.0, 3.0, 3.0]


async def test_backoff_honours_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider 429 on the only deployment is retried after the Retry-After it named."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a")),
        {"a": [status(429, {"retry-after": "3"}), ok()]},
    )
    assert served_by(await h.request()) == "a"
    assert h.sleeps == [3.0]
    assert h.transport.sent == ["a", "a"]


async def test_retry_after_past_the_deadline_returns_the_429(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Retry-After that would end after deadline_seconds is not slept: the provider's 429 is
    returned at once."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a")),
        {"a": [status(429, {"retry-after": "30"}), ok()]},
        deadline_seconds=10,
    )
    with pytest.raises(GatewayError) as caught:
        await h.request()
    assert caught.value.status == 429
    assert caught.value.headers.get("retry-after") == "30"
    assert h.sleeps == []
    assert h.transport.sent == ["a"]


async def test_deadline_stops_backing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoffs stop once the next one would pass deadline_seconds, whatever max_attempts allows."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a")),
        {"a": [status(503)]},
        max_attempts=10,
        deadline_seconds=1.0,
        backoff_base=0.4,
    )
    with pytest.raises(GatewayError) as caught:
        await h.request()
    assert caught.value.status == 502
    assert h.sleeps == [0.4]  # then 0.8 more would end at 1.2 s, past the deadline
    assert h.transport.sent == ["a", "a"]


async def test_deadline_counts_slow_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time spent in attempts counts against deadline_seconds: no new attempt starts after it."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1), deployment("c", priority=2)),
        {"a": [read_timeout(after=3.0)], "b": [read_timeout(after=3.0)], "c": [ok()]},
        max_attempts=5,
        deadline_seconds=5.0,
    )
    with pytest.raises(GatewayError) as caught:
        await h.request()
    assert caught.value.status == 504
    assert h.transport.sent == ["a", "b"]


async def test_open_breakers_everywhere_answer_capacity_429(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every deployment's breaker open and nothing tried, the gateway answers its own 429
    with a Retry-After instead of sending anything."""
    h = Harness(
        monkeypatch,
        one_model(deployment("a")),
        {"a": [status(503)]},
        max_attempts=1,
        breaker={"failures": 1, "cooldown_seconds": 30},
    )
    with pytest.raises(GatewayError):
        await h.request()
    with pytest.raises(GatewayError) as caught:
        await h.request()
    assert caught.value.status == 429
    assert "retry-after" in caught.value.headers
    assert h.transport.sent == ["a"]
