"""GET /admin/deployments: every deployment as the router sees it, built from the router's
public state (its routes, breakers and cooldowns, statistics) and its provider limits' headroom."""

from __future__ import annotations

import time

from ..limits import StoreUnavailableError, Unit
from ..router import STATE_NAMES, Router


async def describe_deployments(router: Router) -> list[dict[str, object]]:
    """Every deployment's state, for GET /admin/deployments."""
    out: list[dict[str, object]] = []
    now = time.monotonic()
    for model in router.routes.models:
        for target in router.routes.deployments(model):
            view = await router.states.view(target.id)
            stats = router.stats[target.id]
            remaining: dict[str, int] = {}
            # The provider's limits: the configured rate, what the bucket holds at most (the burst a
            # moment can take) and what it holds now; their use is remaining of capacity.
            limits: dict[str, dict[str, int]] = {}
            if target.limits:
                try:
                    for status in await router.limiter.status(target.limits):
                        name = "rpm" if status.limit.unit is Unit.REQUESTS else "tpm"
                        remaining[name] = status.remaining
                        limits[name] = {
                            "limit": status.limit.amount,
                            "capacity": status.limit.capacity,
                            "remaining": status.remaining,
                        }
                except StoreUnavailableError:
                    pass
            cooldown_left = round(max(0.0, view.cooldown_until - now), 3)
            out.append(
                {
                    "id": target.id,
                    "model": model,
                    "label": target.label,
                    "provider": target.provider,
                    "priority": target.priority,
                    "weight": target.weight,
                    "breaker": STATE_NAMES[view.state],
                    "open_seconds_left": round(max(0.0, view.open_until - now), 3) if view.state else 0.0,
                    "cooldown_seconds_left": cooldown_left,
                    # As this node saw it; another node's cooldown shows here without its reason.
                    "cooldown_reason": stats.cooldown_reason if cooldown_left else None,
                    "in_flight": stats.in_flight,
                    "remaining": remaining,
                    "limits": limits,
                    "latency_ms": round(stats.latency_ms, 2) if stats.latency_ms is not None else None,
                    "latency_percentiles": stats.latency_percentiles(),
                    "error_rate": round(stats.error_rate, 4),
                    "requests": stats.requests,
                    "failures": stats.failures,
                }
            )
    return out
