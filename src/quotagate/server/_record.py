"""One request on its way through the stages: who asked, what it is charged where, what it used.

The stages write to it as they go (the tokens stage its estimate, the limits stage its tenant
charge, the router its exchange, the relay what the provider reported); the account stage reads
it once to make the request's ledger row.
"""

from __future__ import annotations

import re
from typing import Any

from ..accounting import Price
from ..auth import Principal
from ..cache import CacheHit
from ..errors import GatewayError
from ..router import Exchange
from ..tiering import RoutePlan
from ..tokens import count_generated
from ._disconnect import DisconnectWatch
from ._stream_usage import StreamReader
from ._tenant import TenantCharge


class RequestRecord:
    """One request on its way through: what it is charged where, what it used, and what the
    ledger will see. One object rather than three: it is made for every request."""

    __slots__ = (
        "answer",
        "baseline_price",
        "began",
        "cache_hit",
        "cache_saved_usd",
        "cache_written",
        "cached",
        "client_request_id",
        "counted",
        "counted_text",
        "done",
        "downgrade_reason",
        "downgraded_from",
        "exchange",
        "generated",
        "model",
        "principal",
        "prompt_reported",
        "reported",
        "request_id",
        "route",
        "stream",
        "stream_usage",
        "tenant",
        "upstream_answered",
        "watch",
    )

    def __init__(
        self,
        request_id: str,
        client_request_id: str | None,
        principal: Principal,
        model: str | None,
        stream: bool,
        began: float,
    ) -> None:
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.principal = principal
        self.model = model  # None: the request was refused before it named a model
        self.stream = stream
        self.began = began
        # Its hold on the tenant's limits, and the model that serves it (None: refused before).
        self.tenant: TenantCharge | None = None
        # What the request actually used, as learnt from the response (None: nothing yet).
        self.reported: tuple[int, int] | None = None
        # The prompt's tokens as a stream that broke off had reported them (Anthropic's
        # message_start), where its whole usage never came (None: unknown, the estimate stands).
        self.prompt_reported: int | None = None
        self.cached = 0  # prompt tokens read from the provider's prompt cache
        self.cache_written = 0  # prompt tokens written to it (Anthropic's cache_creation_input_tokens)
        self.generated = ""
        # The tokens of ``counted_text`` as last counted: actual() is asked up to three times.
        self.counted = 0
        self.counted_text = ""
        self.upstream_answered = False
        self.exchange: Exchange | None = None
        self.stream_usage: StreamReader | None = None
        self.watch: DisconnectWatch | None = None
        self.done = False
        # The provider's whole answer, as parsed (the response cache keeps it).
        self.answer: Any = None
        # Answered from the response cache: the hit, and what the answer cost when it was made.
        self.cache_hit: CacheHit | None = None
        self.cache_saved_usd = 0.0
        # Model tiering: the routed model's plan, the model a downgrade moved the request from
        # (and the limit that refused it there), and the price of the model it would have had
        # without either, at which the ledger records what it would have cost.
        self.route: RoutePlan | None = None
        self.downgraded_from: str | None = None
        self.downgrade_reason = ""
        self.baseline_price: Price | None = None

    @property
    def tiered(self) -> bool:
        """Whether tiering moved the request: a routed model's class, or a downgrade."""
        return self.route is not None or self.downgraded_from is not None

    def route_header(self, served: str) -> bytes:
        """x-quotagate-route: which class or downgrade sent the request to ``served``, and why
        (e.g. ``complex -> claude-sonnet-4.5 (rule: keywords)``)."""
        plan, asked = self.route, self.downgraded_from
        notes = []
        if plan is not None:
            notes.append(plan.reason)
        if asked is not None:
            why = self.downgrade_reason
            notes.append(f"downgraded from {asked}: {why}" if plan is not None else f"downgrade: {why}")
        elif plan is not None and served != plan.model:
            # A stronger class's model, or a fallback of the class's model (the operator's choice).
            notes.append(f"{'moved up' if served in plan.models else 'fell back'} from {plan.model}")
        origin = plan.route_class if plan is not None else asked
        return f"{origin} -> {served} ({'; '.join(notes)})".encode("ascii", "backslashreplace")

    @property
    def charged_model(self) -> str:
        """The model the request is charged to: the one that serves it, after any fallback."""
        return self.tenant.model if self.tenant is not None else self.model or ""

    def collect_stream_usage(self) -> None:
        if self.stream_usage is not None and self.reported is None:
            self.reported = self.stream_usage.usage
            self.prompt_reported = self.stream_usage.prompt
            self.cached = self.stream_usage.cached
            self.cache_written = self.stream_usage.cache_written
            self.generated = "".join(self.stream_usage.pieces)

    def actual(self) -> tuple[int, int]:
        """(prompt, completion) tokens used: as reported, else counted, else none."""
        if self.reported is not None:
            return self.reported
        if self.upstream_answered:
            if self.generated != self.counted_text:
                self.counted = count_generated(self.generated, self.charged_model)
                self.counted_text = self.generated
            if self.prompt_reported is not None:
                return self.prompt_reported, self.counted
            prompt = self.tenant.estimate.prompt if self.tenant is not None else 0
            return prompt, self.counted
        return 0, 0  # the provider never took the request


# The ledger's error_type is a short code (``invalid_api_key``, ``upstream_timeout``, the provider's
# ``context_length_exceeded``): never a provider's free text, which once stored the provider's key
# when it echoed it in ``code`` (issue 18). Anything else is recorded as what kind of error it was.
_ERROR_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def error_type(exc: GatewayError) -> str:
    kind = exc.code or exc.type
    return kind if _ERROR_TYPE.fullmatch(kind) else exc.__class__.type


def stream_error_type(error: dict[str, Any]) -> str:
    """The row's error_type for a stream the provider ended with an error event: its code or type
    when that is a short code (``error`` is scrubbed, so it is no secret), else upstream_error."""
    for kind in (error.get("code"), error.get("type")):
        if isinstance(kind, str | int) and not isinstance(kind, bool) and _ERROR_TYPE.fullmatch(str(kind)):
            return str(kind)
    return "upstream_error"
