"""What the router is told of one request (``RouteRequest``), and the tenant's charge that a
fallback to another model moves (``MovableCharge``: the proxy's limits stage hands one over)."""

from __future__ import annotations

from typing import Protocol

from ..limits import Usage
from ..tokens import Estimate
from ..upstream import UpstreamBodies


class MovableCharge(Protocol):
    """The request's hold on its tenant's limits, and the model it is charged to, which a
    fallback to another model moves: False when that model's limits refuse the request."""

    async def move_to(self, model: str) -> bool: ...


class RouteRequest:
    """What the router needs to know of one request: where it goes, the bodies each deployment is
    sent, its estimate (for provider limits and context windows), how long it may wait for a
    deployment and in which order, the tenant's charge to move on a fallback (None: nothing
    to move), and for a routed model's request, the models to move up through (its class's, then
    the stronger classes'; None: the model's own chain), for the passthrough's endpoints, the
    method and Content-Type it is sent with, and for a request that only one deployment can serve
    (one about a stored Responses API response), that deployment's target id."""

    def __init__(
        self,
        path: str,
        bodies: UpstreamBodies,
        stream: bool,
        estimate: Estimate,
        max_wait: float,
        priority: int,
        tenant: MovableCharge | None = None,
        models: tuple[str, ...] | None = None,
        method: str = "POST",
        content_type: str | None = None,
        unbuffered: bool = False,
        deployment: str | None = None,
    ) -> None:
        self.path = path
        self.bodies = bodies
        self.stream = stream
        self.estimate = estimate
        # What the request charges a deployment's provider limits (one request; its tokens).
        self.usage = Usage(estimate.prompt, estimate.output)
        self.max_wait = max_wait
        self.priority = priority
        self.tenant = tenant
        self.models = models
        # The passthrough's endpoints (a GET, a DELETE, a multipart upload): how the body is sent
        # (content_type None: as JSON, the deployment's own Content-Type).
        self.method = method
        self.content_type = content_type
        # An answer that is neither JSON nor text (audio, a file's content) is relayed as it comes
        # rather than read whole first: the passthrough's may be large.
        self.unbuffered = unbuffered
        # Only this deployment of the model may serve the request (it holds what the request is
        # about): no other deployment, no fallback model.
        self.deployment = deployment
