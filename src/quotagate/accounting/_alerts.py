"""Threshold alerts on quotas and budgets: a webhook and a log line, once per threshold per window.

A calendar limit (a daily token quota, a monthly budget) crossing a configured fraction of its
amount fires once for that window, even with several gateway nodes: the first node to claim
the alert in Redis (SET NX) sends it. The webhook is a JSON POST, retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from ..auth import Principal
from ..config import AlertSettings
from ..limits import Algorithm, Decision, LimitStatus, RedisConnection, Unit
from ..upstream import USER_AGENT
from ..upstream._http import ConnectFailed, ConnectTimeout, Disconnected, HttpClient, ReadTimeout
from ._pricing import MICRO

logger = logging.getLogger("quotagate.alerts")
_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)
_TRY_SECONDS = 5.0
_WEBHOOK_HEADERS = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
_CALENDAR = Algorithm.CALENDAR  # a global: through the enum's class it is a slow lookup


class Alerts:
    def __init__(self, settings: AlertSettings, redis: RedisConnection | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self._fired: set[tuple[str, float, float]] = set()
        self._client: HttpClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0

    def check(self, principal: Principal, decision: Decision) -> None:
        """Look at a decision's quotas and budgets; fire what crossed a threshold (in the background)."""
        if not self.settings.thresholds:
            return
        for status in decision.statuses:
            limit = status.limit
            if limit.algorithm is not _CALENDAR:
                continue
            fraction = 1.0 if decision.denied_by is status else status.used / limit.amount
            for threshold in self.settings.thresholds:
                if fraction + 1e-9 < threshold:
                    break
                marker = (limit.key, status.window, threshold)
                if marker in self._fired:
                    continue
                self._fired.add(marker)
                task = asyncio.ensure_future(self._fire(principal, status, threshold))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _claim(self, status: LimitStatus, threshold: float) -> bool:
        if self.redis is None:
            return True
        key = f"qg:alert:{status.limit.key}:{status.window:.0f}:{threshold:g}"
        ttl = max(60, int(status.reset_after) + 86400)
        try:
            return await self.redis.execute("SET", key, "1", "NX", "EX", ttl) is not None  # nil: already set
        except Exception as exc:
            logger.warning("could not claim an alert in Redis (%s); sending it anyway", exc)
            return True

    async def _fire(self, principal: Principal, status: LimitStatus, threshold: float) -> None:
        if not await self._claim(status, threshold):
            return  # another node sent it
        limit = status.limit
        money = limit.unit is Unit.SPEND
        event = {
            "event": "limit_threshold_reached",
            "threshold": threshold,
            "limit": limit.label,
            "scope": limit.scope,
            "unit": "usd" if money else limit.unit.value,
            "amount": limit.amount / MICRO if money else limit.amount,
            "used": status.used / MICRO if money else status.used,
            "key_id": principal.key_id,
            "user": principal.user,
            "tier": principal.tier,
            "window_start": datetime.fromtimestamp(status.window, UTC).isoformat(),
            "resets_at": datetime.fromtimestamp(time.time() + status.reset_after, UTC).isoformat(timespec="seconds"),
        }
        logger.warning(
            "%s reached %d%% of %s (used %s of %s)",
            principal.key_id,
            round(threshold * 100),
            limit.label,
            event["used"],
            event["amount"],
        )
        if self.settings.webhook:
            await self._post(event)

    async def _post(self, event: dict[str, Any]) -> None:
        assert self.settings.webhook is not None
        if self._client is None:
            self._client = HttpClient()
        body = orjson.dumps(event)
        for pause in (0.0, *_RETRIES):
            if pause:
                await asyncio.sleep(pause)
            try:
                async with asyncio.timeout(_TRY_SECONDS):
                    response = await self._client.post(
                        self.settings.webhook, _WEBHOOK_HEADERS, body, _TRY_SECONDS, _TRY_SECONDS
                    )
                    await response.read(_TRY_SECONDS)
                if response.status < 500 and response.status != 429:
                    self.sent += 1
                    return
            except (ConnectFailed, ConnectTimeout, ReadTimeout, Disconnected, TimeoutError):
                pass
        logger.error("alert webhook %s failed after %d tries", self.settings.webhook, len(_RETRIES) + 1)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        if self._client is not None:
            await self._client.aclose()
