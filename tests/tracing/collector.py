"""An OTLP/HTTP collector in the test process: POST /v1/traces bodies (protobuf
ExportTraceServiceRequest) decoded with opentelemetry-proto, their spans kept in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
}
STATUSES = {Status.STATUS_CODE_UNSET: "unset", Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which) if which is not None else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass
class ExportedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str
    status_message: str
    resource: dict[str, Any]
    children: list[ExportedSpan] = field(default_factory=list)

    def tree(self, depth: int = 0) -> str:
        """The span and its children, one a line, indented, with their attributes."""
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(self.attributes.items()))
        lines = [f"{'  ' * depth}{self.name} [{self.kind}, {self.status}] {shown}"]
        lines.extend(child.tree(depth + 1) for child in sorted(self.children, key=lambda s: s.start_ns))
        return "\n".join(lines)


class Collector:
    """The ASGI app of the collector (run it with conftest's ServerThread)."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self.exports: list[dict[str, str]] = []  # each POST's headers
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] != "POST" or scope["path"] != "/v1/traces":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ExportedSpan(
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes=_attributes(span.attributes),
                            status=STATUSES[span.status.code],
                            status_message=span.status.message,
                            resource=resource,
                        )
                    )
        with self._lock:
            self.exports.append({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
            self.spans.extend(spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-protobuf")]}
        )
        await send({"type": "http.response.body", "body": answer})

    def trace_of(self, request_id: str, timeout: float = 10.0) -> ExportedSpan:
        """The request span whose quotagate.request_id is ``request_id``, with its children, once
        the request span and every span of its trace it had started have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            roots = [s for s in spans if s.attributes.get("quotagate.request_id") == request_id]
            if roots:
                root = roots[0]
                root.children = [s for s in spans if s.parent_id == root.span_id]
                return root
            if time.monotonic() > deadline:
                raise AssertionError(f"no span of request {request_id} arrived ({len(spans)} spans did)")
            time.sleep(0.02)
