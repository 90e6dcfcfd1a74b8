"""Tracing: an OpenTelemetry span per request (OTLP over HTTP), off unless ``tracing.enabled``.

``start_tracing(settings)`` is None when tracing is off, and the proxy then asks nothing of this
package: OpenTelemetry is not even imported. When it is on, ``Tracing.request`` gives each request
a ``RequestTrace`` (None when it is not sampled), whose methods the proxy and the router call at
the stages it records (see _otel for the spans, _conventions for what they say). OpenTelemetry's
SDK and OTLP exporter are the ``otel`` extra: ``pip install 'quotagate[otel]'``.
"""

from ._start import start_tracing

__all__ = ["start_tracing"]
