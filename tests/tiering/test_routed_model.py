"""A routed model as users configure it (issue 21): `model: auto` with classes, the official
OpenAI SDK in front, the mock provider behind (it answers in the name of the model it was sent),
the ledger behind that.

Most tests use the contract's classes without their examples: the rules decide the same, and the
gateway starts without loading the embedding model (a second each). The few that need the
semantic classifier use the contract as written."""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from quotagate.config import load_config
from quotagate.keys import KeyStore
from quotagate.server import Gateway

from ..cache.test_gateway_cache import ledger, served
from ..conftest import MASTER_KEY, RunningGateway, ServerThread, closed_port, gateway_config
from ..server.test_errors import assert_openai_error
from .contract import SERVED, routed_model

CONTRACT = routed_model()
# USD per million tokens (input, output), from the shipped price table.
PRICES = {"gemini-2.5-flash": (0.30, 2.50), "deepseek-v3.2": (0.28, 0.42), "claude-sonnet-4.5": (3.00, 15.00)}

# A support bot's system prompt: over the simple class's 300 tokens, so that the question it
# comes with goes past the rules to the examples. Its "why" is not the question's.
POLICY = "You are the support assistant of Northwind Outfitters. " + (
    "Answer briefly and politely, explain why when you refuse, and never promise a refund the policy does not allow. "
    * 20
)


def deployment(upstream: str, model: str) -> dict[str, Any]:
    return {
        "provider": "openai-compatible",
        "base_url": upstream + "/v1",
        "api_key": "env:TEST_UPSTREAM_KEY",
        "model": model,
    }


def contract_models(
    upstream: str,
    *,
    examples: bool = False,
    down: tuple[str, ...] = (),
    extra: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The three served models (those in ``down`` at a port nothing listens on; ``extra``
    adds fields to a model, e.g. a context window) and `auto`, with or without its examples."""
    models = []
    for name in SERVED:
        url = f"http://127.0.0.1:{closed_port()}" if name in down else upstream
        models.append({"name": name, "deployments": [deployment(url, name)], **(extra or {}).get(name, {})})
    auto = copy.deepcopy(CONTRACT)
    if not examples:
        for route_class in auto["route"]["classes"]:
            del route_class["examples"]
    return [*models, auto]


def contract_config(sqlite_url: str, upstream: str, *, examples: bool = False, **overrides: Any) -> Any:
    models = overrides.pop("models", None) or contract_models(upstream, examples=examples)
    return gateway_config(sqlite_url, upstream, models=models, **overrides)


def ask(
    client: OpenAI, question: Any, *, model: str = "auto", system: str | None = None, **extra: Any
) -> tuple[str | None, str]:
    """One chat request: its x-quotagate-route header and the model that answered."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=8, **extra)
    return raw.headers.get("x-quotagate-route"), raw.parse().model


def similarity(header: str | None, pattern: str) -> float:
    """The similarity in a route header that must match ``pattern`` (whose group is the number)."""
    assert header is not None
    matched = re.fullmatch(pattern, header)
    assert matched is not None, header
    return float(matched.group(1))


def price(model: str, prompt: int, completion: int) -> float:
    per_input, per_output = PRICES[model]
    return (prompt * per_input + completion * per_output) / 1_000_000


# -- the contract ------------------------------------------------------------------------------


def test_the_contract_routes_by_its_rules(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A "why" or "为什么" in the last user message goes to complex, other short prompts to simple."""
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url))
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    complex_ = ("complex -> claude-sonnet-4.5 (rule: keywords)", "claude-sonnet-4.5")
    simple = ("simple -> gemini-2.5-flash (rule: prompt_tokens)", "gemini-2.5-flash")
    assert ask(client, "Why was I charged twice?") == complex_  # simple's rule holds too: the stronger wins
    assert ask(client, "WHY is shipping so slow") == complex_
    assert ask(client, "为什么我的订单还没发货？") == complex_  # noqa: RUF001
    assert ask(client, "Which courier do you ship with?") == simple
    assert ask(client, "Is the Whyte jacket in stock?") == simple  # not the word "why"
    assert ask(client, "Which courier do you ship with?", system="Say why you recommend it.") == simple
    earlier = [
        {"role": "user", "content": "Why is my parcel late?"},
        {"role": "assistant", "content": "It left the warehouse today."},
        {"role": "user", "content": "Thanks. Which courier is it?"},
    ]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=earlier)  # type: ignore[arg-type]
    assert raw.headers["x-quotagate-route"] == simple[0]


def test_the_semantic_classifier_picks_the_nearest_examples_class(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Unclaimed prompts go to the nearest example's class, or, unlike every example, to the default."""
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url, examples=True))
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    header, model = ask(client, "How can I return something I bought?", system=POLICY)
    assert similarity(header, r"routine -> deepseek-v3\.2 \(semantic (0\.\d\d)\)") >= 0.5
    assert model == "deepseek-v3.2"
    header, model = ask(client, "Which delivery company do you ship with?", system=POLICY)
    assert similarity(header, r"simple -> gemini-2\.5-flash \(semantic (0\.\d\d)\)") >= 0.5
    assert model == "gemini-2.5-flash"
    header, _ = ask(client, "你们用哪家快递公司？", system=POLICY)  # noqa: RUF001
    assert similarity(header, r"simple -> gemini-2\.5-flash \(semantic (0\.\d\d)\)") >= 0.5
    header, model = ask(client, "Write a sonnet about the moons of Jupiter.", system=POLICY)
    assert similarity(header, r"routine -> deepseek-v3\.2 \(default, semantic (-?\d\.\d\d)\)") < 0.5
    assert model == "deepseek-v3.2"


