"""Threshold alerts on quotas and budgets: a webhook and a log line, once per threshold per window.

A calendar limit (a daily token quota, a monthly budget) whose real use reaches a configured
fraction of its amount fires once for that window, even with several gateway nodes: the first
node to claim the alert in Redis (SET NX) sends it. Use is judged once the request is settled,
from what it used; a request that passes several thresholds at once sends the highest, with the
real figures. A request a quota or budget refuses sends a ``limit_refused`` event (once per
window), saying what was used and what the request needed. The webhook is a JSON POST, retried
with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from .._logging import EveryFewSeconds
from ..auth import Principal
from ..config import AlertSettings
from ..limits import Decision, Limit, LimitStatus, Unit
from ..redis import RedisClient
from ..upstream import USER_AGENT
from ..upstream._http import ConnectFailed, ConnectTimeout, Disconnected, HttpClient, ReadTimeout
from ._pricing import MICRO

logger = logging.getLogger("quotagate.alerts")
_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)
_TRY_SECONDS = 5.0
_WEBHOOK_HEADERS = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
# The marker of a refusal among the thresholds (which are fractions in (0, 1]).
_REFUSED = -1.0
# Reads limits' current state from the store (Limiter.status).
StatusSource = Callable[[Sequence[Limit]], Awaitable[tuple[LimitStatus, ...]]]


def _claim_key(status: LimitStatus, threshold: float) -> str:
    what = "refused" if threshold == _REFUSED else f"{threshold:g}"
    return f"qg:alert:{status.limit.key}:{status.window:.0f}:{what}"


class Alerts:
    def __init__(self, settings: AlertSettings, redis: RedisClient | None = None) -> None:
        self.settings = settings
        self.redis = redis
        # (limit key, window, threshold or _REFUSED): what this node has fired or seen fired.
        self._fired: set[tuple[str, float, float]] = set()
        self._client: HttpClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        # Read after every settled request: with the store down it would fail for each one.
        self._log_unread = EveryFewSeconds(logger)

    def settled(
        self,
        principal: Principal,
        decision: Decision,
        deltas: Sequence[int] | None,
        status: StatusSource,
    ) -> None:
        """After a request is settled (``deltas``: what it used minus what it was charged, per
        limit; None when nothing was settled), fire what its quotas and budgets really reached.

        At the decision a token quota or a budget holds the request's estimate (prompt plus
        max_tokens, the most it could cost), not what it used: checked there, a request that
        reserved 60 % of a daily quota and used 1 % fired the 50 % alert, and one that settled
        past the amount fired nothing until the next request. So thresholds are checked here.
        Where the settlement moved a figure, it is read again from the store before anything
        is sent (``status``, in the background), because other requests settled in between;
        that happens only when a threshold not yet fired seems crossed.
        """
        if not self.settings.thresholds:
            return
        confirm: list[Limit] = []
        for index, limit_status in enumerate(decision.statuses):
            limit = limit_status.limit
            if limit.algorithm != "calendar":  # by value: see limits/_usage.costs_on
                continue
            delta = deltas[index] if deltas is not None else 0
            threshold = self._new_threshold(limit, limit_status.window, limit_status.used + delta)
            if threshold is None:
                continue
            if delta:
                confirm.append(limit)
            else:
                # Nothing settled: the decision's figure is the store's own, as it left it.
                self._begin(principal, limit_status, threshold)
        if confirm:
            self._spawn(self._confirm(principal, confirm, status))

    def refused(self, principal: Principal, decision: Decision) -> None:
        """A quota or budget refused a request: say so, once per window, with what was used and
        what the request needed (a refusal at 92 of 100 is not "100 % used")."""
        denied = decision.denied_by
        if not self.settings.thresholds or denied is None or denied.limit.algorithm != "calendar":
            return
        marker = (denied.limit.key, denied.window, _REFUSED)
        if marker in self._fired:
            return
        self._fired.add(marker)
        requested = decision.costs[decision.statuses.index(denied)] if decision.costs else 0
        self._spawn(self._fire(principal, denied, _REFUSED, requested))

    def _new_threshold(self, limit: Limit, window: float, used: int) -> float | None:
        """The highest threshold ``used`` has reached, unless it was fired already (then so were
        the ones below it); None when there is nothing new to say."""
        fraction = used / limit.amount
        highest = None
        for threshold in self.settings.thresholds:  # sorted
            if fraction + 1e-9 < threshold:
                break
            highest = threshold
        if highest is None or (limit.key, window, highest) in self._fired:
            return None
        return highest

    def _begin(self, principal: Principal, status: LimitStatus, threshold: float) -> None:
        """Fire ``threshold`` and mark it and every lower one as done: a request that takes a
        quota from 40 % to 120 % sends one alert, "reached 100 %" with its real figures, not
        three, and "reached 50 %" never follows "reached 100 %" later in the window."""
        limit = status.limit
        for lower in self.settings.thresholds:
            if lower > threshold:
                break
            self._fired.add((limit.key, status.window, lower))
        self._spawn(self._fire(principal, status, threshold))

    async def _confirm(self, principal: Principal, limits: list[Limit], status: StatusSource) -> None:
        try:
            statuses = await status(limits)
        except Exception as exc:
            self._log_unread.warning(
                "could not read %d limits for alerts (%s); the next request checks again", len(limits), exc
            )
            return
        for limit_status in statuses:
            threshold = self._new_threshold(limit_status.limit, limit_status.window, limit_status.used)
            if threshold is not None:
                self._begin(principal, limit_status, threshold)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim(self, status: LimitStatus, threshold: float) -> bool:
        if self.redis is None:
            return True
        ttl = max(60, int(status.reset_after) + 86400)
        try:
            claimed = await self.redis.execute("SET", _claim_key(status, threshold), "1", "NX", "EX", ttl) is not None
            if claimed and threshold != _REFUSED:
                # The thresholds below are passed too: no other node is to send them now.
                for lower in self.settings.thresholds:
                    if lower >= threshold:
                        break
                    await self.redis.execute("SET", _claim_key(status, lower), "1", "NX", "EX", ttl)
            return claimed  # nil: already set, another node sent it
        except Exception as exc:
            logger.warning("could not claim an alert in Redis (%s); sending it anyway", exc)
            return True

    async def _fire(self, principal: Principal, status: LimitStatus, threshold: float, requested: int = 0) -> None:
        if not await self._claim(status, threshold):
            return  # another node sent it
        limit = status.limit
        money = limit.unit is Unit.SPEND

        def amount(value: int) -> float | int:
            return value / MICRO if money else value

        refused = threshold == _REFUSED
        event: dict[str, Any] = {
            "event": "limit_refused" if refused else "limit_threshold_reached",
            "limit": limit.label,
            "scope": limit.scope,
            "unit": "usd" if money else limit.unit.value,
            "amount": amount(limit.amount),
            "used": amount(status.used),
            "fraction": round(status.used / limit.amount, 4),
            "key_id": principal.key_id,
            "user": principal.user,
            "team": principal.team,  # a team's shared limit: which team (the label names it too)
            "tier": principal.tier,
            "window_start": datetime.fromtimestamp(status.window, UTC).isoformat(),
            "resets_at": datetime.fromtimestamp(time.time() + status.reset_after, UTC).isoformat(timespec="seconds"),
        }
        if refused:
            event["requested"] = amount(requested)
            event["remaining"] = amount(status.remaining)
            logger.warning(
                "%s was refused by %s: used %s of %s, the request needed %s; it resets at %s",
                principal.key_id,
                limit.label,
                event["used"],
                event["amount"],
                event["requested"],
                event["resets_at"],
            )
        else:
            event["threshold"] = threshold
            logger.warning(
                "%s reached %d%% of %s: used %s of %s (%s%%)",
                principal.key_id,
                round(threshold * 100),
                limit.label,
                event["used"],
                event["amount"],
                f"{status.used / limit.amount * 100:.4g}",
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
