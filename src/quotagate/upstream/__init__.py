"""Upstream: provider endpoints, the pooled HTTP transport, and choosing a deployment."""

from ._deployments import USER_AGENT, DeploymentTarget, ModelRoutes
from ._errors import upstream_status_error
from ._transport import AiohttpTransport, Transport, UpstreamRequest, UpstreamResponse

__all__ = [
    "USER_AGENT",
    "AiohttpTransport",
    "DeploymentTarget",
    "ModelRoutes",
    "Transport",
    "UpstreamRequest",
    "UpstreamResponse",
    "upstream_status_error",
]
