"""Configuration: the YAML contract, its validation, and the embedded default."""

from ._defaults import DEMO_MODEL, default_config
from ._loader import ConfigError, load_config, parse_config
from ._models import (
    AlertSettings,
    BreakerSettings,
    CacheRule,
    CacheSettings,
    Config,
    CurrencySettings,
    Deployment,
    LedgerSettings,
    LimiterSettings,
    LimitValues,
    LoggingSettings,
    MetricsSettings,
    ModelConfig,
    PriceConfig,
    RouterSettings,
    ScopedLimit,
    ServerSettings,
    TierLimits,
)
from ._secrets import known_secrets, missing_secrets, resolve_secret

__all__ = [
    "DEMO_MODEL",
    "AlertSettings",
    "BreakerSettings",
    "CacheRule",
    "CacheSettings",
    "Config",
    "ConfigError",
    "CurrencySettings",
    "Deployment",
    "LedgerSettings",
    "LimitValues",
    "LimiterSettings",
    "LoggingSettings",
    "MetricsSettings",
    "ModelConfig",
    "PriceConfig",
    "RouterSettings",
    "ScopedLimit",
    "ServerSettings",
    "TierLimits",
    "default_config",
    "known_secrets",
    "load_config",
    "missing_secrets",
    "parse_config",
    "resolve_secret",
]
