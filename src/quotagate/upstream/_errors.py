"""Turning a provider's error response into the client's error, at the upstream boundary.

4xx answers are the client's problem and pass through with the provider's message (400, 404,
422, 429 ...). Two exceptions: a provider 401/403 means the *gateway's* upstream credentials are
wrong, which the client can do nothing about, so it becomes a 502; and 5xx answers become 502,
because from the client's side the gateway's upstream failed, not the gateway. Provider messages
are scrubbed of anything that looks like an API key (OpenAI echoes a masked key on 401).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import UpstreamStatusError

_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk|key|AIza|qg)[-_A-Za-z0-9*.]{8,}")
_RELAYED_HEADERS = ("retry-after", "retry-after-ms")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


def _provider_error(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return error
        if isinstance(error, str):
            return {"message": error}
        if isinstance(parsed.get("message"), str):
            return {"message": parsed["message"]}
    elif isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        # Gemini's OpenAI endpoint sometimes answers with a one-element list.
        return _provider_error(orjson.dumps(parsed[0]))
    return None


def upstream_status_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    label: str,
    secrets: tuple[str, ...] = (),
) -> UpstreamStatusError:
    error = _provider_error(body)
    if error is not None and isinstance(error.get("message"), str):
        message = redact(error["message"], secrets)
    else:
        text = body[:500].decode("utf-8", "replace").strip() or "(empty body)"
        message = redact(text, secrets)
    relayed = {name: headers[name] for name in _RELAYED_HEADERS if name in headers}

    if status in (401, 403):
        return UpstreamStatusError(
            502,
            f"The provider rejected the gateway's credentials for deployment {label} (HTTP {status}): {message}",
            type="upstream_error",
            code="upstream_auth_error",
        )
    if status >= 500 or status < 400:
        return UpstreamStatusError(
            502,
            f"Upstream {label} failed with HTTP {status}: {message}",
            type="upstream_error",
            code="upstream_server_error",
            headers=relayed,
        )
    err_type = error.get("type") if error and isinstance(error.get("type"), str) else None
    code = error.get("code") if error and isinstance(error.get("code"), str | int) else None
    param = error.get("param") if error and isinstance(error.get("param"), str) else None
    return UpstreamStatusError(
        status,
        message,
        type=err_type or "invalid_request_error",
        code=str(code) if code is not None else None,
        param=param,
        headers=relayed,
    )
