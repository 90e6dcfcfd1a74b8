"""When and how long to wait before trying a request again."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import openai

# What retrying can fix: the provider's rate limits and failures, and the network's.
RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APIConnectionError,
    openai.ConflictError,
)


def retry_after_seconds(exc: BaseException) -> float | None:
    """The wait the provider asked for (retry-after-ms, retry-after seconds or HTTP date)."""
    response: Any = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; a provider's Retry-After is always honoured."""

    max_retries: int = 4
    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, exc: BaseException) -> float:
        asked = retry_after_seconds(exc)
        if asked is not None:
            # A little spread so that many clients told the same time do not return at once.
            return asked + self.rng.uniform(0, min(1.0, asked * 0.1))
        return self.rng.uniform(0, min(self.cap, self.base * 2**attempt))
