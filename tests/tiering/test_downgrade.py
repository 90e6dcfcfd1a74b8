"""Downgrades (``on_limit``): a request its tenant's limits refuse on the model it asked for is
served by a cheaper model instead, said so in ``x-quotagate-route`` and in the ledger, and never
where the cheaper model's own limits refuse too, a limit it shares refuses, or the client said no."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from quotagate.config import Config

from ..cache.test_gateway_cache import ledger
from ..conftest import REDIS_URL, RunningGateway, ServerThread, gateway_config

CLAUDE, GEMINI, DEEPSEEK = "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"
# USD per million prompt and completion tokens (accounting/_pricing.py).
PRICES = {CLAUDE: (3.00, 15.00), GEMINI: (0.30, 2.50)}
HELLO: Any = [{"role": "user", "content": "hello"}]
OFF = {"x-quotagate-downgrade": "off"}


def cost(model: str, prompt: int, completion: int) -> float:
    per_prompt, per_completion = PRICES[model]
    return (prompt * per_prompt + completion * per_completion) / 1e6


def route(asked: str, served: str, why: str) -> str:
    return f"{asked} -> {served} (downgrade: {why})"


def on_key(unit: str, model: str) -> str:
    """The label of a key+model limit, as a refusal and a downgrade name it."""
    return f"{unit} per {'day' if unit == 'USD' else 'minute'} for model {model} on this key"


def limit(
    model: str, amount: float, unit: str = "requests", per: str = "minute", scope: str = "key+model"
) -> dict[str, Any]:
    return {"scope": scope, "unit": unit, "amount": amount, "per": per, "match": {"model": [model]}}


def tiering_config(
    sqlite_url: str,
    upstream: str | Mapping[str, str],
    *,
    tier: dict[str, Any] | None = None,
    limits: list[dict[str, Any]] | None = None,
    on_limit: Mapping[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> Config:
    """Claude, Gemini and DeepSeek served by ``upstream`` (one for all, or one per model), with
    the tier ``free`` (default: ``on_limit`` to Gemini, no limits of its own) and models'
    ``on_limit``."""

    def served(name: str) -> dict[str, Any]:
        url = upstream if isinstance(upstream, str) else upstream[name]
        deployment = {"provider": "openai-compatible", "base_url": url + "/v1", "api_key": "env:TEST_UPSTREAM_KEY"}
        model: dict[str, Any] = {"name": name, "deployments": [{**deployment, "model": name}]}
        if on_limit is not None and name in on_limit:
            model["on_limit"] = on_limit[name]
        return model

    overrides.setdefault("ledger", {"flush_seconds": 0.05})  # tests read rows as they go
    return gateway_config(
        sqlite_url,
        "http://unused",
        models=[served(CLAUDE), served(GEMINI), served(DEEPSEEK)],
        tiers={"free": tier if tier is not None else {"on_limit": {"downgrade": GEMINI}}},
        limits=limits or [],
        **overrides,
    )


def client_for(gateway: RunningGateway, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=gateway.v1, api_key=key or gateway.create_key()["key"], max_retries=0)


def ask(client: OpenAI, model: str = CLAUDE, **options: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model=model, messages=HELLO, **options)


def refused(client: OpenAI, model: str = CLAUDE, **options: Any) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, model, **options)
    return caught.value


def message(error: openai.APIStatusError) -> str:
    """The error's message as the gateway wrote it (the SDK's own adds a prefix)."""
    assert isinstance(error.body, dict)
    return str(error.body["message"])


def test_past_a_models_rpm_the_cheaper_model_serves(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Past Claude's 2 requests a minute the 3rd is sent to Gemini, not refused, says why, and its
    ledger row costs Gemini's price with Claude's as the baseline."""
    gateway = start_gateway(tiering_config(sqlite_url, mock_upstream.url, limits=[limit(CLAUDE, 2)]))
    client = client_for(gateway)
    answers = [ask(client) for _ in range(3)]
    assert [answer.parse().model for answer in answers] == [CLAUDE, CLAUDE, GEMINI]
    assert mock_upstream.app.state.recorded[-1].body["model"] == GEMINI  # the provider was asked for Gemini
    assert [answer.headers.get("x-quotagate-route") for answer in answers] == [
        None,
        None,
        route(CLAUDE, GEMINI, on_key("requests", CLAUDE)),
    ]
    rows = ledger(sqlite_url, 3)
    assert [(r["model_requested"], r["model_served"], r["downgraded_from"], r["status"]) for r in rows] == [
        (CLAUDE, CLAUDE, None, 200),
        (CLAUDE, CLAUDE, None, 200),
        (CLAUDE, GEMINI, CLAUDE, 200),
    ]
    moved = rows[2]
    assert moved["prompt_tokens"] > 0 and moved["completion_tokens"] == 16
    assert moved["cost_usd"] == pytest.approx(cost(GEMINI, moved["prompt_tokens"], moved["completion_tokens"]))
    assert moved["baseline_usd"] == pytest.approx(cost(CLAUDE, moved["prompt_tokens"], moved["completion_tokens"]))
    assert rows[0]["cost_usd"] == pytest.approx(moved["baseline_usd"])


