"""The configuration contract of issue 21, as the issue writes it, for the tests that start from it."""

from __future__ import annotations

from typing import Any

import yaml

CONTRACT = """
models:
  - name: auto
    route:
      default: routine
      classes:
        - {name: simple,  model: gemini-2.5-flash,  rules: {max_prompt_tokens: 300}, examples: ["Which courier do you ship with?", "你们用什么快递？"]}
        - {name: routine, model: deepseek-v3.2,     examples: ["How do I return an item?"]}
        - {name: complex, model: claude-sonnet-4.5, rules: {keywords: ["why", "为什么"]}, examples: ["Why was my order cancelled after I paid?"]}
tiers:
  free: {on_limit: {downgrade: gemini-2.5-flash}}
limits:
  - {scope: key+model, unit: tokens, amount: 20000, per: minute, match: {model: [claude-sonnet-4.5]}}
"""  # noqa: RUF001 (as the issue writes it, with a Chinese question mark)

# The models its classes name, which a whole configuration adds with their deployments.
SERVED = ("gemini-2.5-flash", "deepseek-v3.2", "claude-sonnet-4.5")


def contract() -> dict[str, Any]:
    """A fresh copy of the contract (tests change theirs)."""
    return dict(yaml.safe_load(CONTRACT))


def routed_model() -> dict[str, Any]:
    """The contract's routed model, ``auto``."""
    return dict(contract()["models"][0])
