"""GET and DELETE /admin/cache: the response cache's figures and purges, with the master key.

The cache itself is tested in tests/cache; here a stand-in with its two admin methods takes its
place on the gateway, so the tests pin down what the admin API makes of their answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..conftest import RunningGateway
from .test_errors import assert_openai_error

NAMESPACES = ("key:", "user:", "tier:")


class StandInCache:
    """Answers as the response cache does: fixed figures, and purges it records."""

    def __init__(self) -> None:
        self.purged: list[str | None] = []

    async def stats(self) -> dict[str, Any]:
        return {"store": "memory", "entries": 3, "node": {"hits": 2, "misses": 1}}

    async def purge(self, namespace: str | None) -> int:
        if namespace is not None and namespace != "global" and not namespace.startswith(NAMESPACES):
            raise ValueError(f"unknown cache namespace {namespace!r}: use key:ID, user:NAME, tier:NAME or global")
        self.purged.append(namespace)
        return 3 if namespace is None else 1


@pytest.fixture
def cache(gateway: RunningGateway) -> StandInCache:
    stand_in = StandInCache()
    gateway.gateway.cache = stand_in  # type: ignore[assignment]
    return stand_in


def test_the_cache_routes_require_the_master_key(gateway: RunningGateway, cache: StandInCache, api_key: str) -> None:
    """No key or a user's key: refused, and nothing purged."""
    assert_openai_error(httpx.get(gateway.url + "/admin/cache"), 401, "missing_api_key")
    refused = httpx.delete(gateway.url + "/admin/cache", headers={"Authorization": f"Bearer {api_key}"})
    assert_openai_error(refused, 401, "invalid_master_key")
    assert cache.purged == []


def test_get_answers_the_cache_figures(gateway: RunningGateway, cache: StandInCache) -> None:
    """The cache's own figures, as it gives them, after the object's name."""
    with gateway.admin() as admin:
        answer = admin.get("/admin/cache")
    assert answer.status_code == 200
    assert answer.json() == {
        "object": "cache",
        "store": "memory",
        "entries": 3,
        "node": {"hits": 2, "misses": 1},
    }


def test_delete_purges_all_or_one_namespace(gateway: RunningGateway, cache: StandInCache) -> None:
    """Without a namespace everything goes; with one, only its answers; the answer says how many."""
    with gateway.admin() as admin:
        everything = admin.delete("/admin/cache")
        alice = admin.delete("/admin/cache", params={"namespace": "user:alice"})
        shared = admin.delete("/admin/cache", params={"namespace": "global"})
    assert everything.json() == {"object": "cache_purge", "namespace": None, "purged": 3}
    assert alice.json() == {"object": "cache_purge", "namespace": "user:alice", "purged": 1}
    assert shared.status_code == 200
    assert cache.purged == [None, "user:alice", "global"]


@pytest.mark.parametrize("namespace", ["colour", "", "user"])
def test_an_unknown_namespace_is_400_naming_it(gateway: RunningGateway, cache: StandInCache, namespace: str) -> None:
    """A namespace the cache does not know, a blank one included (not read as "everything"), is
    refused with the cache's own message, in OpenAI's shape."""
    with gateway.admin() as admin:
        answer = admin.delete("/admin/cache", params={"namespace": namespace})
    assert_openai_error(answer, 400, "invalid_value", "namespace")
    assert f"unknown cache namespace {namespace!r}" in answer.json()["error"]["message"]
    assert cache.purged == []


def test_other_methods_are_405(gateway: RunningGateway, cache: StandInCache) -> None:
    """GET and DELETE only; the answer names them."""
    with gateway.admin() as admin:
        for method in ("POST", "PUT", "PATCH"):
            answer = admin.request(method, "/admin/cache")
            assert_openai_error(answer, 405)
            assert answer.headers["allow"] == "GET, DELETE"
