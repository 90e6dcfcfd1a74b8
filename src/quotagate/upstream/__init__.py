"""Upstream: provider endpoints and deployments, the body each is sent, the pooled HTTP transport."""

from ._body import MessagesBodies, UpstreamBodies
from ._deployments import USER_AGENT, DeploymentTarget, ModelRoutes
from ._errors import Scrubber, upstream_status_error
from ._transport import HttpTransport, Transport, UpstreamRequest, UpstreamResponse

__all__ = [
    "USER_AGENT",
    "AiohttpTransport",
    "DeploymentTarget",
    "HttpTransport",
    "MessagesBodies",
    "ModelRoutes",
    "Scrubber",
    "Transport",
    "UpstreamBodies",
    "UpstreamRequest",
    "UpstreamResponse",
    "upstream_status_error",
]


def __getattr__(name: str) -> object:
    # AiohttpTransport imports aiohttp, which the gateway itself never needs.
    if name == "AiohttpTransport":
        from ._aiohttp import AiohttpTransport

        return AiohttpTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