def test_the_semantic_cache_reuses_the_classifiers_embedding(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A routed request is embedded once for the classifier and the semantic cache; a reworded repeat hits."""
    tiers = {"free": {"rpm": 60, "cache": {"mode": "semantic"}}}
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url, examples=True, tiers=tiers))
    embedder = gateway.gateway.embedder
    assert embedder is not None
    embedded: list[str] = []
    embed = embedder.embed

    async def counted(text: str) -> Any:
        embedded.append(text)
        return await embed(text)

    monkeypatch.setattr(embedder, "embed", counted)
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    before = served(mock_upstream)
    first = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[
            {"role": "system", "content": POLICY},
            {"role": "user", "content": "How do I send back an item I bought?"},
        ],
    )
    assert first.headers["x-quotagate-cache"] == "miss"
    route = first.headers["x-quotagate-route"]
    assert route.startswith("routine -> deepseek-v3.2 (semantic ")
    time.sleep(0.2)  # the answer is stored after it is sent
    assert embedded == ["How do I send back an item I bought"]
    second = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[
            {"role": "system", "content": POLICY},
            {"role": "user", "content": "How can I send back an item I bought?"},
        ],
    )
    assert second.headers["x-quotagate-cache"] == "semantic-hit"
    assert second.headers["x-quotagate-route"].startswith("routine -> deepseek-v3.2 (semantic ")
    assert second.parse().model == "deepseek-v3.2"
    assert served(mock_upstream) == before + 1
    assert len(embedded) == 2


# -- what each rule reads ----------------------------------------------------------------------


def stored_key(sqlite_url: str, tier: str) -> tuple[str, str]:
    """A key made in the gateway's database before the gateway starts: its id and the key."""

    async def create() -> tuple[str, str]:
        store = KeyStore.from_url(sqlite_url)
        try:
            await store.create_schema()
            record, key = await store.create(user="listed", tier=tier)
            return record.id, key
        finally:
            await store.close()

    return asyncio.run(create())


def test_each_rule_decides_what_it_reads(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Each kind of rule, and several at once (all must hold), sends what it matches to its class only."""
    listed_id, listed = stored_key(sqlite_url, "free")
    tool = {"type": "function", "function": {"name": "track", "parameters": {"type": "object", "properties": {}}}}
    image = [
        {"type": "text", "text": "Is this jacket damaged?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    long_question = "Please check my order history. " * 60
    two_turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Where is my parcel?"},
    ]
    plain: dict[str, Any] = {"messages": [{"role": "user", "content": "Where is my parcel?"}]}
    # routed model: (its rules, the header's rule names, a request that matches, one that does not);
    # a request's "key" says whose key asks ("free" when absent).
    cases: dict[str, tuple[dict[str, Any], str, dict[str, Any], dict[str, Any]]] = {
        "by-min-tokens": (
            {"min_prompt_tokens": 200},
            "prompt_tokens",
            {"messages": [{"role": "user", "content": long_question}]},
            plain,
        ),
        "by-turns": ({"min_turns": 2, "max_turns": 2}, "turns", {"messages": two_turns}, plain),
        "by-tools": ({"tools": True}, "tools", {**plain, "tools": [tool]}, plain),
        "by-no-tools": ({"tools": False}, "tools=false", plain, {**plain, "tools": [tool]}),
        "by-images": ({"images": True}, "images", {"messages": [{"role": "user", "content": image}]}, plain),
        "by-json": (
            {"response_format": True},
            "response_format",
            {**plain, "response_format": {"type": "json_object"}},
            {**plain, "response_format": {"type": "text"}},
        ),
        "by-regex": (
            {"regex": [r"#\d{6}\b"]},
            "regex",
            {"messages": [{"role": "user", "content": "Where is order #123456?"}]},
            {"messages": [{"role": "user", "content": "Where is order #12345?"}]},
        ),
        "by-tier": ({"tiers": ["paid"]}, "tier", {**plain, "key": "paid"}, plain),
        "by-key": ({"keys": [listed_id]}, "key", {**plain, "key": "listed"}, plain),
        "by-all": (
            {"tools": True, "keywords": ["refund"]},
            "tools, keywords",
            {"messages": [{"role": "user", "content": "I want a refund"}], "tools": [tool]},
            {**plain, "tools": [tool]},
        ),
    }
    models: list[dict[str, Any]] = [{"name": m, "deployments": [deployment(mock_upstream.url, m)]} for m in SERVED]
    for name, (rules, _, _, _) in cases.items():
        classes = [
            {"name": "plain", "model": "deepseek-v3.2"},
            {"name": "matched", "model": "claude-sonnet-4.5", "rules": rules},
        ]
        models.append({"name": name, "route": {"default": "plain", "classes": classes}})
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url, models=models))
    clients = {
        tier: OpenAI(base_url=gateway.v1, api_key=gateway.create_key(tier=tier)["key"], max_retries=0)
        for tier in ("free", "paid")
    }
    clients["listed"] = OpenAI(base_url=gateway.v1, api_key=listed, max_retries=0)

    def route(model: str, request: dict[str, Any]) -> str | None:
        request = dict(request)
        client = clients[request.pop("key", "free")]
        raw = client.chat.completions.with_raw_response.create(model=model, max_tokens=4, **request)
        return raw.headers.get("x-quotagate-route")

    routes = {name: (route(name, matching), route(name, other)) for name, (_, _, matching, other) in cases.items()}
    assert routes == {
        name: (f"matched -> claude-sonnet-4.5 (rule: {names})", "plain -> deepseek-v3.2 (default)")
        for name, (_, names, _, _) in cases.items()
    }


# -- moving up ---------------------------------------------------------------------------------


def test_a_class_whose_model_is_down_moves_up(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A class whose model is down is served by the next stronger class's model, and says so."""
    models = contract_models(mock_upstream.url, down=("gemini-2.5-flash",))
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url, models=models))
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    header, model = ask(client, "Which courier do you ship with?")
    assert header == "simple -> deepseek-v3.2 (rule: prompt_tokens; moved up from gemini-2.5-flash)"
    assert model == "deepseek-v3.2"
    [row] = ledger(sqlite_url, 1)
    assert (row["model_requested"], row["model_served"], row["route_class"], row["status"]) == (
        "auto",
        "deepseek-v3.2",
        "simple",
        200,
    )


