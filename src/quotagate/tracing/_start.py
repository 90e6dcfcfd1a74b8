"""Building the tracer from the ``tracing:`` settings, at start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._version import __version__
from ..config import ConfigError, resolve_secret

if TYPE_CHECKING:
    from ..config._models import TracingSettings
    from ._otel import Tracing


def start_tracing(settings: TracingSettings) -> Tracing | None:
    """The gateway's tracer, or None when tracing is off (OpenTelemetry is then never imported).
    ConfigError when it is on but OpenTelemetry's SDK is not installed, or a header's
    environment variable is not set."""
    if not settings.enabled:
        return None
    headers = {}
    for name, value in settings.headers.items():
        # A reference is resolved now: a variable that is not set fails the start, not each export.
        resolved = resolve_secret(value, f"tracing.headers.{name}") if value.startswith("env:") else value
        headers[name] = resolved if resolved is not None else value
    try:
        from ._otel import Tracing
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"tracing.enabled needs OpenTelemetry's SDK and OTLP exporter ({exc.name or exc} is missing): "
            "pip install 'quotagate[otel]'"
        ) from None
    return Tracing(settings, headers, __version__)
