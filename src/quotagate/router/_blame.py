"""Whose failure was it, the deployment's or the request's? Only the deployment's count.

Breakers are shared by every tenant, so they count only what says something about the
deployment. A connection that cannot be made, a timeout, and a 5xx other than 500 (502, 503,
504, 529: a provider down or overloaded, whatever it was asked) are the deployment's at once. A
500, or a connection the deployment closes once it has the request, may be the request's (an
input that crashes the provider): such a failure is held until the request's fate shows whose
it was. It is the deployment's when the request is then served (here or elsewhere: it was
servable), or when neither it nor another deployment that failed the request the same way has
answered anyone lately (an outage, however many deployments it takes down). It is the
request's when the request then gets a 4xx, or failed the same way on a deployment that is
answering others. A request that ends otherwise (its client left, the gateway stops) leaves its
failures judged as not served.

An attempt (see _attempt) sorts its failure at once, or holds it as a ``Suspect``;
``Router.exchange`` has the suspects judged once the request's fate is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..upstream import DeploymentTarget
from ._state import DeploymentStates
from ._stats import DeploymentStats

# A deployment that answered a request this recently (before a failure, or since) is up: a
# failure that may be the request's is then the request's.
_ANSWERING_SECONDS = 2.0


@dataclass(slots=True)
class Suspect:
    """A failure that may be the request's rather than the deployment's, held for its verdict."""

    target: DeploymentTarget
    started: float  # when the attempt began (time.monotonic())
    kind: str  # how it failed ("dropped", "status 500"): alike where others are served, the request's


async def judge(
    suspects: list[Suspect], served: bool, stats: Mapping[str, DeploymentStats], states: DeploymentStates
) -> None:
    """Count against their deployments the failures of a request that may have been its own,
    now that the request was ``served`` or not."""
    if not served:
        # A failure where the deployment is answering others is the request's, and so is the
        # same failure on another deployment (one not serving anyone yet, say): the request
        # fails even where others are served. Deployments that all answer no one are down,
        # however many fail alike.
        answering = [s for s in suspects if stats[s.target.id].answered_at >= s.started - _ANSWERING_SECONDS]
        suspects = [
            s
            for s in suspects
            if not any(a is s or (a.kind == s.kind and a.target.id != s.target.id) for a in answering)
        ]
    for suspect in suspects:
        stats[suspect.target.id].blamed()
        await states.failure(suspect.target.id)
