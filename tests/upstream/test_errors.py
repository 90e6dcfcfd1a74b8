"""A provider's error becomes the client's with every string scrubbed of the deployment's key."""

from __future__ import annotations

import orjson

from quotagate.upstream import Scrubber, upstream_status_error

KEY = "prov-7f3a9c2e1b5d4a6f8e0c"


def test_an_error_nested_deeper_than_python_recurses_is_scrubbed_not_a_crash() -> None:
    """1,000 levels of nesting around the key (orjson parses them): a 4xx without the key, not a crash."""
    nested = '{"inner": [' * 500 + f'"{KEY}"' + "]}" * 500
    body = f'{{"error": {{"message": {nested}, "code": "{KEY}"}}}}'.encode()
    assert orjson.loads(body)  # within what the parser takes
    error = upstream_status_error(400, body, {}, "openai/m#0", (KEY,))
    assert error.status == 400
    assert KEY not in error.body().decode() and error.code == "[redacted]"


def test_a_stream_is_scrubbed_of_every_secret_and_only_its_error_events_are_parsed() -> None:
    """Secrets go wherever they are; an error event is scrubbed whole (escapes, key-like strings);
    "error": null, and text that merely says "sk-...", are left as they were."""
    longer = KEY + "-and-more"  # a secret that holds another must not leave its rest behind
    scrubber = Scrubber((KEY, longer, "EMPTY"))
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    events = (
        b'data: {"choices":[{"delta":{"content":"'
        + f"{longer} EMPTY sk-example-not-ours".encode()
        + b'"}}],"error":null}\n\n'
        b'data: {"error":{"message":"' + escaped.encode() + b'","code":"invalid_api_key"}}\r\n\r\n'
    )
    scrubbed, error = scrubber.events(events)
    first, second = scrubbed.split(b"\n\n", 1)
    assert first == b'data: {"choices":[{"delta":{"content":"[redacted] EMPTY sk-example-not-ours"}}],"error":null}'
    assert error == {"message": "[redacted]", "code": "invalid_api_key"}
    assert second == b'data: {"error":{"message":"[redacted]","code":"invalid_api_key"}}\r\n\r\n'
    plain = b'data: {"choices":[]}\n\n'
    assert scrubber.events(plain) == (plain, None)
