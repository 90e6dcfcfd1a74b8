"""Azure OpenAI's URL shape on the way in.

Clients built for Azure (the OpenAI SDK's ``AzureOpenAI(azure_endpoint=..., api_version=...)``)
name the model in the path, ``POST /openai/deployments/{deployment}/chat/completions
?api-version=...``, and send their key in an ``api-key`` header. Such a request is the gateway's
``POST /v1/chat/completions`` (or completions, embeddings) with ``model`` = the deployment: the
URL's name wins over the body's, as it does at Azure, and the body sent on names it too. The
``api-version`` is the client's business: the gateway answers OpenAI's shape, which is Azure's.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from ..errors import MethodNotAllowedError
from ._asgi import Receive, RequestHeaders, Scope, Send

Handler = Callable[[Scope, Receive, Send, RequestHeaders, str], Awaitable[None]]

PREFIX = "/openai/deployments/"
# Azure's operations under a deployment, and the gateway's routes that serve them.
_OPERATIONS = {
    "chat/completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}


def azure_route(method: str, path: str, routes: Mapping[tuple[str, str], Handler]) -> Handler | None:
    """The handler of an Azure-shaped ``path`` (one under PREFIX) from the gateway's ``routes``
    (the proxy's, which takes the model the path names); None for an operation the gateway does
    not serve this way."""
    deployment, _, operation = path[len(PREFIX) :].partition("/")
    served = _OPERATIONS.get(operation)
    if not deployment or served is None:
        return None
    if method != "POST":
        raise MethodNotAllowedError(f"{method} is not allowed on {path}.", headers={"Allow": "POST"})
    proxied: Any = routes[("POST", served)]  # Proxy.handle bound to its endpoint: it takes model=
    return functools.partial(proxied, model=deployment)


def with_model(raw: bytes, model: str) -> bytes:
    """``raw``, a request body, naming ``model``; as it came when it does already, or when it is
    not a JSON object (the endpoint says what is wrong with it)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(body, dict) or body.get("model") == model:
        return raw
    body["model"] = model
    return orjson.dumps(body)
