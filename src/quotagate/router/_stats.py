"""What this node has seen of each deployment (requests in flight, latency, errors, headroom on
its provider limits): written by the attempts and ``Router.finish``, read by the strategies and
by GET /admin/deployments."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ..limits import Decision

_EWMA = 0.2  # the weight of the newest sample in the moving averages (latency, error rate)
# The latencies kept for the percentiles that GET /admin/deployments shows: the recent ones, in a
# ring (an append per answer; sorted only when someone asks).
_LATENCY_SAMPLES = 512


@dataclass
class DeploymentStats:
    """What this node has seen of a deployment: for the strategies and /admin/deployments."""

    in_flight: int = 0
    latency_ms: float | None = None
    error_rate: float = 0.0
    remaining_fraction: float = 1.0
    requests: int = 0
    failures: int = 0
    answered_at: float = -math.inf  # time.monotonic() of its last answer that was not a failure
    recent_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_SAMPLES))
    # Why this node last cooled the deployment down (the cooldown itself is shared: see _state).
    cooldown_reason: str | None = None

    def began(self) -> None:
        """An attempt went out to the deployment."""
        self.in_flight += 1
        self.requests += 1

    def ended(self, failed: bool, latency_ms: float | None = None) -> None:
        """An attempt ended with a verdict on the deployment: it failed, or it did not; where the
        answer was relayed, it took ``latency_ms`` from the attempt's start to its end."""
        if latency_ms is not None:
            self.recent_latencies.append(latency_ms)
            previous = self.latency_ms
            self.latency_ms = latency_ms if previous is None else previous + _EWMA * (latency_ms - previous)
        self.in_flight -= 1
        self.failures += int(failed)
        self.error_rate += _EWMA * ((1.0 if failed else 0.0) - self.error_rate)

    def latency_percentiles(self) -> dict[str, float] | None:
        """p50, p95 and p99 of the recent answers' latencies (ms; nearest rank), or None before any."""
        if not self.recent_latencies:
            return None
        ordered = sorted(self.recent_latencies)
        last = len(ordered) - 1
        return {f"p{p}": round(ordered[min(last, math.ceil(p / 100 * len(ordered)) - 1)], 2) for p in (50, 95, 99)}

    def ended_without_verdict(self) -> None:
        """An attempt ended saying nothing about the deployment (yet: see ``blamed``)."""
        self.in_flight -= 1

    def blamed(self) -> None:
        """A failure held for its verdict (see _blame) was the deployment's after all."""
        self.failures += 1
        self.error_rate += _EWMA * (1.0 - self.error_rate)

    def note_remaining(self, decision: Decision) -> None:
        """The deployment's provider limits admitted a request: the least headroom left on them."""
        fractions = [s.remaining / s.limit.capacity for s in decision.statuses if s.limit.capacity]
        if fractions:
            self.remaining_fraction = min(fractions)
