"""Every error is OpenAI-shaped with the right status, and the gateway keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from ..conftest import RunningGateway, ServerThread, closed_port, gateway_config

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return dict(error)


def post(
    gateway: RunningGateway,
    key: str | None,
    body: Any = None,
    *,
    content: bytes | None = None,
    path: str = "/chat/completions",
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content is not None:
        return httpx.post(gateway.v1 + path, headers=headers, content=content, timeout=30)
    return httpx.post(gateway.v1 + path, headers=headers, json=body, timeout=30)


@pytest.mark.parametrize(
    ("content", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "missing_required_parameter", "model"),
        (b'{"model": 4, "messages": []}', "invalid_type", "model"),
        (b'{"model": "gpt-4o-mini"}', "missing_required_parameter", "messages"),
        (b'{"model": "gpt-4o-mini", "messages": "hi"}', "invalid_type", "messages"),
        (b'{"model": "gpt-4o-mini", "messages": []}', "empty_array", "messages"),
        (b'{"model": "gpt-4o-mini", "messages": ["hi"]}', "invalid_type", "messages[0]"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"content": "x"}]}',
            "missing_required_parameter",
            "messages[0].role",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "stream": "yes"}',
            "invalid_type",
            "stream",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "max_tokens": "10"}',
            "invalid_type",
            "max_tokens",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "max_tokens": 0}',
            "integer_below_min_value",
            "max_tokens",
        ),
    ],
)
def test_bad_chat_bodies_get_400(
    gateway: RunningGateway, api_key: str, content: bytes, code: str, param: str | None
) -> None:
    """Malformed JSON and missing or wrong-typed fields answer 400 naming the parameter."""
    error = assert_openai_error(post(gateway, api_key, content=content), 400, code, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "content", "param"),
    [
        ("/completions", b'{"model": "gpt-4o-mini"}', "prompt"),
        ("/completions", b'{"model": "gpt-4o-mini", "prompt": {"a": 1}}', "prompt"),
        ("/embeddings", b'{"model": "text-embedding-3-small"}', "input"),
        ("/embeddings", b'{"model": "text-embedding-3-small", "input": []}', "input"),
        ("/embeddings", b'{"model": "text-embedding-3-small", "input": "x", "stream": true}', "stream"),
    ],
)
def test_bad_completion_and_embedding_bodies_get_400(
    gateway: RunningGateway, api_key: str, path: str, content: bytes, param: str
) -> None:
    """The other endpoints check their own required fields."""
    assert_openai_error(post(gateway, api_key, content=content, path=path), 400, param=param)


def test_missing_and_invalid_keys_get_401(gateway: RunningGateway) -> None:
    """No key, a malformed header, or an unknown key: 401."""
    assert_openai_error(post(gateway, None, CHAT), 401, "missing_api_key")
    assert_openai_error(
        httpx.post(gateway.v1 + "/chat/completions", headers={"Authorization": "Basic abc"}, json=CHAT),
        401,
        "invalid_api_key",
    )
    assert_openai_error(post(gateway, "qg-not-a-real-key", CHAT), 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=gateway.v1, api_key="qg-wrong", max_retries=0).chat.completions.create(**CHAT)  # type: ignore[call-overload]


def test_disabled_and_expired_keys_get_401(gateway: RunningGateway) -> None:
    """A disabled key stops working at once; an expired key is refused."""
    created = gateway.create_key()
    assert post(gateway, created["key"], CHAT).status_code == 200
    with gateway.admin() as admin:
        assert admin.post(f"/admin/keys/{created['id']}/disable").status_code == 200
    assert_openai_error(post(gateway, created["key"], CHAT), 401, "key_disabled")
    with gateway.admin() as admin:
        assert admin.post(f"/admin/keys/{created['id']}/enable").status_code == 200
    assert post(gateway, created["key"], CHAT).status_code == 200

    # A key cannot be created expired; one that has expired since is refused.
    expired = gateway.create_key()
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    with gateway.admin() as admin:
        assert admin.patch(f"/admin/keys/{expired['id']}", json={"expires_at": past}).status_code == 200
    assert_openai_error(post(gateway, expired["key"], CHAT), 401, "key_expired")
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert post(gateway, gateway.create_key(expires_at=future)["key"], CHAT).status_code == 200


def test_model_rules(gateway: RunningGateway) -> None:
    """An unknown model is 404; a configured model the key may not use is 403."""
    key = gateway.create_key(models=["house-model"])["key"]
    assert_openai_error(post(gateway, key, {**CHAT, "model": "gpt-9"}), 404, "model_not_found", "model")
    assert_openai_error(post(gateway, key, CHAT), 403, "model_not_allowed", "model")
    with pytest.raises(openai.NotFoundError):
        OpenAI(base_url=gateway.v1, api_key=key, max_retries=0).chat.completions.create(
            model="gpt-9", messages=CHAT["messages"]
        )  # type: ignore[arg-type]


def test_body_over_the_limit_gets_413(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A body over max_body_bytes is refused, whether announced by Content-Length or streamed."""
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url, server={"max_body_bytes": 2048}))
    key = gw.create_key()["key"]
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    assert_openai_error(post(gw, key, big), 413, "request_too_large")

    def chunks() -> Any:
        for _ in range(8):
            yield b" " * 512  # no Content-Length: chunked transfer encoding
        yield b"{}"

    response = httpx.post(gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, content=chunks())
    assert_openai_error(response, 413, "request_too_large")
    assert post(gw, key, CHAT).status_code == 200


