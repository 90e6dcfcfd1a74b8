"""provider azure: Azure OpenAI's URL (deployment and api-version), its api-key header or an Entra
ID bearer token, and its rate-limit headers, against the mock upstream speaking Azure's shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from quotagate.config import parse_config
from quotagate.upstream import ModelRoutes

from ..conftest import RunningGateway, ServerThread, gateway_config

UPSTREAM_KEY = "sk-upstream-test-key-123456"  # TEST_UPSTREAM_KEY (the upstream_env fixture)
API_VERSION = "2024-10-21"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def azure(mock: ServerThread, deployment: str = "my-gpt", **extra: Any) -> dict[str, Any]:
    return {
        "provider": "azure",
        "base_url": mock.url,
        "api_version": API_VERSION,
        "api_key": "env:TEST_UPSTREAM_KEY",
        "model": deployment,
        **extra,
    }


def start(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, mock: ServerThread, *models: dict[str, Any]
) -> tuple[RunningGateway, str]:
    gw = start_gateway(gateway_config(sqlite_url, mock.url, models=list(models)))
    return gw, str(gw.create_key()["key"])


def deployments(gw: RunningGateway) -> dict[str, dict[str, Any]]:
    with gw.admin() as admin:
        return {d["label"]: d for d in admin.get("/admin/deployments").json()["data"]}


def test_url_names_the_deployment_and_the_api_version() -> None:
    """An azure deployment's URL is {base_url}/openai/deployments/{name}{path}?api-version=...; others are unchanged."""
    resource = "https://r.openai.azure.com"
    listed = [
        {"provider": "azure", "base_url": resource + "/", "api_version": "2024-10-21"},
        {"provider": "azure", "base_url": resource + "/openai", "api_version": "v1 x"},
        {"provider": "azure", "base_url": resource, "api_version": "1", "model": "a/b"},
        {"provider": "openai-compatible", "base_url": "http://relay.example/v1"},
    ]
    routes = ModelRoutes(parse_config({"models": [{"name": "m", "deployments": listed}]}))
    urls = [t.url("/chat/completions") for t in routes.deployments("m")]
    assert urls == [
        "https://r.openai.azure.com/openai/deployments/m/chat/completions?api-version=2024-10-21",
        "https://r.openai.azure.com/openai/deployments/m/chat/completions?api-version=v1%20x",
        "https://r.openai.azure.com/openai/deployments/a%2Fb/chat/completions?api-version=1",
        "http://relay.example/v1/chat/completions",
    ]


