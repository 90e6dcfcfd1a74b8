"""What a request costs: list prices per million tokens, and the arithmetic.

The shipped table holds providers' public list prices (USD per million tokens: input, output,
cached input and, for Anthropic, prompt-cache writes), as published in 2025-2026; `pricing:` in
the configuration overrides or adds entries. A model is priced by its gateway name, then its name
at the provider, then the longest known prefix (so "gpt-4o-mini-2024-07-18" is priced as
"gpt-4o-mini").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Price:
    input: float
    output: float
    cached_input: float | None = None  # None: cached input costs what input costs
    # Prompt-cache writes (Anthropic's cache_creation_input_tokens). None: they cost what input costs.
    cache_write: float | None = None


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "o3": Price(2.00, 8.00, 0.50),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    # Anthropic's cache writes at the 5-minute cache's price (1.25x input): a 1-hour cache's writes
    # cost 2x input, but cost_usd is given only how many tokens were written, not for how long.
    "claude-sonnet-4.5": Price(3.00, 15.00, 0.30, 3.75),
    "claude-sonnet-4-5": Price(3.00, 15.00, 0.30, 3.75),
    "claude-haiku-4.5": Price(1.00, 5.00, 0.10, 1.25),
    "claude-haiku-4-5": Price(1.00, 5.00, 0.10, 1.25),
    "claude-opus-4.1": Price(15.00, 75.00, 1.50, 18.75),
    # Anthropic's own ids (claude-opus-4-1-20250805, ...) are priced by these prefixes.
    "claude-opus-4-1": Price(15.00, 75.00, 1.50, 18.75),
    "claude-opus-4.5": Price(5.00, 25.00, 0.50, 6.25),
    "claude-opus-4-5": Price(5.00, 25.00, 0.50, 6.25),
    "claude-sonnet-4": Price(3.00, 15.00, 0.30, 3.75),
    "gemini-2.5-pro": Price(1.25, 10.00, 0.31),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.075),
    "gemini-2.5-flash-lite": Price(0.10, 0.40, 0.025),
    # DeepSeek V3.2 behind both endpoints: $0.28 cache miss, $0.028 cache hit, $0.42 output.
    "deepseek-v3.2": Price(0.28, 0.42, 0.028),
    "deepseek-chat": Price(0.28, 0.42, 0.028),
    "deepseek-reasoner": Price(0.28, 0.42, 0.028),
}

MICRO = 1_000_000  # spend limits count micro-dollars, so that the engine keeps integers


class Pricing:
    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self.prices = {**DEFAULT_PRICES, **(overrides or {})}
        self._by_length = sorted(self.prices, key=len, reverse=True)
        self._cache: dict[tuple[str, ...], Price | None] = {}

    def price_for(self, *names: str) -> Price | None:
        cached = self._cache.get(names, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        found: Price | None = None
        for name in names:
            if name in self.prices:
                found = self.prices[name]
                break
        else:
            for name in names:
                short = name.rsplit("/", 1)[-1]
                prefix = next((known for known in self._by_length if short.startswith(known)), None)
                if prefix is not None:
                    found = self.prices[prefix]
                    break
        self._cache[names] = found
        return found


def cost_usd(price: Price | None, prompt: int, completion: int, cached: int = 0, cache_written: int = 0) -> float:
    """USD for a request: of its ``prompt`` tokens (all of them), ``cached`` read from a prompt
    cache and ``cache_written`` to one, the rest uncached; and ``completion`` tokens."""
    if price is None:
        return 0.0
    # Conditionals, not min/max: this runs for every request, and the builtins cost 5x here.
    if cached < 0:
        cached = 0
    elif cached > prompt:
        cached = prompt
    cached_rate = price.input if price.cached_input is None else price.cached_input
    usd = (prompt - cached) * price.input + cached * cached_rate + completion * price.output
    if cache_written > 0 and price.cache_write is not None:
        # Only answers that wrote to a prompt cache pay for this: those tokens, counted as input
        # above, at the write price instead (never more of them than the prompt has uncached).
        if cache_written > prompt - cached:
            cache_written = prompt - cached
        usd += cache_written * (price.cache_write - price.input)
    return usd / 1e6


def micro_usd(usd: float) -> int:
    """Whole micro-dollars, rounded up: a budget is never charged less than was spent."""
    return math.ceil(usd * MICRO - 1e-9)
