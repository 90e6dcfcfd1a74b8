"""What the client sees of the limits: 429 errors and the x-ratelimit-* headers."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from ..errors import GatewayError
from ..limits import Algorithm, Decision, Limit, LimitStatus, Unit

_TOKEN_UNITS = (Unit.TOKENS, Unit.INPUT_TOKENS, Unit.OUTPUT_TOKENS)


class RateLimitError(GatewayError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"
    # The refusal it tells of: the Messages surface says it in Anthropic's headers.
    decision: Decision | None = None


def go_duration(seconds: float) -> str:
    """A duration as Go prints it, as OpenAI's x-ratelimit-reset-* do: 20ms, 1.5s, 6m0s, 1h2m3s."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


def ratelimit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the tightest limit of each kind."""
    requests: LimitStatus | None = None
    tokens: LimitStatus | None = None
    for status in decision.statuses:
        unit = status.limit.unit
        if unit == "requests":  # by value: see limits/_usage.costs_on
            if requests is None or status.remaining < requests.remaining:
                requests = status
        elif unit in _TOKEN_UNITS and (tokens is None or status.remaining < tokens.remaining):
            tokens = status
    headers: list[tuple[bytes, bytes]] = []
    for tightest, names in ((requests, _REQUEST_HEADERS), (tokens, _TOKEN_HEADERS)):
        if tightest is not None:
            headers.append((names[0], b"%d" % tightest.limit.capacity))
            headers.append((names[1], b"%d" % tightest.remaining))
            headers.append((names[2], go_duration(tightest.reset_after).encode()))
    return headers


_REQUEST_HEADERS = (b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests")
_TOKEN_HEADERS = (b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens")


# Anthropic's names: requests, tokens (the tightest of any token limit), and input and output tokens
# for limits that count only those.
_ANTHROPIC_KINDS = (
    (b"requests", (Unit.REQUESTS,)),
    (b"tokens", _TOKEN_UNITS),
    (b"input-tokens", (Unit.INPUT_TOKENS,)),
    (b"output-tokens", (Unit.OUTPUT_TOKENS,)),
)


def anthropic_ratelimit_headers(decision: Decision, now: float) -> list[tuple[bytes, bytes]]:
    """anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}
    for the tightest of the tenant's limits of each kind; reset is an RFC 3339 time, as
    Anthropic's."""
    headers: list[tuple[bytes, bytes]] = []
    for kind, units in _ANTHROPIC_KINDS:
        tightest: LimitStatus | None = None
        for status in decision.statuses:
            if status.limit.unit in units and (tightest is None or status.remaining < tightest.remaining):
                tightest = status
        if tightest is None:
            continue
        prefix = b"anthropic-ratelimit-" + kind
        reset = datetime.fromtimestamp(now + max(0.0, tightest.reset_after), UTC).isoformat(timespec="seconds")
        headers.append((prefix + b"-limit", b"%d" % tightest.limit.capacity))
        headers.append((prefix + b"-remaining", b"%d" % max(0, tightest.remaining)))
        headers.append((prefix + b"-reset", reset.replace("+00:00", "Z").encode()))
    return headers


def _amount(limit: Limit, value: int) -> str:
    # Budgets count micro-dollars; people read dollars.
    if limit.unit is Unit.SPEND:
        return f"${value / 1_000_000:,.2f}" if value >= 10_000 or value == 0 else f"${value / 1_000_000:.6f}"
    return str(value)


def rate_limit_error(decision: Decision, now: float) -> RateLimitError:
    """The 429 for a refusal of the tenant's limits, with its x-ratelimit-* and retry-after."""
    error = _refusal(decision, now)
    error.decision = decision
    return error


def _refusal(decision: Decision, now: float) -> RateLimitError:
    status = decision.denied_by
    assert status is not None
    limit = status.limit
    requested = decision.costs[decision.statuses.index(status)] if decision.costs else 1
    headers = {name.decode(): value.decode() for name, value in ratelimit_headers(decision)}
    if decision.never_fits:
        # No Retry-After: waiting cannot help, and a client that honours it would retry forever.
        return RateLimitError(
            f"Request too large for {limit.label}: limit {_amount(limit, limit.capacity)}, "
            f"requested {_amount(limit, requested)}. "
            "It can never be admitted; shorten the prompt or lower max_tokens.",
            code="request_too_large",
            headers=headers,
        )
    retry = decision.retry_after
    headers["retry-after"] = str(max(1, math.ceil(retry)))
    headers["retry-after-ms"] = str(max(1, math.ceil(retry * 1000)))
    if limit.algorithm is Algorithm.CALENDAR:
        resets = datetime.fromtimestamp(now + status.reset_after, ZoneInfo(limit.timezone))
        return RateLimitError(
            f"You exceeded your quota of {limit.label}: limit {_amount(limit, limit.amount)}, "
            f"used {_amount(limit, status.used)}, requested {_amount(limit, requested)}. "
            f"It resets at {resets.isoformat(timespec='seconds')}.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    if limit.algorithm is Algorithm.CONCURRENCY:
        message = f"Too many {limit.label}: limit {limit.amount}, in flight {status.used}. Try again in {retry:.1f}s."
    else:
        message = (
            f"Rate limit reached for {limit.label}: limit {limit.capacity}, used {status.used}, "
            f"requested {requested}. Try again in {retry:.1f}s."
        )
    kind = "tokens_rate_limit_exceeded" if limit.unit in _TOKEN_UNITS else "rate_limit_exceeded"
    return RateLimitError(message, type=kind, headers=headers)
