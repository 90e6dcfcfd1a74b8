"""The embedded default: what ``quotagate serve`` runs with no configuration file.

SQLite next to where it runs, the in-process limit store, a free/paid/enterprise tier set, and
a demo model. When ``OPENAI_API_KEY`` is in the environment the demo model is OpenAI's
gpt-4o-mini; otherwise it is served by a mock upstream the gateway starts itself, so a newcomer
can talk to it at once with nothing configured.
"""

from __future__ import annotations

import os

from ._models import Config, Deployment, ModelConfig, TierLimits

DEMO_MODEL = "gpt-4o-mini"


def default_config(mock_upstream_url: str | None) -> Config:
    if mock_upstream_url is None:
        deployment = Deployment(provider="openai", api_key="env:OPENAI_API_KEY", model=DEMO_MODEL)
    else:
        deployment = Deployment(provider="openai-compatible", base_url=mock_upstream_url)
    return Config(
        tiers={
            "free": TierLimits(rpm=60, rph=1000, tpd=100_000),
            "paid": TierLimits(rpm=600, rph=10_000, tpd=10_000_000),
            "enterprise": TierLimits(rpm=6000, rph=100_000, tpd=100_000_000),
        },
        models=[ModelConfig(name=DEMO_MODEL, deployments=[deployment])],
    )


def provider_key_configured() -> bool:
    return bool(os.environ.get("OPENAI_API_KEY"))
