"""GET /openapi.json describes every route, and schemathesis holds the gateway to it.

schemathesis generates requests from the description (valid ones, and ones the description says
are invalid) for every operation, sends them to a real gateway over HTTP, and checks each answer:
no 5xx, only documented statuses and content types, every body as described (every error
OpenAI-shaped), and every request the description calls invalid refused with a 4xx. A stateful
run follows the description's links (create a key, then read, change, disable and delete it).
Examples are bounded so the run fits CI; ``QUOTAGATE_SCHEMATHESIS_EXAMPLES`` raises the bound.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from quotagate.server import Gateway
from quotagate.server._openapi import openapi_document
from quotagate.server._validation import CHAT_BODY, COMPLETION_BODY, EMBEDDING_BODY

from ..conftest import MASTER_KEY, ServerThread, gateway_config

EXAMPLES = int(os.environ.get("QUOTAGATE_SCHEMATHESIS_EXAMPLES", "50"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
]


class Served:
    def __init__(self, url: str, tenant_key: str, routes: set[tuple[str, str]]) -> None:
        self.url = url
        self.tenant_key = tenant_key
        self.routes = routes  # the gateway's route table: (method, path)

    def headers_for(self, case: Case) -> dict[str, str]:
        key = MASTER_KEY if case.operation.path.startswith("/admin") else self.tenant_key
        return {"Authorization": f"Bearer {key}"}

    def new_key(self) -> str:
        # The generated admin requests may disable or delete any key they have seen listed.
        created = httpx.post(
            f"{self.url}/admin/keys",
            json={"user": "schemathesis", "tier": "free"},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        )
        assert created.status_code == 201, created.text
        return str(created.json()["key"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mock_upstream: ServerThread) -> Iterator[Served]:
    """One gateway for every generated request: a tier without limits, so no answer is a 429 of
    the test's own making, and the mock upstream behind every model."""
    database = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'quotagate.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEST_UPSTREAM_KEY", "sk-upstream-test-key-123456")
        patch.setenv("TEST_MASTER_KEY", MASTER_KEY)
        gateway = Gateway(gateway_config(database, mock_upstream.url, tiers={"free": {}}))
        server = ServerThread(gateway).start()
        try:
            served = Served(server.url, "", set(gateway._routes))
            served.tenant_key = served.new_key()
            yield served
        finally:
            server.stop()


# Built from the document itself rather than fetched: schemathesis's fixture-based loading does not
# run on this pytest. The document served is asserted to be this one below.
schema = schemathesis.openapi.from_dict(openapi_document())
# Unknown query parameters are ignored, as OpenAI does, not refused.
# The test sends real keys (below) rather than generated ones, which would make every answer a 401.
schema.config.generation.update(
    max_examples=EXAMPLES, allow_x00=True, allow_extra_parameters=False, with_security_parameters=False
)
# Configured names put in place of generated ones that are valid (non-empty strings): otherwise
# nearly every request would stop at 404 "model not found" or 400 "unknown tier", and the relaying
# half of the gateway and the life of a key would go untested.
SERVED_MODELS = {
    "/v1/chat/completions": "gpt-4o-mini",
    "/v1/completions": "gpt-4o-mini",
    "/v1/embeddings": "text-embedding-3-small",
    "/v1/messages": "gpt-4o-mini",
    "/v1/messages/count_tokens": "gpt-4o-mini",
}


def with_configured_names(case: Case) -> None:
    body = case.body
    # Only in requests that are valid as a whole: a negative one keeps what makes it invalid.
    if not isinstance(body, dict) or case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return
    model = SERVED_MODELS.get(case.operation.path)
    if model and isinstance(body.get("model"), str) and body["model"]:
        body["model"] = model
    if case.operation.path.startswith("/admin/keys"):
        if isinstance(body.get("tier"), str) and body["tier"]:
            body["tier"] = "free"
        models = body.get("models")
        if isinstance(models, list) and models and all(isinstance(m, str) and m for m in models):
            body["models"] = ["gpt-4o-mini"]


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_route_answers_as_described(case: Case, served: Served) -> None:
    with_configured_names(case)
    case.call_and_validate(base_url=served.url, headers=served.headers_for(case), checks=CHECKS, timeout=30)


