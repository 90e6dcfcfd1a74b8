"""Accounting: prices and costs, the usage ledger, reports, alerts and metrics."""

from ._alerts import Alerts
from ._metrics import Metrics, limit_kind
from ._pricing import DEFAULT_PRICES, MICRO, Price, Pricing, cost_usd, micro_usd
from ._reports import Report, usage_report
from .ledger import Ledger, SqlWriter, StreamLedger, UsageRow, usage_table

__all__ = [
    "DEFAULT_PRICES",
    "MICRO",
    "Alerts",
    "Ledger",
    "Metrics",
    "Price",
    "Pricing",
    "Report",
    "SqlWriter",
    "StreamLedger",
    "UsageRow",
    "cost_usd",
    "limit_kind",
    "micro_usd",
    "usage_report",
    "usage_table",
]
