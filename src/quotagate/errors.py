"""Every error a client can receive, in OpenAI's shape.

The hierarchy, by HTTP status::

    GatewayError                      base; carries status, type, code, param, message
    ├── InvalidRequestError           400  malformed JSON, missing or wrong-typed fields
    ├── AuthenticationError           401  missing, invalid, disabled or expired key
    ├── PermissionDeniedError         403  model not allowed for the key, bad master key
    ├── NotFoundError                 404  unknown model or route
    ├── MethodNotAllowedError         405
    ├── PayloadTooLargeError          413  body over the configured limit
    ├── UpstreamError                 502  provider unreachable or answered garbage
    │   └── UpstreamStatusError       the provider's own 4xx/5xx, passed through with its message
    ├── UpstreamTimeoutError          504
    └── ServiceUnavailableError       503  a dependency (database, Redis) is down

Lower-level exceptions (aiohttp, SQLAlchemy, orjson) are mapped to these at the boundary where
they happen and re-raised ``from exc``, so the server has one place that turns an error into a
response and never needs to know about client libraries.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "AuthenticationError",
    "GatewayError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ServiceUnavailableError",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
]


class GatewayError(Exception):
    """An error with an HTTP status and an OpenAI-shaped JSON body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.to_dict())


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamStatusError(UpstreamError):
    """The provider answered with an error status; its body is relayed as it came.

    ``raw_body`` is the provider's bytes when they were already an OpenAI-shaped error, so the
    client sees exactly the provider's message (never its key: keys travel in headers only).
    """

    def __init__(self, status: int, message: str, raw_body: bytes | None = None, **kw: Any) -> None:
        super().__init__(message, status=status, **kw)
        self.raw_body = raw_body

    def body(self) -> bytes:
        return self.raw_body if self.raw_body is not None else super().body()


class UpstreamTimeoutError(GatewayError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
