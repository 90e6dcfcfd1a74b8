"""Configuration: the YAML contract, its validation, and the embedded default."""

from ._defaults import DEMO_MODEL, default_config
from ._loader import ConfigError, load_config, parse_config
from ._models import (
    BreakerSettings,
    Config,
    Deployment,
    LimiterSettings,
    LimitValues,
    ModelConfig,
    RouterSettings,
    ScopedLimit,
    ServerSettings,
    TierLimits,
)
from ._secrets import missing_secrets, resolve_secret

__all__ = [
    "DEMO_MODEL",
    "BreakerSettings",
    "Config",
    "ConfigError",
    "Deployment",
    "LimitValues",
    "LimiterSettings",
    "ModelConfig",
    "RouterSettings",
    "ScopedLimit",
    "ServerSettings",
    "TierLimits",
    "default_config",
    "load_config",
    "missing_secrets",
    "parse_config",
    "resolve_secret",
]