def test_a_class_never_moves_down(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """The strongest class's model down fails its requests: a cheaper model never answers them."""
    models = contract_models(mock_upstream.url, down=("claude-sonnet-4.5",))
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url, models=models))
    key = gateway.create_key()["key"]
    before = served(mock_upstream)
    response = httpx.post(
        gateway.v1 + "/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "Why was my order cancelled?"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert_openai_error(response, 502)
    assert served(mock_upstream) == before
    client = OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    assert ask(client, "Which courier do you ship with?") == (
        "simple -> gemini-2.5-flash (rule: prompt_tokens)",
        "gemini-2.5-flash",
    )


def test_a_prompt_over_the_class_models_context_window_moves_up(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A prompt over the class model's context window goes to the next stronger class's model."""
    models = contract_models(mock_upstream.url, extra={"gemini-2.5-flash": {"context_window": 50}})
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url, models=models))
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    assert ask(client, "Which courier do you ship with? " * 10) == (
        "simple -> deepseek-v3.2 (rule: prompt_tokens; moved up from gemini-2.5-flash)",
        "deepseek-v3.2",
    )
    assert ask(client, "Which courier?") == ("simple -> gemini-2.5-flash (rule: prompt_tokens)", "gemini-2.5-flash")


# -- the rest of the request path --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/embeddings", "/completions"])
def test_a_routed_model_serves_chat_completions_only(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str, path: str
) -> None:
    """A routed model asked on another endpoint is an OpenAI-shaped 400 naming the model param."""
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url))
    key = gateway.create_key()["key"]
    before = served(mock_upstream)
    response = httpx.post(
        gateway.v1 + path,
        json={"model": "auto", "input": "hello", "prompt": "hello"},
        headers={"Authorization": f"Bearer {key}"},
    )
    error = assert_openai_error(response, 400, param="model")
    assert error["type"] == "invalid_request_error"
    assert "`auto` is a routed model" in error["message"]
    assert served(mock_upstream) == before


def test_a_routed_stream_is_relayed_and_recorded(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A routed stream comes from the class's model with the route header; its ledger row has the class."""
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url))
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Why is my parcel late?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-quotagate-route"] == "complex -> claude-sonnet-4.5 (rule: keywords)"
    chunks = list(raw.parse())
    assert {chunk.model for chunk in chunks} == {"claude-sonnet-4.5"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [row] = ledger(sqlite_url, 1)
    assert (row["model_requested"], row["model_served"], row["route_class"], row["stream"]) == (
        "auto",
        "claude-sonnet-4.5",
        "complex",
        1,
    )
    assert row["completion_tokens"] > 0


def test_the_ledger_records_class_cost_and_baseline(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Routed rows cost the served model's price, with claude-sonnet-4.5's price as baseline_usd."""
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url))
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    assert ask(client, "Why was my order cancelled?")[0] == "complex -> claude-sonnet-4.5 (rule: keywords)"
    assert ask(client, "Which courier do you ship with?")[0] == "simple -> gemini-2.5-flash (rule: prompt_tokens)"
    assert ask(client, "How do I return an item? " * 60)[0] == "routine -> deepseek-v3.2 (default)"
    assert ask(client, "Hello", model="deepseek-v3.2")[0] is None
    rows = ledger(sqlite_url, 4)
    assert [(r["model_requested"], r["model_served"], r["route_class"]) for r in rows] == [
        ("auto", "claude-sonnet-4.5", "complex"),
        ("auto", "gemini-2.5-flash", "simple"),
        ("auto", "deepseek-v3.2", "routine"),
        ("deepseek-v3.2", "deepseek-v3.2", None),
    ]
    for row in rows[:3]:
        tokens = row["prompt_tokens"], row["completion_tokens"]
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["cached_tokens"] == 0
        assert row["cost_usd"] == pytest.approx(price(row["model_served"], *tokens))
        assert row["baseline_usd"] == pytest.approx(price("claude-sonnet-4.5", *tokens))
        assert row["downgraded_from"] is None
    assert rows[3]["baseline_usd"] is None and rows[3]["downgraded_from"] is None


def test_a_routed_request_is_charged_to_its_class_models_limits(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A routed request counts against its class model's limits, and only those."""
    limit = {
        "scope": "key+model",
        "unit": "requests",
        "amount": 1,
        "per": "minute",
        "match": {"model": ["claude-sonnet-4.5"]},
    }
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url, limits=[limit]))
    key = gateway.create_key()["key"]

    def status(model: str, question: str) -> int:
        return httpx.post(
            gateway.v1 + "/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": question}]},
            headers={"Authorization": f"Bearer {key}"},
        ).status_code

    assert status("auto", "Why was my order cancelled?") == 200
    assert status("auto", "Why is it late?") == 429
    assert status("claude-sonnet-4.5", "Hello") == 429
    assert status("auto", "Which courier do you ship with?") == 200


