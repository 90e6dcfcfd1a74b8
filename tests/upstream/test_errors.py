"""A provider's error becomes the client's with every string scrubbed of the deployment's key."""

from __future__ import annotations

import orjson

from quotagate.upstream import upstream_status_error

KEY = "prov-7f3a9c2e1b5d4a6f8e0c"


def test_an_error_nested_deeper_than_python_recurses_is_scrubbed_not_a_crash() -> None:
    """1,000 levels of nesting around the key (orjson parses them): a 4xx without the key, not a crash."""
    nested = '{"inner": [' * 500 + f'"{KEY}"' + "]}" * 500
    body = f'{{"error": {{"message": {nested}, "code": "{KEY}"}}}}'.encode()
    assert orjson.loads(body)  # within what the parser takes
    error = upstream_status_error(400, body, {}, "openai/m#0", (KEY,))
    assert error.status == 400
    assert KEY not in error.body().decode() and error.code == "[redacted]"