def test_keys_followed_through_their_links_answer_as_described(served: Served) -> None:
    machine = schema.as_state_machine()

    class KeyLifecycle(machine):  # type: ignore[misc, valid-type]
        def before_call(self, case: Case) -> None:
            with_configured_names(case)

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": served.url, "headers": served.headers_for(case), "timeout": 30}

        def validate_response(self, response: Any, case: Case, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    run = functools.partial(
        KeyLifecycle.run,
        settings=settings(
            max_examples=max(5, EXAMPLES // 2),
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        ),
    )
    try:
        run()
    except FlakyStrategyDefinition:
        # The machine draws from the gateway's answers, which change as keys are made: Hypothesis
        # may find the same draws leading elsewhere and give up on generating (schemathesis's
        # "rare FlakyStrategyDefinition in the stateful phase"; seen once in a loaded CI run). That
        # says nothing about the gateway: once more, where a real failure fails again.
        run()


def test_the_description_is_openapi_3_1_and_lists_every_route(served: Served) -> None:
    document = httpx.get(f"{served.url}/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert document == openapi_document()
    described = {(m.upper(), path) for path, item in document["paths"].items() for m in item if m != "parameters"}
    # Every route of the gateway's table (the unprefixed aliases under their /v1 name) ...
    table = {
        (method, path if path.startswith("/v1") or not _aliased(path) else "/v1" + path)
        for method, path in served.routes
    }
    # ... and those it dispatches by pattern.
    patterns = {
        ("GET", "/v1/models/{model}"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/keys/{key_id}"),
        ("PATCH", "/admin/keys/{key_id}"),
        ("DELETE", "/admin/keys/{key_id}"),
        ("POST", "/admin/keys/{key_id}/disable"),
        ("POST", "/admin/keys/{key_id}/enable"),
        ("GET", "/admin/keys/{key_id}/quota"),
        ("POST", "/admin/keys/{key_id}/rotate"),
        ("GET", "/admin/tiers"),
        ("GET", "/admin/teams"),
        ("GET", "/admin/teams/{team}/quota"),
        ("GET", "/admin/users"),
        ("GET", "/admin/users/{user}/quota"),
        ("GET", "/admin/whoami"),
        ("GET", "/admin/audit"),
        ("GET", "/admin/admin-keys"),
        ("POST", "/admin/admin-keys"),
        ("DELETE", "/admin/admin-keys/{admin_key_id}"),
        ("GET", "/admin/usage"),
        ("GET", "/admin/usage/series"),
        ("GET", "/admin/ledger"),
        ("GET", "/admin/deployments"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/cache"),
        ("DELETE", "/admin/cache"),
    }
    assert described == table | patterns


def _aliased(path: str) -> bool:
    return path in ("/chat/completions", "/completions", "/embeddings", "/models", "/quota")


@pytest.mark.parametrize("body", [CHAT_BODY, COMPLETION_BODY, EMBEDDING_BODY], ids=lambda b: b.title)
def test_the_described_request_fields_are_the_checked_ones(body: Any, served: Served) -> None:
    """Each field the description lists is one the gateway checks: sending it with a value of the
    wrong type is refused naming that field, and leaving out a required one names it too."""
    valid = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "input": "hi"}
    headers = {"Authorization": f"Bearer {served.new_key()}"}
    schema = body.json_schema()
    for name in schema["properties"]:
        sent = {k: v for k, v in valid.items() if k in schema["properties"]} | {name: {"not": "valid"}}
        answer = httpx.post(f"{served.url}/v1/{_path(body)}", json=sent, headers=headers)
        assert answer.status_code == 400, (name, answer.text)
        assert answer.json()["error"]["param"] == name
    for name in schema["required"]:
        sent = {k: v for k, v in valid.items() if k in schema["properties"] and k != name}
        answer = httpx.post(f"{served.url}/v1/{_path(body)}", json=sent, headers=headers)
        assert answer.status_code == 400, (name, answer.text)
        assert answer.json()["error"]["param"] == name


def _path(body: Any) -> str:
    return {"ChatCompletionRequest": "chat/completions", "CompletionRequest": "completions"}.get(
        body.title, "embeddings"
    )


def test_the_description_is_public_and_reveals_no_configuration(served: Served) -> None:
    text = httpx.get(f"{served.url}/openapi.json").text
    # The same for every configuration: nothing of it is read from the configuration.
    assert "gpt-4o-mini" not in text and "sk-upstream" not in text and MASTER_KEY not in text
