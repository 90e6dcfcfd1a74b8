"""Prompt-cache writes (Anthropic's cache_creation_input_tokens) at their own price."""

from __future__ import annotations

import types
from typing import cast

import pytest

from quotagate.accounting import DEFAULT_PRICES, Metrics, Price, cost_usd
from quotagate.config import ConfigError, parse_config
from quotagate.server import Gateway

SONNET = Price(3.00, 15.00, 0.30, 3.75)


def test_reads_and_writes_at_their_own_prices() -> None:
    """Of 10,000 prompt tokens, 6,000 read from the cache and 3,000 written to it: the other 1,000
    are uncached."""
    cost = cost_usd(SONNET, 10_000, 500, cached=6_000, cache_written=3_000)
    assert cost == pytest.approx((1_000 * 3.00 + 6_000 * 0.30 + 3_000 * 3.75 + 500 * 15.00) / 1e6)


def test_writes_cost_input_where_no_write_price_is_known() -> None:
    """A price without cache_write charges written tokens as input, as before."""
    price = Price(2.00, 8.00, 0.50)
    assert cost_usd(price, 1_000, 0, cached=200, cache_written=300) == cost_usd(price, 1_000, 0, cached=200)
    assert cost_usd(Price(1.00, 2.00), 1_000, 0, cache_written=1_000) == pytest.approx(1_000 * 1.00 / 1e6)


@pytest.mark.parametrize(
    ("cached", "written", "expected"),
    [
        # Writes overrunning the prompt: all of it written, nothing read.
        pytest.param(0, 5_000, 1_000 * 3.75, id="writes-over-prompt"),
        # Together over the prompt: the reads keep their count, the writes get what is left.
        pytest.param(800, 600, 800 * 0.30 + 200 * 3.75, id="together-over-prompt"),
        pytest.param(5_000, 0, 1_000 * 0.30, id="reads-over-prompt"),
        pytest.param(-5, -5, 1_000 * 3.00, id="negative"),
    ],
)
def test_counts_are_clamped_to_the_prompt(cached: int, written: int, expected: float) -> None:
    """Cache reads and writes never count for more than the prompt (nor less than nothing)."""
    assert cost_usd(SONNET, 1_000, 0, cached, written) == pytest.approx(expected / 1e6)


def test_shipped_claude_prices_have_anthropics_five_minute_write_price() -> None:
    """Claude's cache writes are priced at 1.25x input, as Anthropic lists its 5-minute cache."""
    assert DEFAULT_PRICES["claude-sonnet-4.5"] == SONNET
    assert DEFAULT_PRICES["claude-sonnet-4-5"].cache_write == 3.75
    assert DEFAULT_PRICES["claude-haiku-4.5"].cache_write == DEFAULT_PRICES["claude-haiku-4-5"].cache_write == 1.25
    assert DEFAULT_PRICES["claude-opus-4.1"].cache_write == 18.75
    assert DEFAULT_PRICES["gpt-4.1"].cache_write is None


def test_configured_cache_write_price_reaches_the_books() -> None:
    """`pricing:` takes cache_write, and the gateway's books price writes with it."""
    config = parse_config(
        {
            "models": [
                {"name": "m", "deployments": [{"provider": "openai-compatible", "base_url": "http://a.test/v1"}]}
            ],
            "pricing": {"house-claude": {"input": 2, "output": 10, "cached_input": 0.2, "cache_write": 2.5}},
        }
    )
    assert config.pricing["house-claude"].cache_write == 2.5
    gateway = cast(Gateway, types.SimpleNamespace(ledger=None, metrics=Metrics(), alerts=None))
    books = Gateway._make_books(gateway, config)
    assert books.pricing.price_for("house-claude") == Price(2.0, 10.0, 0.2, 2.5)


@pytest.mark.parametrize("value", [-1, "a lot"])
def test_configured_cache_write_price_is_validated(value: object) -> None:
    """A negative or non-numeric cache_write is a configuration error, as cached_input's is."""
    with pytest.raises(ConfigError, match="cache_write"):
        parse_config({"pricing": {"m": {"input": 1, "output": 1, "cache_write": value}}})
