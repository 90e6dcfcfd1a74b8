"""The passthrough: every other OpenAI endpoint, with the official SDK through the gateway to the mock."""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from quotagate.mock._app import speech_audio
from quotagate.upstream import HttpTransport

from ..cache.test_gateway_cache import ledger
from ..conftest import RunningGateway, ServerThread, gateway_config
from .test_errors import assert_openai_error

DEFAULT = {"passthrough": {"default_model": "gpt-4o-mini"}}


def last_recorded(mock: ServerThread, path: str) -> dict[str, Any]:
    """The last request the mock received on ``path``."""
    recorded = [r for r in httpx.get(mock.url + "/mock/requests").json() if r["path"] == path]
    assert recorded, f"the mock received nothing on {path}"
    return dict(recorded[-1])


@pytest.fixture
def gateway(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> RunningGateway:
    return start_gateway(gateway_config(sqlite_url, mock_upstream.url, **DEFAULT))


@pytest.fixture
def client(gateway: RunningGateway) -> OpenAI:
    return OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)


def test_moderations(client: OpenAI, sqlite_url: str) -> None:
    """A moderation is relayed and answered, with a ledger row for its model and deployment."""
    answer = client.moderations.create(model="gpt-4o-mini", input=["hello", "violence"])
    assert [result.flagged for result in answer.results] == [False, True]
    (row,) = ledger(sqlite_url, 1)
    assert (row["model_requested"], row["model_served"], row["status"]) == ("gpt-4o-mini", "gpt-4o-mini", 200)
    assert row["deployment"].startswith("gpt-4o-mini#0") and row["latency_ms"] > 0


