"""Cost arithmetic."""

from __future__ import annotations

import pytest

from quotagate.accounting import DEFAULT_PRICES, Price, Pricing, cost_usd, micro_usd


def test_cost_of_a_real_usage_payload() -> None:
    """gpt-4.1 at $2/$8 per million, with cached input at $0.50."""
    usage = {"prompt_tokens": 1200, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 1000}}
    price = Pricing().price_for("gpt-4.1")
    assert price == Price(2.00, 8.00, 0.50)
    cost = cost_usd(price, usage["prompt_tokens"], usage["completion_tokens"], 1000)
    assert cost == pytest.approx((200 * 2.00 + 1000 * 0.50 + 300 * 8.00) / 1e6)


def test_lookup_by_provider_name_and_prefix_and_overrides() -> None:
    """A model is priced by name, then provider name, then the longest known prefix; config overrides win."""
    pricing = Pricing({"house-model": Price(1.0, 2.0)})
    assert pricing.price_for("house-model") == Price(1.0, 2.0)
    assert pricing.price_for("my-alias", "gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert pricing.price_for("gpt-4.1-mini-2025") == DEFAULT_PRICES["gpt-4.1-mini"]  # not gpt-4.1
    assert pricing.price_for("unknown-model") is None
    assert cost_usd(None, 10, 10) == 0.0


def test_shipped_list_prices() -> None:
    """The examples the docs promise."""
    assert DEFAULT_PRICES["claude-sonnet-4.5"] == Price(3.00, 15.00, 0.30, cache_write=3.75)
    assert DEFAULT_PRICES["gemini-2.5-flash"].input == 0.30 and DEFAULT_PRICES["gemini-2.5-flash"].output == 2.50
    assert DEFAULT_PRICES["deepseek-v3.2"] == Price(0.28, 0.42, 0.028)


def test_micro_dollars_round_up() -> None:
    """Budgets are charged whole micro-dollars, never less than was spent."""
    assert micro_usd(0.0000011) == 2
    assert micro_usd(1.0) == 1_000_000
