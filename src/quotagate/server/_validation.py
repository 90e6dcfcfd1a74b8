"""Checking OpenAI request bodies before they cost anything.

Only what the gateway itself relies on is checked (the model, the fields that carry the prompt,
``stream``, the output cap); everything else is the provider's business and passes through
untouched. Messages follow OpenAI's wording so clients' error handling keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import InvalidRequestError

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
# object.__setattr__ (5x the cost of a plain one here). Treat it as read-only.
@dataclass(slots=True)
class ParsedRequest:
    body: dict[str, Any]
    model: str
    stream: bool


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


def _model_and_stream(body: dict[str, Any], streams: bool) -> tuple[str, bool]:
    if "model" not in body:
        raise _missing("model")
    model = body["model"]
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    if not model:
        raise InvalidRequestError("'model' must not be empty.", param="model", code="invalid_value")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _wrong_type("stream", "a boolean", stream)
    if stream and not streams:
        raise InvalidRequestError("This endpoint does not stream.", param="stream", code="invalid_value")
    for cap in ("max_tokens", "max_completion_tokens"):
        value = body.get(cap)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(cap, "an integer", value)
        if value < 1:
            raise InvalidRequestError(
                f"Invalid '{cap}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
                param=cap,
                code="integer_below_min_value",
            )
    return model, stream


def parse_chat(raw: bytes) -> ParsedRequest:
    body = parse_json_object(raw)
    model, stream = _model_and_stream(body, streams=True)
    if "messages" not in body:
        raise _missing("messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
    if not messages:
        raise InvalidRequestError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _wrong_type(param, "an object", message)
        role = message.get("role")
        if not isinstance(role, str):
            raise (_missing(f"{param}.role") if role is None else _wrong_type(f"{param}.role", "a string", role))
    return ParsedRequest(body, model, stream)


def _check_prompt_like(body: dict[str, Any], param: str) -> None:
    if param not in body:
        raise _missing(param)
    value = body[param]
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
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return
        if all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value):
            return
    raise _wrong_type(param, "a string, an array of strings, or an array of token arrays", value)


def parse_completion(raw: bytes) -> ParsedRequest:
    body = parse_json_object(raw)
    model, stream = _model_and_stream(body, streams=True)
    _check_prompt_like(body, "prompt")
    return ParsedRequest(body, model, stream)


def parse_embedding(raw: bytes) -> ParsedRequest:
    body = parse_json_object(raw)
    model, stream = _model_and_stream(body, streams=False)
    _check_prompt_like(body, "input")
    return ParsedRequest(body, model, stream)