def test_a_key_restricted_to_auto_may_use_it(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A key allowed only `auto` gets served by the class models, but may not ask them by name."""
    gateway = start_gateway(contract_config(sqlite_url, mock_upstream.url))
    key = gateway.create_key(models=["auto"])["key"]
    client = OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    assert ask(client, "Why was my order cancelled?") == (
        "complex -> claude-sonnet-4.5 (rule: keywords)",
        "claude-sonnet-4.5",
    )
    response = httpx.post(
        gateway.v1 + "/chat/completions",
        json={"model": "claude-sonnet-4.5", "messages": [{"role": "user", "content": "Hello"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert_openai_error(response, 403)


def test_a_reload_that_adds_a_routed_model_serves_it(
    upstream_env: None, mock_upstream: ServerThread, sqlite_url: str, tmp_path: Path
) -> None:
    """A routed model added to the configuration file serves as soon as the gateway reloads it."""
    data: dict[str, Any] = {
        "database": sqlite_url,
        "master_key": "env:TEST_MASTER_KEY",
        "tiers": {"free": {"rpm": 60}},
        "models": contract_models(mock_upstream.url)[:-1],
    }
    path = tmp_path / "quotagate.yaml"
    path.write_text(yaml.safe_dump(data))
    gateway = Gateway(load_config(path), config_file=path)
    server = ServerThread(gateway).start()
    try:
        running = RunningGateway(server.url, server, gateway)
        client = OpenAI(base_url=running.v1, api_key=running.create_key()["key"], max_retries=0)
        chat = {"model": "auto", "messages": [{"role": "user", "content": "Why was my order cancelled?"}]}
        assert (
            httpx.post(
                running.v1 + "/chat/completions", json=chat, headers={"Authorization": f"Bearer {client.api_key}"}
            ).status_code
            == 404
        )
        path.write_text(yaml.safe_dump({**data, "models": contract_models(mock_upstream.url)}))
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30) as admin:
            reloaded = admin.post("/admin/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["changes"] == ["models added: auto"]
        assert ask(client, "Why was my order cancelled?") == (
            "complex -> claude-sonnet-4.5 (rule: keywords)",
            "claude-sonnet-4.5",
        )
    finally:
        server.stop()
