"""Checking OpenAI request bodies before they cost anything.

Only what the gateway itself relies on is checked (the model, the fields that carry the prompt,
``stream``, the output cap); everything else is the provider's business and passes through
untouched. Messages follow OpenAI's wording so clients' error handling keeps working.

Each body is a table of fields (``CHAT_BODY`` ...), and each kind of field both checks a value and
describes itself as JSON Schema: the checks below and the OpenAPI document at /openapi.json
(``_openapi.py``) are made from the same table, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from ..errors import InvalidRequestError
from ..surfaces import messages_to_chat

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _missing(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _wrong_type(param: str, expected: str, value: Any) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


# Not frozen: one is made per request, and a frozen dataclass sets each field through
# object.__setattr__, several times the cost of a plain one (bench/NOTES.md). Treat it as read-only.
@dataclass(slots=True)
class ParsedRequest:
    body: dict[str, Any]  # as an OpenAI request (an Anthropic Messages request's chat form)
    model: str
    stream: bool
    messages: dict[str, Any] | None = None  # an Anthropic Messages request as it came
    # What of it chat cannot say (a PDF, a server tool): None, or the first such thing, which a
    # deployment that speaks OpenAI's API refuses (an Anthropic one takes the request whole).
    untranslatable: str | None = None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequestError("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: {exc.args[0]}.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequestError(
            f"The request body must be a JSON object, not {_type_name(body)}.", code="invalid_json"
        )
    return body


def _is_int(value: Any) -> bool:
    # JSON has no booleans among its integers; Python does.
    return isinstance(value, int) and not isinstance(value, bool)


class BodyField:
    """One checked field of a request body: how it is checked, and the JSON Schema that says so."""

    nullable: ClassVar[bool] = False  # null means "not given"

    def __init__(self, name: str, *, required: bool = False, description: str = "") -> None:
        self.name = name
        self.required = required
        self.description = description

    def check(self, body: dict[str, Any]) -> None:
        if self.name not in body:
            if self.required:
                raise _missing(self.name)
            return
        value = body[self.name]
        if value is None and self.nullable:
            return
        self.check_value(value, self.name)

    def check_value(self, value: Any, param: str) -> None:
        raise NotImplementedError

    def value_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        schema = self.value_schema()
        if self.nullable:
            schema = {"anyOf": [schema, {"type": "null"}]}
        return {**schema, "description": self.description} if self.description else schema


class ModelName(BodyField):
    def check_value(self, value: Any, param: str) -> None:
        if not isinstance(value, str):
            raise _wrong_type(param, "a string", value)
        if not value:
            raise InvalidRequestError(f"'{param}' must not be empty.", param=param, code="invalid_value")

    def value_schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1}


class StreamFlag(BodyField):
    nullable = True

    def __init__(self, name: str, *, streams: bool) -> None:
        super().__init__(name, description="stream the answer as server-sent events" if streams else "")
        self.streams = streams

    def check_value(self, value: Any, param: str) -> None:
        if not isinstance(value, bool):
            raise _wrong_type(param, "a boolean", value)
        if value and not self.streams:
            raise InvalidRequestError("This endpoint does not stream.", param=param, code="invalid_value")

    def value_schema(self) -> dict[str, Any]:
        return {"type": "boolean"} if self.streams else {"type": "boolean", "const": False}


class OutputCap(BodyField):
    """max_tokens and its kin: what the limits reserve for the answer before it exists."""

    nullable = True

    def check_value(self, value: Any, param: str) -> None:
        if not _is_int(value):
            raise _wrong_type(param, "an integer", value)
        if value < 1:
            raise InvalidRequestError(
                f"Invalid '{param}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
                param=param,
                code="integer_below_min_value",
            )

    def value_schema(self) -> dict[str, Any]:
        # JSON Schema counts 2.0 as an integer; the gateway, like OpenAI, does not.
        return {"type": "integer", "minimum": 1, "description": "an integer >= 1, written without a decimal point"}


class Messages(BodyField):
    """A chat's turns: the gateway counts their tokens, so each must be an object with a role."""

    def check_value(self, value: Any, param: str) -> None:
        if not isinstance(value, list):
            raise _wrong_type(param, "an array", value)
        if not value:
            raise InvalidRequestError(
                f"Invalid '{param}': empty array. "
                "Expected an array with minimum length 1, but got an empty array instead.",
                param=param,
                code="empty_array",
            )
        for index, message in enumerate(value):
            item = f"{param}[{index}]"
            if not isinstance(message, dict):
                raise _wrong_type(item, "an object", message)
            role = message.get("role")
            if not isinstance(role, str):
                raise (_missing(f"{item}.role") if role is None else _wrong_type(f"{item}.role", "a string", role))

    def value_schema(self) -> dict[str, Any]:
        message = {"type": "object", "required": ["role"], "properties": {"role": {"type": "string"}}}
        return {"type": "array", "minItems": 1, "items": message}


class PromptLike(BodyField):
    """A completion's prompt or an embedding's input: text, texts, or token ids."""

    def check_value(self, value: Any, param: str) -> None:
        if isinstance(value, str):
            return
        if isinstance(value, list):
            if not value:
                raise InvalidRequestError(
                    f"Invalid '{param}': empty array. Expected an array with minimum length 1.",
                    param=param,
                    code="empty_array",
                )
            if all(isinstance(v, str) for v in value):
                return
            if all(_is_int(v) for v in value):
                return
            if all(isinstance(v, list) and all(_is_int(t) for t in v) for v in value):
                return
        raise _wrong_type(param, "a string, an array of strings, or an array of token arrays", value)

    def value_schema(self) -> dict[str, Any]:
        def non_empty(items: dict[str, Any]) -> dict[str, Any]:
            return {"type": "array", "minItems": 1, "items": items}

        tokens = {"type": "array", "items": {"type": "integer"}}
        return {
            "anyOf": [
                {"type": "string"},
                non_empty({"type": "string"}),
                non_empty({"type": "integer"}),
                non_empty(tokens),
            ]
        }


