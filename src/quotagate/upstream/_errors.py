"""Turning a provider's error response into the client's error, at the upstream boundary.

4xx answers are the client's problem and pass through with the provider's message (400, 404,
422, 429 ...). Two exceptions: a provider 401/403 means the *gateway's* upstream credentials are
wrong, which the client can do nothing about, so it becomes a 502; and 5xx answers become 502,
because from the client's side the gateway's upstream failed, not the gateway.

Everything of the provider's answer that is relayed is scrubbed of the deployment's keys and of
anything that looks like an API key (OpenAI echoes a masked key on 401): every string in the
error, at any depth, not only its message (a provider echoing the key in ``type``, ``param`` or
``code`` reached the client and the ledger, issue 18). Relayed headers are kept only when they
hold what their name promises (a number of seconds, an HTTP date), so no provider text rides in
them.

What a provider answers with 2xx is relayed too, and may still carry a key: a stream that breaks
off with an error event (``data: {"error": ...}``) after its 200 has gone. ``Scrubber`` keeps the
gateway's own secrets out of every relayed byte, and scrubs error events as errors are scrubbed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import UpstreamStatusError

_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk|key|AIza|qg)[-_A-Za-z0-9*.]{8,}")
# Retry-After is seconds or an HTTP date (RFC 9110 10.2.3); retry-after-ms, OpenAI's, milliseconds.
_SECONDS = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,6})?")
_HTTP_DATE = re.compile(r"[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT")
_RELAYED_HEADERS = (("retry-after", (_SECONDS, _HTTP_DATE)), ("retry-after-ms", (_SECONDS,)))
# A body that is not JSON is shown in part; it is scrubbed before it is cut, so that a cut
# cannot leave the start of a key that redact() would no longer recognise.
_SHOWN_CHARS = 500
_SCRUBBED_BYTES = 64 * 1024
# orjson parses JSON 1,024 levels deep, past Python's recursion limit: deeper is not relayed.
_SCRUB_DEPTH = 32


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    # The longest first: a secret that is part of another must not leave the other's rest.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


def scrub(value: Any, secrets: tuple[str, ...] = (), depth: int = 0) -> Any:
    """``value`` (parsed JSON) with every string in it, keys of objects included, redacted."""
    if isinstance(value, str):
        return redact(value, secrets)
    if depth >= _SCRUB_DEPTH and isinstance(value, dict | list):
        return "[truncated]"
    if isinstance(value, dict):
        return {redact(str(k), secrets): scrub(v, secrets, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(item, secrets, depth + 1) for item in value]
    return value


# A secret shorter than this is a placeholder ("EMPTY", "none": what keyless vLLM or Ollama
# deployments are given), not a secret: replacing it would corrupt answers that happen to say it.
_SHORTEST_SECRET = 8
_ERROR_FIELD = b'"error"'


class Scrubber:
    """Keeps the gateway's secrets out of relayed 2xx bodies and streams.

    Raw bytes are searched for each secret (one ``bytes.replace`` per secret, which copies nothing
    when the secret is absent); only the lines of a stream that name an ``"error"`` are parsed,
    and those that carry one are scrubbed like an error response (keys in JSON escapes and
    key-like strings included). A stream must be given whole SSE events, as the proxy relays
    them: no secret has a blank line in it, so none can be split between two calls.
    """

    __slots__ = ("_raw", "secrets")

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= _SHORTEST_SECRET}, key=len, reverse=True))
        self._raw = tuple(s.encode() for s in self.secrets)

    def body(self, data: bytes) -> bytes:
        """``data`` with every secret replaced."""
        for raw in self._raw:
            data = data.replace(raw, b"[redacted]")
        return data

    def events(self, events: bytes) -> tuple[bytes, dict[str, Any] | None]:
        """Whole SSE events, scrubbed, and the first error event's error (scrubbed) if one is an error."""
        events = self.body(events)
        if _ERROR_FIELD not in events:
            return events, None
        error: dict[str, Any] | None = None
        lines = events.split(b"\n")
        for index, line in enumerate(lines):
            if _ERROR_FIELD not in line or not line.startswith(b"data:"):
                continue
            try:
                payload = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            # "error": null is no error (and its answer's text may say "sk-..." for good reasons).
            if not isinstance(payload, dict) or not payload.get("error"):
                continue
            payload = scrub(payload, self.secrets)
            lines[index] = b"data: " + orjson.dumps(payload) + (b"\r" if line.endswith(b"\r") else b"")
            if error is None:
                found = payload["error"]
                error = found if isinstance(found, dict) else {"message": str(found)}
        return b"\n".join(lines), error


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The provider's headers the client is told about, where each holds what it should."""
    relayed = {}
    for name, shapes in _RELAYED_HEADERS:
        value = headers.get(name)
        if value is not None and any(shape.fullmatch(value.strip()) for shape in shapes):
            relayed[name] = value.strip()
    return relayed


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
    if error is not None:
        error = scrub(error, secrets)
    if error is not None and isinstance(error.get("message"), str):
        message = error["message"]
    elif error is not None:
        # Shown as the scrubbed JSON, not the body's text: a key written with JSON escapes
        # ("\u0073k-...") would slip past redact() in the raw text.
        message = orjson.dumps(error).decode()[:_SHOWN_CHARS]
    else:
        text = body[:_SCRUBBED_BYTES].decode("utf-8", "replace").strip() or "(empty body)"
        message = redact(text, secrets)[:_SHOWN_CHARS]
    relayed = relayed_headers(headers)

    if status in (401, 403):
        return UpstreamStatusError(
            502,
            f"The provider rejected the gateway's credentials for deployment {label} (HTTP {status}): {message}",
            type="upstream_error",
            code="upstream_auth_error",
        )
    if status == 529:
        # Anthropic's "overloaded": kept as its own status, which Anthropic's clients know (and the
        # OpenAI SDKs retry as any 5xx).
        return UpstreamStatusError(
            529,
            f"Upstream {label} is overloaded (HTTP 529): {message}",
            type="upstream_error",
            code="upstream_overloaded",
            headers=relayed,
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