def test_unknown_route_and_wrong_method(gateway: RunningGateway, api_key: str) -> None:
    """Unknown paths are 404, known paths with the wrong method 405, both OpenAI-shaped."""
    assert_openai_error(httpx.get(gateway.url + "/nothing-here"), 404, "unknown_url")
    # Under /v1/, an unknown path is the passthrough's, for a provider's endpoint: a key first.
    assert_openai_error(httpx.get(gateway.v1 + "/nothing-here"), 401, "missing_api_key")
    assert_openai_error(httpx.get(gateway.v1 + "/chat/completions"), 405, "method_not_allowed")


def test_upstream_unreachable_is_502(start_gateway: Callable[..., RunningGateway], sqlite_url: str) -> None:
    """A provider that refuses connections answers 502, without leaking its address's secrets."""
    gw = start_gateway(gateway_config(sqlite_url, f"http://127.0.0.1:{closed_port()}"))
    error = assert_openai_error(post(gw, gw.create_key()["key"], CHAT), 502, "bad_gateway")
    assert "unreachable" in error["message"]
    assert "sk-upstream" not in error["message"]


def test_upstream_timeout_is_504(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A provider that never answers is cut off after the deployment's timeout: 504."""
    hanging = start_mock(rate_hang=1.0)
    config = gateway_config(sqlite_url, hanging.url)
    data = config.model_dump()
    data["models"][0]["deployments"][0]["timeout"] = 0.5
    gw = start_gateway(type(config).model_validate(data))
    assert_openai_error(post(gw, gw.create_key()["key"], CHAT), 504, "upstream_timeout")


def test_upstream_4xx_passes_through(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A provider 429 reaches the client with its message and Retry-After."""
    limited = start_mock(rate_429=1.0, retry_after=7)
    gw = start_gateway(gateway_config(sqlite_url, limited.url))
    response = post(gw, gw.create_key()["key"], CHAT)
    error = assert_openai_error(response, 429, "rate_limit_exceeded")
    assert error["message"].startswith("Rate limit reached for requests per min")
    assert response.headers["retry-after"] == "7"


def test_upstream_5xx_is_502(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """A provider 500 becomes a 502 carrying the provider's message."""
    failing = start_mock(rate_500=1.0)
    gw = start_gateway(gateway_config(sqlite_url, failing.url))
    error = assert_openai_error(post(gw, gw.create_key()["key"], CHAT), 502, "upstream_server_error")
    assert "HTTP 500" in error["message"] and "error while processing" in error["message"]


def test_upstream_rejecting_our_key_is_502_without_the_key(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the provider refuses the gateway's upstream key, the client gets 502, not 401, and no key."""
    strict = start_mock(api_key="sk-the-right-key-000000")
    gw = start_gateway(gateway_config(sqlite_url, strict.url))
    response = post(gw, gw.create_key()["key"], CHAT)
    error = assert_openai_error(response, 502, "upstream_auth_error")
    assert "Incorrect API key provided" in error["message"]
    # The provider echoed a masked key ("sk-upstr****3456"); none of it may reach the client.
    assert "sk-upstr" not in response.text and "3456" not in response.text


def test_server_keeps_serving_after_errors(gateway: RunningGateway, api_key: str) -> None:
    """A run of bad requests leaves the gateway healthy."""
    for content in (b"{", b"[]", b'{"model": 1}', b"\xff\xfe"):
        assert post(gateway, api_key, content=content).status_code == 400
    assert post(gateway, api_key, CHAT).status_code == 200
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