class RequestBody:
    """The fields of one endpoint's body that the gateway checks, in the order it checks them.
    Any other field is the provider's business and passes through."""

    def __init__(self, title: str, fields: tuple[BodyField, ...]) -> None:
        self.title = title
        self.fields = fields
        self.streams = any(isinstance(f, StreamFlag) and f.streams for f in fields)

    def parse(self, raw: bytes) -> ParsedRequest:
        body = parse_json_object(raw)
        for field in self.fields:
            field.check(body)
        return ParsedRequest(body, body["model"], body.get("stream") is True)

    def json_schema(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "type": "object",
            "required": [f.name for f in self.fields if f.required],
            "properties": {f.name: f.json_schema() for f in self.fields},
            # The provider's own parameters (temperature, tools, ...) are relayed as they are.
            "additionalProperties": True,
        }


def _common(streams: bool) -> tuple[BodyField, ...]:
    return (
        ModelName("model", required=True, description="a model name of the gateway's configuration"),
        StreamFlag("stream", streams=streams),
        OutputCap("max_tokens"),
        OutputCap("max_completion_tokens"),
    )


CHAT_BODY = RequestBody("ChatCompletionRequest", (*_common(streams=True), Messages("messages", required=True)))
COMPLETION_BODY = RequestBody("CompletionRequest", (*_common(streams=True), PromptLike("prompt", required=True)))
EMBEDDING_BODY = RequestBody("EmbeddingRequest", (*_common(streams=False), PromptLike("input", required=True)))

parse_chat = CHAT_BODY.parse
parse_completion = COMPLETION_BODY.parse
parse_embedding = EMBEDDING_BODY.parse


# -- Anthropic's Messages API ---------------------------------------------------------------------

# "system" is not Anthropic's, but Claude Code sends it to models not named like Claude's (served
# by OpenAI-compatible deployments here, to which it is translated; Anthropic itself refuses it).
_MESSAGE_ROLES = ("user", "assistant", "system")


class MessageTurns(BodyField):
    """A Messages request's turns: each an object with a role of user or assistant (or system, as
    Claude Code sends to models not named like Claude's), and content that is text or an array of
    blocks (objects with a type), which the gateway reads to count."""

    def check_value(self, value: Any, param: str) -> None:
        if not isinstance(value, list):
            raise _wrong_type(param, "an array", value)
        if not value:
            raise InvalidRequestError(f"{param}: at least one message is required.", param=param)
        for index, message in enumerate(value):
            item = f"{param}.{index}"
            if not isinstance(message, dict):
                raise _wrong_type(item, "an object", message)
            role = message.get("role")
            if role not in _MESSAGE_ROLES:
                raise InvalidRequestError(
                    f"{item}.role: Input should be 'user' or 'assistant' (or 'system', which goes to the "
                    "system prompt)",
                    param=f"{item}.role",
                )
            _check_blocks(message.get("content"), f"{item}.content", required=True)

    def value_schema(self) -> dict[str, Any]:
        message = {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": {"enum": list(_MESSAGE_ROLES)}, "content": _BLOCKS_SCHEMA},
        }
        return {"type": "array", "minItems": 1, "items": message}


class SystemPrompt(BodyField):
    def check_value(self, value: Any, param: str) -> None:
        _check_blocks(value, param, required=False)

    def value_schema(self) -> dict[str, Any]:
        return _BLOCKS_SCHEMA


_BLOCK_SCHEMA = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
_BLOCKS_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "array", "items": _BLOCK_SCHEMA}]}


def _check_blocks(value: Any, param: str, *, required: bool) -> None:
    if value is None and required:
        raise _missing(param)
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _wrong_type(param, "a string or an array of content blocks", value)
    for index, block in enumerate(value):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequestError(f"{param}.{index}: a content block is an object with a type.", param=param)


class RequiredOutputCap(OutputCap):
    nullable = False  # Anthropic's max_tokens is required, and never null


MESSAGES_BODY = RequestBody(
    "MessagesRequest",
    (
        ModelName("model", required=True, description="a model name of the gateway's configuration"),
        StreamFlag("stream", streams=True),
        RequiredOutputCap("max_tokens", required=True, description="the most tokens the answer may have"),
        MessageTurns("messages", required=True),
        SystemPrompt("system"),
    ),
)
COUNT_TOKENS_BODY = RequestBody(
    "MessagesCountTokensRequest",
    (
        ModelName("model", required=True, description="a model name of the gateway's configuration"),
        MessageTurns("messages", required=True),
        SystemPrompt("system"),
    ),
)


def parse_messages(raw: bytes) -> ParsedRequest:
    """An Anthropic Messages request, checked, with its chat form for the stages that count and
    route (the estimate, routed models, downgrades) and for deployments that speak OpenAI's API.
    What chat cannot say is left out of that form and named (``untranslatable``)."""
    parsed = MESSAGES_BODY.parse(raw)
    skipped: list[str] = []
    chat = messages_to_chat(parsed.body, skipped)
    return ParsedRequest(chat, parsed.model, parsed.stream, parsed.body, skipped[0] if skipped else None)


def parse_count_tokens(raw: bytes) -> ParsedRequest:
    parsed = COUNT_TOKENS_BODY.parse(raw)
    return ParsedRequest(messages_to_chat(parsed.body, []), parsed.model, False, parsed.body)
