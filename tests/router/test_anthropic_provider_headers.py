"""Anthropic's rate-limit headers: anthropic-ratelimit-*-remaining, and *-reset as RFC 3339 times.

The parsing is tested with its clock given (``now``); the router's reaction to a 429 through the
scripted transport of test_router, with the wall clock the reset times are read by fixed.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime

import pytest

from quotagate.router import _provider_headers
from quotagate.router._provider_headers import exhausted_resets, reset_wait, retry_after, seconds_until

from .test_router import Harness, Response, deployment, ok, one_model, served_by, status

NOW = datetime(2026, 12, 5, 4, 30, 0, tzinfo=UTC).timestamp()
LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")


def anthropic_headers(exhausted: dict[str, str] | None = None) -> dict[str, str]:
    """An answer's headers as Anthropic sends them: every limit with some left, reset in a minute,
    but those in ``exhausted`` (limit: reset time), which have nothing left."""
    headers = {}
    for limit in LIMITS:
        headers[f"anthropic-ratelimit-{limit}-limit"] = "1000"
        headers[f"anthropic-ratelimit-{limit}-remaining"] = "999"
        headers[f"anthropic-ratelimit-{limit}-reset"] = "2026-12-05T04:31:00Z"
    for limit, reset in (exhausted or {}).items():
        headers[f"anthropic-ratelimit-{limit}-remaining"] = "0"
        headers[f"anthropic-ratelimit-{limit}-reset"] = reset
    return headers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("2026-12-05T04:30:12Z", 12.0, id="Z"),
        pytest.param("2026-12-05T04:30:12+00:00", 12.0, id="+00:00"),
        pytest.param("2026-12-05T06:30:12+02:00", 12.0, id="+02:00"),
        pytest.param("2026-12-05T04:30:12.25Z", 12.25, id="fraction"),
        pytest.param("2026-12-05T04:30:12.250000000Z", 12.25, id="nanoseconds"),
        pytest.param("2026-12-05t04:30:12z", 12.0, id="lower-case"),
    ],
)
def test_reset_times_are_read_as_rfc3339(text: str, seconds: float) -> None:
    """An RFC 3339 reset time, with any offset and fractional seconds, is that many seconds away."""
    assert seconds_until(text, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2026-12-05T04:29:59Z", id="past"),
        pytest.param("2026-12-05T04:30:00Z", id="now"),
        pytest.param("garbage", id="garbage"),
        pytest.param("12s", id="a duration"),
        pytest.param("2026-12-05T04:30:12", id="no offset"),
        pytest.param("2026-13-05T04:30:12Z", id="no such month"),
        pytest.param("", id="empty"),
        pytest.param(None, id="missing"),
    ],
)
def test_reset_times_past_or_unreadable_are_none(text: str | None) -> None:
    """A reset that has passed, or that is no RFC 3339 time (one without an offset included), is none."""
    assert seconds_until(text, NOW) is None


def test_exhausted_anthropic_limits_give_their_resets() -> None:
    """Each Anthropic limit with "0" remaining gives the seconds to its reset; the others nothing."""
    headers = anthropic_headers({"input-tokens": "2026-12-05T04:30:05Z", "output-tokens": "2026-12-05T04:30:20.5Z"})
    assert exhausted_resets(headers, now=NOW) == [5.0, 20.5]
    assert exhausted_resets(anthropic_headers(), now=NOW) == []


def test_every_anthropic_limit_is_read() -> None:
    """requests, tokens, input-tokens and output-tokens each count."""
    for limit in LIMITS:
        assert exhausted_resets(anthropic_headers({limit: "2026-12-05T04:30:30Z"}), now=NOW) == [30.0]


def test_exhausted_anthropic_limits_with_past_or_unreadable_resets_are_skipped() -> None:
    """A reset in the past, or unreadable, gives no cooldown; the readable ones still count."""
    headers = anthropic_headers(
        {
            "requests": "2026-12-05T04:29:00Z",
            "tokens": "soon",
            "input-tokens": "",
            "output-tokens": "2026-12-05T04:30:07Z",
        }
    )
    assert exhausted_resets(headers, now=NOW) == [7.0]


def test_anthropic_resets_are_read_by_the_wall_clock_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``now``, the reset times are read against time.time()."""
    monkeypatch.setattr(_provider_headers, "time", types.SimpleNamespace(time=lambda: NOW))
    assert exhausted_resets(anthropic_headers({"tokens": "2026-12-05T04:30:09Z"})) == [9.0]