def test_concurrent_requests_past_the_contracts_tpm_overflow_to_the_cheaper_model(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """The issue's contract: 8 requests at once, each estimated at 6000+ tokens, against Claude's
    20000 tokens a minute: Claude's provider gets exactly 3, Gemini's the other 5, none refused."""
    # Claude's answers take long enough that every admission is decided before any settles.
    claude, gemini = start_mock(record=True, latency_ms=800), start_mock(record=True)
    config = tiering_config(
        sqlite_url,
        {CLAUDE: claude.url, GEMINI: gemini.url, DEEPSEEK: gemini.url},
        limits=[limit(CLAUDE, 20000, unit="tokens")],
    )
    gateway = start_gateway(config)
    key = gateway.create_key()["key"]

    async def burst() -> list[Any]:
        client = AsyncOpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
        async with client:
            return await asyncio.gather(
                *(
                    client.chat.completions.with_raw_response.create(model=CLAUDE, messages=HELLO, max_tokens=6000)
                    for _ in range(8)
                )
            )

    answers = asyncio.run(burst())
    served = sorted(answer.parse().model for answer in answers)
    assert served == [CLAUDE] * 3 + [GEMINI] * 5
    assert claude.app.state.requests_served == 3
    assert gemini.app.state.requests_served == 5
    assert {r.body["model"] for r in gemini.app.state.recorded} == {GEMINI}
    routes = sorted(answer.headers.get("x-quotagate-route") or "" for answer in answers)
    assert routes == [""] * 3 + [route(CLAUDE, GEMINI, on_key("tokens", CLAUDE))] * 5


def test_a_spent_budget_downgrades_and_then_refuses_with_insufficient_quota(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Claude's $0.001 a day lasts 3 requests; the next go to Gemini until Gemini's own limit is
    full too, and then the client gets Claude's insufficient_quota with a Retry-After."""
    config = tiering_config(
        sqlite_url, mock_upstream.url, limits=[limit(CLAUDE, 0.001, unit="usd", per="day"), limit(GEMINI, 2)]
    )
    gateway = start_gateway(config)
    client = client_for(gateway)
    # Each reserves ~$0.00032 (20 tokens at most) and settles at ~$0.00026 (the mock writes 16).
    answers = [ask(client, max_tokens=20) for _ in range(5)]
    assert [answer.parse().model for answer in answers] == [CLAUDE] * 3 + [GEMINI] * 2
    assert answers[3].headers["x-quotagate-route"] == route(CLAUDE, GEMINI, on_key("USD", CLAUDE))
    error = refused(client, max_tokens=20)
    assert error.code == "insufficient_quota"
    assert f"quota of {on_key('USD', CLAUDE)}" in message(error)
    assert int(error.response.headers["retry-after"]) >= 1
    rows = ledger(sqlite_url, 6)
    assert [(r["model_served"], r["downgraded_from"]) for r in rows[:5]] == [(CLAUDE, None)] * 3 + [
        (GEMINI, CLAUDE)
    ] * 2
    assert (rows[5]["status"], rows[5]["error_type"], rows[5]["downgraded_from"]) == (429, "insufficient_quota", None)
    spent = sum(r["cost_usd"] for r in rows[:3])
    assert 0.0007 < spent <= 0.001  # the budget was used up, not refused early


def test_at_budget_moves_requests_to_the_cheaper_model_before_any_refusal(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """With at_budget 0.5, once half of Claude's $0.001 is used (the request's estimate included)
    requests go to Gemini while Claude could still admit them; a client that says off stays."""
    config = tiering_config(
        sqlite_url,
        mock_upstream.url,
        tier={},
        on_limit={CLAUDE: {"downgrade": GEMINI, "at_budget": 0.5}},
        limits=[limit(CLAUDE, 0.001, unit="usd", per="day")],
    )
    gateway = start_gateway(config)
    client = client_for(gateway)
    first = ask(client, max_tokens=20)
    assert first.parse().model == CLAUDE and "x-quotagate-route" not in first.headers
    row = ledger(sqlite_url, 1)[0]
    # The second request's estimate: its prompt and the most it may write, at Claude's price.
    used = (row["cost_usd"] + cost(CLAUDE, row["prompt_tokens"], 20)) / 0.001
    assert 0.5 <= used < 1
    answers = [ask(client, max_tokens=20) for _ in range(2)]
    assert [answer.parse().model for answer in answers] == [GEMINI, GEMINI]
    for answer in answers:
        assert answer.headers["x-quotagate-route"] == route(CLAUDE, GEMINI, f"budget {used:.0%} used")
    # Claude's budget was never charged for them: it still admits the request that may not move.
    kept = ask(client, max_tokens=20, extra_headers=OFF)
    assert kept.parse().model == CLAUDE and "x-quotagate-route" not in kept.headers
    rows = ledger(sqlite_url, 4)
    assert [(r["model_served"], r["downgraded_from"]) for r in rows] == [
        (CLAUDE, None),
        (GEMINI, CLAUDE),
        (GEMINI, CLAUDE),
        (CLAUDE, None),
    ]
    assert rows[1]["baseline_usd"] == pytest.approx(
        cost(CLAUDE, rows[1]["prompt_tokens"], rows[1]["completion_tokens"])
    )


def test_at_budget_on_a_tier_budget_moves_every_request_once_it_is_half_used(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A tier's $0.001 a day with at_budget 0.5: from the request that takes it past half, every
    request is served by Gemini, at Gemini's price, with the share used in the header."""
    config = tiering_config(
        sqlite_url,
        mock_upstream.url,
        tier={"usd_per_day": 0.001, "on_limit": {"downgrade": GEMINI, "at_budget": 0.5}},
    )
    gateway = start_gateway(config)
    client = client_for(gateway)
    assert ask(client, max_tokens=20).parse().model == CLAUDE
    for count in range(2, 5):
        rows = ledger(sqlite_url, count - 1)
        # The budget as the request leaves it: what was spent, and its estimate at Claude's price.
        used = (sum(r["cost_usd"] for r in rows) + cost(CLAUDE, rows[0]["prompt_tokens"], 20)) / 0.001
        answer = ask(client, max_tokens=20)
        assert answer.parse().model == GEMINI
        assert answer.headers["x-quotagate-route"] == route(CLAUDE, GEMINI, f"budget {used:.0%} used")
    rows = ledger(sqlite_url, 4)
    assert [(r["model_served"], r["downgraded_from"]) for r in rows] == [(CLAUDE, None)] + [(GEMINI, CLAUDE)] * 3
    for row in rows[1:]:
        assert row["cost_usd"] == pytest.approx(cost(GEMINI, row["prompt_tokens"], row["completion_tokens"]))


def test_a_models_on_limit_comes_before_the_tiers(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Claude's own on_limit (Gemini) wins over the tier's (DeepSeek); a model without one of its
    own follows the tier's."""
    config = tiering_config(
        sqlite_url,
        mock_upstream.url,
        tier={"on_limit": {"downgrade": DEEPSEEK}},
        on_limit={CLAUDE: {"downgrade": GEMINI}},
        limits=[limit(CLAUDE, 1), limit(GEMINI, 1)],
    )
    gateway = start_gateway(config)
    client = client_for(gateway)
    assert ask(client).parse().model == CLAUDE
    moved = ask(client)
    assert moved.parse().model == GEMINI
    assert moved.headers["x-quotagate-route"] == route(CLAUDE, GEMINI, on_key("requests", CLAUDE))
    # Gemini's one request is used: a request for Gemini itself follows the tier's on_limit.
    tiers = ask(client, GEMINI)
    assert tiers.parse().model == DEEPSEEK
    assert tiers.headers["x-quotagate-route"] == route(GEMINI, DEEPSEEK, on_key("requests", GEMINI))


def test_a_chain_of_downgrades_ends_where_a_model_admits_else_in_the_first_refusal(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Claude -> Gemini -> DeepSeek: with Claude and Gemini full the request is served by
    DeepSeek; with all three full the client gets Claude's 429, rate_limit_exceeded, Retry-After."""
    config = tiering_config(
        sqlite_url,
        mock_upstream.url,
        tier={},
        on_limit={CLAUDE: {"downgrade": GEMINI}, GEMINI: {"downgrade": DEEPSEEK}},
        limits=[limit(CLAUDE, 1), limit(GEMINI, 1), limit(DEEPSEEK, 1)],
    )
    gateway = start_gateway(config)
    client = client_for(gateway)
    answers = [ask(client) for _ in range(3)]
    assert [answer.parse().model for answer in answers] == [CLAUDE, GEMINI, DEEPSEEK]
    why = on_key("requests", CLAUDE)
    assert answers[1].headers["x-quotagate-route"] == route(CLAUDE, GEMINI, why)
    assert answers[2].headers["x-quotagate-route"] == route(CLAUDE, DEEPSEEK, why)
    error = refused(client)
    assert error.code == "rate_limit_exceeded"
    assert message(error).startswith(f"Rate limit reached for {why}: limit 1")
    assert int(error.response.headers["retry-after"]) >= 1
    rows = ledger(sqlite_url, 4)
    assert [(r["model_served"], r["downgraded_from"], r["status"]) for r in rows[:3]] == [
        (CLAUDE, None, 200),
        (GEMINI, CLAUDE, 200),
        (DEEPSEEK, CLAUDE, 200),
    ]
    assert (rows[3]["status"], rows[3]["downgraded_from"]) == (429, None)
    assert rows[2]["baseline_usd"] == pytest.approx(
        cost(CLAUDE, rows[2]["prompt_tokens"], rows[2]["completion_tokens"])
    )


def test_a_client_that_says_off_gets_the_429(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """x-quotagate-downgrade: off keeps the 429 a refused request had before on_limit existed."""
    gateway = start_gateway(tiering_config(sqlite_url, mock_upstream.url, limits=[limit(CLAUDE, 1)]))
    client = client_for(gateway)
    assert ask(client).parse().model == CLAUDE
    error = refused(client, extra_headers=OFF)
    assert error.code == "rate_limit_exceeded" and on_key("requests", CLAUDE) in message(error)
    assert "retry-after" in error.response.headers
    assert ask(client).parse().model == GEMINI  # without the header, the same request is moved


def test_without_on_limit_a_refusal_is_a_429(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Downgrades are off unless configured: past the limit, the client gets the 429."""
    gateway = start_gateway(tiering_config(sqlite_url, mock_upstream.url, tier={}, limits=[limit(CLAUDE, 1)]))
    client = client_for(gateway)
    assert ask(client).parse().model == CLAUDE
    error = refused(client)
    assert error.code == "rate_limit_exceeded" and on_key("requests", CLAUDE) in message(error)
    assert "x-quotagate-route" not in error.response.headers


def test_a_limit_every_model_shares_refuses_the_downgrade_too_without_charging_it(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """The tier's RPM holds for Gemini as for Claude, so moving cannot help: 429; and the failed
    try leaves Gemini's own one-request-a-minute limit unused."""
    config = tiering_config(
        sqlite_url,
        mock_upstream.url,
        tier={"rpm": 2, "on_limit": {"downgrade": GEMINI}},
        limits=[limit(GEMINI, 1, scope="model")],  # one request a minute to Gemini, for every key
    )
    gateway = start_gateway(config)
    alice = client_for(gateway, gateway.create_key(user="alice")["key"])
    assert [ask(alice).parse().model for _ in range(2)] == [CLAUDE, CLAUDE]
    error = refused(alice)
    assert error.code == "rate_limit_exceeded"
    assert message(error).startswith("Rate limit reached for requests per minute (RPM): limit 2")
    # Another key, with its own RPM, finds Gemini's request still there, and only one.
    bob = client_for(gateway, gateway.create_key(user="bob")["key"])
    assert ask(bob, GEMINI).parse().model == GEMINI
    assert f"for model {GEMINI}" in message(refused(bob, GEMINI))


def test_a_downgrade_target_is_charged_its_token_estimate(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Requests moved to Gemini are held to Gemini's 20000 tokens a minute by their estimate, even
    where Claude's own limits count no tokens: of 7 at once at 6000+ tokens, Claude serves 1,
    Gemini 3, and the other 3 get the 429."""
    claude, gemini = start_mock(record=True, latency_ms=800), start_mock(record=True, latency_ms=800)
    config = tiering_config(
        sqlite_url,
        {CLAUDE: claude.url, GEMINI: gemini.url, DEEPSEEK: gemini.url},
        limits=[limit(CLAUDE, 1), limit(GEMINI, 20000, unit="tokens")],
    )
    gateway = start_gateway(config)
    key = gateway.create_key()["key"]

    async def burst() -> list[int]:
        client = AsyncOpenAI(base_url=gateway.v1, api_key=key, max_retries=0)

        async def one() -> int:
            try:
                await client.chat.completions.create(model=CLAUDE, messages=HELLO, max_tokens=6000)
            except openai.RateLimitError:
                return 429
            return 200

        async with client:
            return await asyncio.gather(*(one() for _ in range(7)))

    statuses = asyncio.run(burst())
    assert claude.app.state.requests_served == 1
    assert gemini.app.state.requests_served == 3
    assert sorted(statuses) == [200] * 4 + [429] * 3


def test_three_nodes_on_one_redis_send_exactly_the_limit_to_the_asked_model(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """30 requests at once spread over 3 gateways sharing Redis, Claude at 5 a minute: Claude's
    provider gets exactly 5, Gemini's the other 25, none refused."""
    claude, gemini = start_mock(record=True), start_mock(record=True)
    config = tiering_config(
        sqlite_url,
        {CLAUDE: claude.url, GEMINI: gemini.url, DEEPSEEK: gemini.url},
        limits=[limit(CLAUDE, 5)],
        redis=REDIS_URL,  # each key's counts are its own (a fresh key id): no flush needed
        ledger={"enabled": False},
    )
    nodes = [start_gateway(config) for _ in range(3)]
    key = nodes[0].create_key()["key"]

    async def spread() -> list[Any]:
        clients = [AsyncOpenAI(base_url=node.v1, api_key=key, max_retries=0) for node in nodes]
        try:
            return await asyncio.gather(
                *(
                    clients[i % 3].chat.completions.with_raw_response.create(model=CLAUDE, messages=HELLO)
                    for i in range(30)
                )
            )
        finally:
            for client in clients:
                await client.close()

    answers = asyncio.run(spread())
    assert sorted(answer.parse().model for answer in answers) == [CLAUDE] * 5 + [GEMINI] * 25
    assert claude.app.state.requests_served == 5
    assert gemini.app.state.requests_served == 25


def test_a_downgraded_stream_is_relayed_and_settled(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A streamed request past Claude's limit streams Gemini's answer, with the route header, and
    its row carries the stream's usage at Gemini's price (Claude's as the baseline)."""
    gateway = start_gateway(tiering_config(sqlite_url, mock_upstream.url, limits=[limit(CLAUDE, 1)]))
    client = client_for(gateway)
    assert ask(client).parse().model == CLAUDE
    with client.chat.completions.with_streaming_response.create(
        model=CLAUDE, messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["x-quotagate-route"] == route(CLAUDE, GEMINI, on_key("requests", CLAUDE))
        chunks = list(response.parse())
    assert {chunk.model for chunk in chunks} == {GEMINI}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 16 and len(text.split()) == 16
    row = ledger(sqlite_url, 2)[1]
    assert (row["model_served"], row["downgraded_from"], row["stream"], row["status"]) == (GEMINI, CLAUDE, 1, 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["cost_usd"] == pytest.approx(cost(GEMINI, usage.prompt_tokens, usage.completion_tokens))
    assert row["baseline_usd"] == pytest.approx(cost(CLAUDE, usage.prompt_tokens, usage.completion_tokens))


def test_a_downgrade_header_other_than_on_or_off_is_a_400(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A misspelt x-quotagate-downgrade is a clear 400 naming the header, never ignored."""
    running = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    client = OpenAI(base_url=running.v1, api_key=running.create_key()["key"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-quotagate-downgrade": "never"},
        )
    assert refused.value.param == "x-quotagate-downgrade"  # type: ignore[attr-defined]
    assert "must be on or off" in refused.value.message


def test_past_a_models_concurrency_the_cheaper_model_serves_and_the_slot_comes_back(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """With one request in flight on Claude allowed, a second at the same time goes to Gemini; once
    the first is answered, Claude's slot is free again for the next."""
    slow = start_mock(latency_ms=300)
    gateway = start_gateway(tiering_config(sqlite_url, slow.url, limits=[limit(CLAUDE, 1, unit="concurrent")]))
    key = gateway.create_key()["key"]

    async def two_at_once() -> list[str]:
        client = AsyncOpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
        first = asyncio.create_task(client.chat.completions.create(model=CLAUDE, messages=HELLO))
        await asyncio.sleep(0.1)  # the first holds Claude's slot while its provider answers
        second = await client.chat.completions.create(model=CLAUDE, messages=HELLO)
        return [(await first).model, second.model]

    assert asyncio.run(two_at_once()) == [CLAUDE, GEMINI]
    assert ask(client_for(gateway, key)).parse().model == CLAUDE


def test_a_tiers_on_limit_serves_chat_only(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """An embeddings request refused on its model's limit is refused: the tier's cheaper model is
    a chat model, which cannot answer it."""
    gateway = start_gateway(
        gateway_config(
            sqlite_url,
            mock_upstream.url,
            tiers={"free": {"on_limit": {"downgrade": "gpt-4o-mini"}}},
            limits=[limit("text-embedding-3-small", 1)],
        )
    )
    client = client_for(gateway)
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="text-embedding-3-small", input="hello")


def test_a_downgrade_never_serves_a_model_the_key_may_not_use(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A key allowed only Claude gets the 429, not Gemini's answer."""
    gateway = start_gateway(tiering_config(sqlite_url, mock_upstream.url, limits=[limit(CLAUDE, 1)]))
    client = client_for(gateway, gateway.create_key(models=[CLAUDE])["key"])
    assert ask(client).parse().model == CLAUDE
    refused(client)


def test_a_tiers_at_budget_holds_beside_a_models_own_on_limit(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A model's on_limit without at_budget leaves the tier's at_budget in force: once the tier's
    budget is half spent, Claude's requests go to the tier's cheaper model."""
    gateway = start_gateway(
        tiering_config(
            sqlite_url,
            mock_upstream.url,
            tier={"usd_per_day": 0.002, "on_limit": {"downgrade": GEMINI, "at_budget": 0.5}},
            on_limit={CLAUDE: {"downgrade": DEEPSEEK}},
        )
    )
    client = client_for(gateway)
    served = [ask(client, max_tokens=16).parse().model for _ in range(8)]
    assert served[0] == CLAUDE
    assert GEMINI in served and DEEPSEEK not in served
    assert served[served.index(GEMINI) :] == [GEMINI] * (len(served) - served.index(GEMINI))


def test_a_cached_answer_over_the_limit_is_downgraded_like_a_miss(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A repeated question whose cached answer the limits refuse is served by the cheaper model,
    as the same question uncached would be, not refused."""
    tier = {"cache": {"mode": "exact"}, "on_limit": {"downgrade": GEMINI}}
    gateway = start_gateway(tiering_config(sqlite_url, mock_upstream.url, tier=tier, limits=[limit(CLAUDE, 1)]))
    client = client_for(gateway)
    first = ask(client)
    assert (first.parse().model, first.headers["x-quotagate-cache"]) == (CLAUDE, "miss")
    time.sleep(0.2)  # the answer is kept in the background
    again = ask(client)
    assert again.parse().model == GEMINI
    assert again.headers["x-quotagate-route"] == route(CLAUDE, GEMINI, on_key("requests", CLAUDE))
