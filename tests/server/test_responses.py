"""The Responses API with the official SDK through the gateway to the mock: limits, ledger, stickiness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from quotagate.redis import RedisConnection
from quotagate.server._responses import Home, ResponseHomes

from ..conftest import REDIS_URL, RunningGateway, ServerThread, gateway_config
from .test_passthrough import ledger


def requests_to(mock: ServerThread, path: str) -> list[dict[str, Any]]:
    """The requests the mock received on ``path``."""
    return [r for r in httpx.get(mock.url + "/mock/requests").json() if r["path"] == path]


@pytest.fixture
def client(start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str) -> OpenAI:
    gateway = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    return OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)


def test_create_records_the_usage_in_the_ledger(client: OpenAI, sqlite_url: str) -> None:
    """A response comes back as the SDK's Response, and its usage is the ledger row's."""
    response = client.responses.create(model="gpt-4o-mini", instructions="Be brief.", input="Say hello")
    assert response.status == "completed" and response.output_text
    assert response.usage is not None
    (row,) = ledger(sqlite_url, 1)
    assert (row["model_requested"], row["status"], row["stream"]) == ("gpt-4o-mini", 200, 0)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
        0,
    )


def test_a_stream_settles_with_its_completed_event(client: OpenAI, sqlite_url: str) -> None:
    """A streamed response's events all arrive, and the usage of response.completed is the row's."""
    with client.responses.stream(model="gpt-4o-mini", input=[{"role": "user", "content": "Hi there"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and final.output_text
    assert final.usage is not None
    (row,) = ledger(sqlite_url, 1)
    assert (row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (
        1,
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


def test_a_stored_response_is_retrieved_listed_cancelled_and_deleted(client: OpenAI, sqlite_url: str) -> None:
    """GET, input_items, cancel and DELETE of a response reach the deployment that holds it."""
    created = client.responses.create(model="gpt-4o-mini", input="Tell me a story", background=True)
    assert client.responses.retrieve(created.id).id == created.id
    items = client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    assert client.responses.cancel(created.id).status == "cancelled"
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    rows = ledger(sqlite_url, 6)
    assert [row["status"] for row in rows] == [200, 200, 200, 200, 200, 404]


def test_an_unknown_response_id_is_a_404(client: OpenAI) -> None:
    """A response the gateway never relayed is not found, without asking any deployment."""
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.retrieve("resp_unknown")
    assert raised.value.code == "response_not_found"
    # Nor is one continued: on the provider account tenants share, it may be another's.
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model="gpt-4o-mini", input="go on", previous_response_id="resp_unknown")
    assert (raised.value.code, raised.value.param) == ("response_not_found", "previous_response_id")


def test_a_tpm_limit_refuses_a_large_max_output_before_upstream(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """The estimate counts max_output_tokens: a request that cannot fit the tenant's TPM is a 429
    and never reaches the provider."""
    config = gateway_config(sqlite_url, mock_upstream.url, tiers={"free": {"rpm": 60, "tpm": 1000}})
    gateway = start_gateway(config)
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    before = len(requests_to(mock_upstream, "/v1/responses"))
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-4o-mini", input="Write an essay", max_output_tokens=5000)
    assert len(requests_to(mock_upstream, "/v1/responses")) == before
    small = client.responses.create(model="gpt-4o-mini", input="Hello", max_output_tokens=100)
    assert small.status == "completed"


def test_a_chain_of_responses_stays_on_the_deployment_that_holds_it(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """With two deployments, every response chained by previous_response_id, and a GET of any,
    goes to the one deployment holding the first (the other would answer 404)."""
    mocks = [start_mock(record=True), start_mock(record=True)]
    deployments = [{"provider": "openai", "base_url": m.url + "/v1", "api_key": "env:TEST_UPSTREAM_KEY"} for m in mocks]
    config = gateway_config(sqlite_url, mocks[0].url, models=[{"name": "gpt-4o-mini", "deployments": deployments}])
    gateway = start_gateway(config)
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    for _ in range(3):  # three independent chains, wherever each first response lands
        first = client.responses.create(model="gpt-4o-mini", input="one")
        second = client.responses.create(model="gpt-4o-mini", input="two", previous_response_id=first.id)
        with client.responses.stream(model="gpt-4o-mini", input="three", previous_response_id=second.id) as stream:
            third = stream.get_final_response()
        assert client.responses.retrieve(third.id).previous_response_id == second.id
    seen = [[r["body"].get("previous_response_id") for r in requests_to(m, "/v1/responses")] for m in mocks]
    # Round-robin put the chains' first responses on both mocks (two on one, one on the other), and
    # each chain's later creates followed its first: six creates on one mock, three on the other.
    assert sorted(len(creates) for creates in seen) == [3, 6]
    for creates in seen:
        assert creates.count(None) == len(creates) // 3


def test_another_users_response_is_not_found(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A response is its maker's: another user neither reads it nor chains from it."""
    gateway = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    alice = OpenAI(base_url=gateway.v1, api_key=gateway.create_key("alice")["key"], max_retries=0)
    bob = OpenAI(base_url=gateway.v1, api_key=gateway.create_key("bob")["key"], max_retries=0)
    made = alice.responses.create(model="gpt-4o-mini", input="secret plans")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="gpt-4o-mini", input="and?", previous_response_id=made.id)


async def test_response_homes_are_shared_through_redis_and_bounded_here() -> None:
    """A home remembered on one node is found on another through Redis; this process keeps the
    last ``size`` only, and a forgotten one is gone everywhere."""
    connection = RedisConnection(REDIS_URL)
    try:
        here, there = ResponseHomes(connection, size=2), ResponseHomes(connection, size=2)
        await here.remember("resp_a", Home("gpt-4o-mini@a", "alice"))
        assert await there.find("resp_a") == Home("gpt-4o-mini@a", "alice")
        here.remember_here("resp_b", Home("t", "bob"))
        here.remember_here("resp_c", Home("t", "bob"))
        assert "resp_a" not in here._here and await here.find("resp_a") is not None  # from Redis again
        await here.forget("resp_a")
        assert await ResponseHomes(connection).find("resp_a") is None
    finally:
        await connection.aclose()