def test_x_ratelimit_headers_are_read_as_before() -> None:
    """OpenAI-style x-ratelimit-* headers still give their Go-style durations, beside Anthropic's."""
    openai = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m30s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "250ms",
    }
    assert exhausted_resets(openai, now=NOW) == [90.0, 0.25]
    assert exhausted_resets({**openai, "x-ratelimit-remaining-tokens": "12"}, now=NOW) == [90.0]
    assert exhausted_resets({"x-ratelimit-reset-requests": "1s"}, now=NOW) == []
    both = {**openai, **anthropic_headers({"requests": "2026-12-05T04:30:02Z"})}
    assert exhausted_resets(both, now=NOW) == [90.0, 0.25, 2.0]


def test_the_clock_is_not_read_when_nothing_is_exhausted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most answers have something left of every limit: they cost no reading of the clock."""
    monkeypatch.setattr(_provider_headers, "time", None)  # any read of it would raise
    assert exhausted_resets(anthropic_headers()) == []
    assert exhausted_resets({"content-type": "application/json"}) == []


def test_a_429_with_anthropics_headers_gives_its_retry_after() -> None:
    """Anthropic's 429 says retry-after in seconds: that is the wait."""
    headers = {"retry-after": "17", **anthropic_headers({"requests": "2026-12-05T04:30:40Z"})}
    assert retry_after(headers) == 17.0


def test_reset_wait_reads_x_ratelimit_then_anthropic() -> None:
    """The request limit's reset: x-ratelimit-reset-requests's duration first, else Anthropic's time."""
    anthropic = anthropic_headers({"requests": "2026-12-05T04:30:40Z"})
    assert reset_wait(anthropic, now=NOW) == 40.0
    assert reset_wait({**anthropic, "x-ratelimit-reset-requests": "3s"}, now=NOW) == 3.0
    assert reset_wait({"x-ratelimit-reset-requests": "6m0s"}, now=NOW) == 360.0
    assert reset_wait({"anthropic-ratelimit-requests-reset": "2026-12-05T04:29:00Z"}, now=NOW) is None
    assert reset_wait({}, now=NOW) is None


# -- the router's reaction -----------------------------------------------------------------------


async def test_anthropic_429_cools_down_for_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 429 with Anthropic's headers and retry-after: 7 sends requests elsewhere for 7 seconds."""
    monkeypatch.setattr(_provider_headers, "time", types.SimpleNamespace(time=lambda: NOW))
    limited = {"retry-after": "7", **anthropic_headers({"requests": "2026-12-05T04:31:00Z"})}
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [status(429, limited), ok()], "b": [ok()]},
    )
    assert served_by(await h.request()) == "b"
    h.clock.advance(6.5)
    assert served_by(await h.request()) == "b"
    h.clock.advance(1.0)
    assert served_by(await h.request()) == "a"


async def test_anthropic_429_without_retry_after_cools_down_until_the_requests_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 429 that names no wait cools its deployment down until anthropic-ratelimit-requests-reset,
    not for the default."""
    monkeypatch.setattr(_provider_headers, "time", types.SimpleNamespace(time=lambda: NOW))
    limited = anthropic_headers({"requests": "2026-12-05T04:30:12Z"})
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [status(429, limited), ok()], "b": [ok()]},
        default_cooldown_seconds=4,
    )
    assert served_by(await h.request()) == "b"
    h.clock.advance(11.5)
    assert served_by(await h.request()) == "b"
    h.clock.advance(1.0)
    assert served_by(await h.request()) == "a"


async def test_anthropic_answer_with_a_limit_exhausted_cools_its_deployment_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 200 that says a limit has nothing left serves, then rests its deployment until the reset."""
    monkeypatch.setattr(_provider_headers, "time", types.SimpleNamespace(time=lambda: NOW))
    last = anthropic_headers({"output-tokens": "2026-12-05T04:30:05Z"})
    h = Harness(
        monkeypatch,
        one_model(deployment("a", priority=0), deployment("b", priority=1)),
        {"a": [lambda request, clock: Response(200, b"{}", last), ok()], "b": [ok()]},
    )
    assert served_by(await h.request()) == "a"
    assert served_by(await h.request()) == "b"
    h.clock.advance(5.5)
    assert served_by(await h.request()) == "a"


def test_a_reset_far_off_is_capped_at_a_minute() -> None:
    """A reset time is read by this host's clock: one minutes ahead of it (a clock that is behind)
    cools a deployment down for at most a minute, the longest Anthropic's limits take to refill."""
    assert seconds_until("2026-12-05T05:00:00Z", datetime(2026, 12, 5, 4, 30, tzinfo=UTC).timestamp()) == 60.0