def test_requests_go_to_the_deployment_with_the_api_key_header(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Chat and embeddings reach Azure's URL with api-version and an api-key header, never Authorization."""
    mock = start_mock(record=True, api_key=UPSTREAM_KEY)
    gw, key = start(
        start_gateway,
        sqlite_url,
        mock,
        {"name": "gpt-4o-mini", "deployments": [azure(mock)]},
        {"name": "text-embedding-3-small", "deployments": [azure(mock, "embed-small")]},
    )
    client = OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    completion = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert completion.model == "my-gpt" and completion.usage.completion_tokens == 5
    embedding = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert embedding.model == "embed-small" and len(embedding.data[0].embedding) == 1536
    chat, embed = mock.app.state.recorded
    assert (chat.path, chat.query) == ("/openai/deployments/my-gpt/chat/completions", f"api-version={API_VERSION}")
    assert (embed.path, embed.query) == ("/openai/deployments/embed-small/embeddings", f"api-version={API_VERSION}")
    for sent in (chat, embed):
        assert sent.headers["api-key"] == UPSTREAM_KEY and "authorization" not in sent.headers


def test_entra_id_token_is_sent_as_a_bearer_token(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With azure_ad_token the deployment sends Authorization: Bearer with the variable's token, and no api-key."""
    monkeypatch.setenv("TEST_AZURE_TOKEN", UPSTREAM_KEY)  # the mock takes its key as a bearer token
    mock = start_mock(record=True, api_key=UPSTREAM_KEY)
    entra = {**azure(mock), "api_key": None, "azure_ad_token": "env:TEST_AZURE_TOKEN"}
    gw, key = start(start_gateway, sqlite_url, mock, {"name": "gpt-4o-mini", "deployments": [entra]})
    response = httpx.post(gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT)
    assert response.status_code == 200, response.text
    [sent] = mock.app.state.recorded
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}" and "api-key" not in sent.headers


def test_a_rejected_key_is_the_gateways_502_and_the_key_never_shows(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Azure's 401 (its own error shape) comes back as upstream_auth_error, naming the deployment."""
    mock = start_mock(api_key="sk-another-key-entirely-000")
    gw, key = start(start_gateway, sqlite_url, mock, {"name": "gpt-4o-mini", "deployments": [azure(mock)]})
    response = httpx.post(gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_auth_error" and "azure/my-gpt" in error["message"]
    assert UPSTREAM_KEY not in response.text


def test_streams_are_relayed_with_usage(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A streamed chat through an azure deployment arrives whole; the gateway's usage request reaches Azure."""
    mock = start_mock(record=True, api_key=UPSTREAM_KEY)
    gw, key = start(start_gateway, sqlite_url, mock, {"name": "gpt-4o-mini", "deployments": [azure(mock)]})
    client = OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    chunks = list(client.chat.completions.create(**CHAT, stream=True))  # type: ignore[call-overload]
    assert len("".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split()) == 5
    assert all(c.usage is None for c in chunks)  # the client did not ask for the usage chunk
    [sent] = mock.app.state.recorded
    assert sent.body["stream_options"] == {"include_usage": True}  # the gateway did, to settle its limits


def test_retry_after_ms_cools_the_deployment_down(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Azure's 429 cools its deployment for retry-after-ms (6.5 s, not retry-after's 7 s); traffic goes elsewhere."""
    limited, spare = start_mock(rate_429=1.0, retry_after=6.5, api_key=UPSTREAM_KEY), start_mock(api_key=UPSTREAM_KEY)
    gw, key = start(
        start_gateway,
        sqlite_url,
        limited,
        {"name": "gpt-4o-mini", "deployments": [azure(limited, priority=0), azure(spare, priority=1)]},
    )

    def post() -> httpx.Response:
        return httpx.post(gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT)

    first = post()
    assert first.status_code == 200 and first.headers["x-quotagate-deployment"] == "gpt-4o-mini#1 (azure/my-gpt)"
    assert 6.0 < deployments(gw)["gpt-4o-mini#0 (azure/my-gpt)"]["cooldown_seconds_left"] <= 6.5
    assert all(post().headers["x-quotagate-deployment"] == "gpt-4o-mini#1 (azure/my-gpt)" for _ in range(3))
    assert limited.app.state.requests_served == 1  # not asked again while cooling down


def test_mock_speaks_azures_url_shape(start_mock: Callable[..., ServerThread]) -> None:
    """The mock answers as the URL's deployment, takes api-key, and refuses a missing api-version or key Azure's way."""
    mock = start_mock(api_key=UPSTREAM_KEY)
    url = mock.url + "/openai/deployments/my-gpt/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}  # Azure needs no model in the body
    answered = httpx.post(url, params={"api-version": API_VERSION}, headers={"api-key": UPSTREAM_KEY}, json=body)
    assert answered.status_code == 200 and answered.json()["model"] == "my-gpt"
    no_version = httpx.post(url, headers={"api-key": UPSTREAM_KEY}, json=body)
    assert no_version.status_code == 400
    assert orjson.loads(no_version.content)["error"]["code"] == "MissingApiVersionParameter"
    wrong_key = httpx.post(url, params={"api-version": API_VERSION}, headers={"api-key": "nope"}, json=body)
    assert wrong_key.status_code == 401 and set(wrong_key.json()["error"]) == {"code", "message"}
    limited = start_mock(rate_429=1.0, retry_after=0.25)
    refused = httpx.post(
        limited.url + "/openai/deployments/d/embeddings", params={"api-version": API_VERSION}, json={"input": "x"}
    )
    assert refused.status_code == 429
    assert (refused.headers["retry-after-ms"], refused.headers["retry-after"]) == ("250", "1")
