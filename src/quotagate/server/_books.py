"""The account stage: each request's ledger row, metrics and log line, once, however it ended."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from ..accounting import Alerts, Ledger, Metrics, Pricing, UsageRow, cost_usd
from ..limits import Calendar
from ..limits._calendar import window_bounds
from ._record import RequestRecord

logger = logging.getLogger("quotagate.requests")


@dataclass
class Books:
    """What the gateway records about each request: prices, the ledger, metrics and alerts."""

    pricing: Pricing = field(default_factory=Pricing)
    ledger: Ledger | None = None
    metrics: Metrics = field(default_factory=Metrics)
    alerts: Alerts | None = None
    timezone: str = "UTC"
    log_requests: bool = False
    # The models the gateway serves: only those are metrics labels (a client names any model).
    served_models: frozenset[str] = frozenset()
    # (start, end, name) of the day the last row fell in: the name is worked out once a day.
    _day: tuple[float, float, str] = (0.0, 0.0, "")

    def day(self, when: float) -> str:
        """The calendar day of ``when`` in the configured time zone, as YYYY-MM-DD."""
        start, end, name = self._day
        if start <= when < end:
            return name
        start, end, _ = window_bounds(when, Calendar.DAY, self.timezone)
        name = datetime.fromtimestamp(start, ZoneInfo(self.timezone)).date().isoformat()
        self._day = (start, end, name)
        return name

    def cost(self, record: RequestRecord, prompt: int, completion: int) -> float:
        """What the request cost at the serving deployment's price (the model's, failing that)."""
        model = record.charged_model
        if record.exchange is not None:
            price = self.pricing.price_for(record.exchange.target.provider_model, model)
        else:
            price = self.pricing.price_for(model)
        return cost_usd(price, prompt, completion, record.cached, record.cache_written)

    async def account(self, record: RequestRecord, status: int, error_type: str | None) -> None:
        """The request's ledger row and metrics; once per request."""
        if record.done:
            return
        record.done = True
        record.collect_stream_usage()
        now = time.perf_counter()
        model = record.charged_model
        prompt, completion = record.actual()
        exchange = record.exchange
        latency = (now - record.began) * 1000.0
        upstream = (time.monotonic() - exchange.started) * 1000.0 if exchange is not None else None
        wall = time.time()
        row = UsageRow(
            request_id=record.request_id,
            ts=wall,
            day=self.day(wall),
            key_id=record.principal.key_id,
            user_id=record.principal.user,
            tier=record.principal.tier,
            model_requested=record.model,
            model_served=exchange.target.model if exchange is not None else (model if record.cache_hit else None),
            deployment=exchange.target.label if exchange is not None else None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=record.cached,
            # Nothing used costs nothing: a refused request's model (any name a client sends)
            # is never looked up in, and so never cached by, the price list.
            cost_usd=self.cost(record, prompt, completion) if prompt or completion else 0.0,
            latency_ms=latency,
            upstream_ms=upstream,
            overhead_ms=latency - (upstream or 0.0),
            status=status,
            error_type=error_type,
            stream=record.stream,
            client_request_id=record.client_request_id,
            cache_hit=record.cache_hit is not None,
            cache_saved_usd=record.cache_saved_usd,
            route_class=record.route.route_class if record.route is not None else None,
            downgraded_from=record.downgraded_from,
            # NULL where the model it is compared with has no price: a 0 would read as a saving.
            baseline_usd=(
                cost_usd(record.baseline_price, prompt, completion, record.cached, record.cache_written)
                if record.tiered and record.baseline_price is not None
                else None
            ),
            team=record.principal.team,
        )
        # A name the gateway does not serve is the client's choice: never a metrics label.
        self.metrics.observe(row, row.model_served or (model if model in self.served_models else ""))
        if record.tiered:
            routed = record.route.routed if record.route is not None else None
            self.metrics.tiering(routed, row.route_class, row.downgraded_from, row.model_served or "")
        if self.log_requests:
            logger.info(
                "request",
                extra={
                    "request_id": row.request_id,
                    "client_request_id": row.client_request_id,
                    "status": status,
                    "model": model,
                    "ms": round(latency, 2),
                },
            )
        if self.ledger is not None:
            await self.ledger.commit(row)