def test_images_generate_records_the_usage_the_provider_reports(client: OpenAI, sqlite_url: str) -> None:
    """An image generation comes back with its data, and its input/output token usage is the row's."""
    answer = client.images.generate(model="gpt-4o-mini", prompt="a red fox at dawn")
    assert answer.data and answer.data[0].b64_json
    (row,) = ledger(sqlite_url, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (5, 272, 200)


def test_audio_speech_is_relayed_byte_for_byte(client: OpenAI, sqlite_url: str) -> None:
    """Speech comes back as the provider's audio bytes, with its content type."""
    response = client.audio.speech.with_raw_response.create(model="gpt-4o-mini", voice="alloy", input="hello there")
    assert response.headers["content-type"] == "audio/mpeg"
    assert response.headers["x-quotagate-deployment"].startswith("gpt-4o-mini#0")
    assert response.content == speech_audio("hello there")
    assert ledger(sqlite_url, 1)[0]["status"] == 200


def test_a_multipart_upload_of_megabytes_arrives_intact(
    client: OpenAI, mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A transcription's 3 MB file reaches the provider unchanged, under the deployment's name for
    the model (house-model is gpt-4.1 there), and its reported usage is recorded."""
    audio = os.urandom(3 * 1024 * 1024)
    digest = hashlib.sha256(audio).hexdigest()
    answer = client.audio.transcriptions.create(model="house-model", file=("clip.mp3", audio))
    assert answer.text == f"heard {len(audio)} bytes, sha256 {digest}"
    fields = last_recorded(mock_upstream, "/v1/audio/transcriptions")["body"]
    assert fields["model"] == "gpt-4.1"
    assert fields["file"] == {"filename": "clip.mp3", "bytes": len(audio), "sha256": digest}
    (row,) = ledger(sqlite_url, 1)
    assert (row["model_requested"], row["prompt_tokens"], row["completion_tokens"]) == ("house-model", 3145, 8)


def test_files_go_to_the_default_model(client: OpenAI, sqlite_url: str) -> None:
    """Files (no model in the request) are created, listed, read, retrieved and deleted through the
    default model's deployment; a deleted one is the provider's 404."""
    content = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    created = client.files.create(file=("batch.jsonl", content), purpose="batch")
    assert created.bytes == len(content) and created.filename == "batch.jsonl"
    assert created.id in [f.id for f in client.files.list()]
    assert client.files.retrieve(created.id).purpose == "batch"
    assert client.files.content(created.id).content == content
    assert client.files.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    rows = ledger(sqlite_url, 6)
    assert [row["status"] for row in rows] == [200, 200, 200, 200, 200, 404]
    assert {row["model_requested"] for row in rows} == {"gpt-4o-mini"}


def test_batches_go_to_the_default_model(client: OpenAI) -> None:
    """A batch is created and retrieved through the default model's deployment."""
    file = client.files.create(file=("batch.jsonl", b"{}\n"), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "validating" and batch.input_file_id == file.id
    assert client.batches.retrieve(batch.id).id == batch.id


def test_without_a_default_model_a_request_naming_none_is_refused(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """With no passthrough.default_model, an endpoint without a model gets an OpenAI-shaped 400."""
    gateway = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    key = gateway.create_key()["key"]
    response = httpx.get(gateway.v1 + "/files", headers={"Authorization": f"Bearer {key}"})
    assert_openai_error(response, 400, "no_default_model")
    assert ledger(sqlite_url, 1)[0]["status"] == 400


def test_an_unauthenticated_call_is_401(gateway: RunningGateway) -> None:
    """No key or a wrong key: 401 before anything is read or sent."""
    assert_openai_error(httpx.get(gateway.v1 + "/files"), 401)
    bad = OpenAI(base_url=gateway.v1, api_key="qg-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.moderations.create(model="gpt-4o-mini", input="hello")


def test_a_key_not_allowed_the_model_is_403(gateway: RunningGateway, sqlite_url: str) -> None:
    """A key limited to other models is refused the model, default or named, as chat is."""
    key = gateway.create_key(models=["house-model"])["key"]
    client = OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.moderations.create(model="gpt-4o-mini", input="hello")
    with pytest.raises(openai.PermissionDeniedError):
        client.files.list()
    with pytest.raises(openai.NotFoundError):
        client.moderations.create(model="no-such-model", input="hello")
    assert [row["status"] for row in ledger(sqlite_url, 3)] == [403, 403, 404]


def test_the_tenants_rpm_refuses_with_429(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Requests count on the tenant's RPM like chat's: past it, a 429 with Retry-After."""
    gateway = start_gateway(gateway_config(sqlite_url, mock_upstream.url, tiers={"free": {"rpm": 2}}, **DEFAULT))
    client = OpenAI(base_url=gateway.v1, api_key=gateway.create_key()["key"], max_retries=0)
    client.moderations.create(model="gpt-4o-mini", input="one")
    client.files.list()
    with pytest.raises(openai.RateLimitError) as refused:
        client.moderations.create(model="gpt-4o-mini", input="three")
    assert refused.value.response.headers["retry-after"]
    assert refused.value.code == "rate_limit_exceeded"
    assert [row["status"] for row in ledger(sqlite_url, 3)] == [200, 200, 429]


def test_an_unknown_path_gets_the_providers_404(gateway: RunningGateway, sqlite_url: str) -> None:
    """A /v1 path the gateway does not know goes to the provider, whose 404 comes back."""
    key = gateway.create_key()["key"]
    response = httpx.post(gateway.v1 + "/whatever?x=1", headers={"Authorization": f"Bearer {key}"}, json={})
    error = assert_openai_error(response, 404, "unknown_url")
    assert error["message"] == "Unknown URL POST /v1/whatever"  # the mock's words, not the gateway's
    assert ledger(sqlite_url, 1)[0]["status"] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/chat/completions%23",  # the provider would see chat completions, past chat's limits
        "/x/../responses/resp_1",  # a provider resolving .. would see another tenant's response
        "/files//file-1",
        "/files/",
    ],
)
def test_a_path_the_gateway_would_not_pass_on_as_seen_is_a_400(gateway: RunningGateway, path: str) -> None:
    """Encoded characters, empty, . and .. segments are refused before anything goes upstream."""
    key = gateway.create_key()["key"]
    # http.client sends the path as written (httpx would resolve the .. itself).
    connection = http.client.HTTPConnection("127.0.0.1", gateway.server.port, timeout=10)
    connection.request(
        "POST",
        "/v1" + path,
        body=b'{"model": "gpt-4o-mini"}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    assert answer.status == 400, body
    assert orjson.loads(body)["error"]["code"] == "invalid_path"


def test_head_and_unusual_methods_are_405(gateway: RunningGateway) -> None:
    """A method no provider endpoint takes is refused at the gateway, never sent to a deployment."""
    key = gateway.create_key()["key"]
    for method in ("HEAD", "OPTIONS", "M-SEARCH"):
        response = httpx.request(method, gateway.v1 + "/files", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 405, method


def test_an_exhausted_token_quota_refuses_a_passthrough_request(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A tenant whose daily tokens are spent is refused an image too, not admitted for nothing."""
    running = start_gateway(gateway_config(sqlite_url, mock_upstream.url, tiers={"free": {"tpd": 10}}))
    client = OpenAI(base_url=running.v1, api_key=running.create_key()["key"], max_retries=0)
    client.images.generate(model="gpt-4o-mini", prompt="a cat " * 20)  # its reported usage spends the quota
    with pytest.raises(openai.RateLimitError):
        client.images.generate(model="gpt-4o-mini", prompt="a dog")


def test_a_file_larger_than_the_gateway_reads_whole_is_relayed_as_it_comes(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A download (neither JSON nor text) is passed on chunk by chunk, never held whole: one over
    the size up to which the gateway reads answers arrives intact."""
    running = start_gateway(
        gateway_config(sqlite_url, mock_upstream.url, **DEFAULT), transport=HttpTransport(max_response_bytes=64 * 1024)
    )
    client = OpenAI(base_url=running.v1, api_key=running.create_key()["key"], max_retries=0)
    content = os.urandom(1024 * 1024)
    created = client.files.create(file=("big.bin", content), purpose="user_data")
    assert client.files.content(created.id).content == content
