"""What the spans say, as OpenTelemetry's semantic conventions name it: no OpenTelemetry import.

The GenAI conventions as of semantic conventions 1.37 and later (now kept in the
semantic-conventions-genai repository): the provider is ``gen_ai.provider.name`` (it replaced
``gen_ai.system``), a span is named ``{gen_ai.operation.name} {gen_ai.request.model}``, and
token counts are ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens``. HTTP's are
``http.request.method``, ``http.response.status_code``, ``url.path``, ``server.address``;
failures carry ``error.type``. What only the gateway knows is under ``quotagate.``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

# The endpoints' kinds (Endpoint.kind) as gen_ai.operation.name values.
OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}

# quotagate's providers as gen_ai.provider.name values: the conventions' well-known names where
# they have one, the configuration's name otherwise (a value the conventions allow).
PROVIDERS = {"gemini": "gcp.gemini", "azure": "azure.ai.openai"}

# The request's parameters that the conventions name, from an OpenAI-shaped body (a Messages
# request is in its chat form here): numbers only, as the client sent them.
_PARAMETERS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
)


def provider_name(provider: str) -> str:
    return PROVIDERS.get(provider, provider)


def request_parameters(body: Mapping[str, Any], attributes: dict[str, Any]) -> None:
    """The request's generation parameters into ``attributes`` (those it sets, and are numbers)."""
    for field, name in _PARAMETERS:
        value = body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[name] = value
    count = body.get("n")
    if type(count) is int and count != 1:
        attributes["gen_ai.request.choice.count"] = count


def response_attributes(answer: Any, attributes: dict[str, Any]) -> None:
    """What a whole answer (OpenAI's or Anthropic's form) says of itself: its id, model and why it
    stopped. A stream's answer is never whole here, and says nothing."""
    if not isinstance(answer, dict):
        return
    for field, name in (("id", "gen_ai.response.id"), ("model", "gen_ai.response.model")):
        value = answer.get(field)
        if isinstance(value, str) and value:
            attributes[name] = value
    reasons: list[str] = []
    choices = answer.get("choices")
    if isinstance(choices, list):
        reasons = [c["finish_reason"] for c in choices if isinstance(c, dict) and type(c.get("finish_reason")) is str]
    elif isinstance(answer.get("stop_reason"), str):  # Anthropic's Messages answer
        reasons = [answer["stop_reason"]]
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = reasons


def server_attributes(url: str) -> dict[str, Any]:
    """server.address and server.port of a deployment's base URL."""
    parts = urlsplit(url)
    attributes: dict[str, Any] = {}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return attributes
    attributes["server.port"] = port
    return attributes


def without_none(attributes: dict[str, Any]) -> dict[str, Any]:
    """OpenTelemetry takes no None for an attribute: a value not known is left out."""
    return {name: value for name, value in attributes.items() if value is not None}
