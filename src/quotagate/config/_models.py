"""The configuration file's schema.

pydantic validates at the edge: a bad file fails at start with the field's path and the problem,
never a traceback. Secrets are never values in the file, only references (``env:NAME``); they are
resolved when the gateway starts (see ``_secrets.py``), so ``keys`` commands that only need the
database work without the providers' keys in the environment.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..redis import URL_SCHEMES

SECRET_REF = re.compile(r"^env:[A-Za-z_][A-Za-z0-9_]*$")

# Where each known provider lives, so `base_url` may be left out for them. All speak OpenAI's API
# but anthropic, whose deployments speak Anthropic's Messages API (POST {base_url}/messages).
PROVIDER_BASE_URLS: dict[str, str | None] = {
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
    "anthropic": "https://api.anthropic.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "vllm": None,
    "openai-compatible": None,
    # https://RESOURCE.openai.azure.com: each resource has its own, so it is always given.
    "azure": None,
}

Provider = Literal["openai", "deepseek", "gemini", "anthropic", "openrouter", "vllm", "openai-compatible", "azure"]
PositiveInt = Annotated[int, Field(gt=0)]

# The bounds of every limit, in one place: the configuration's tiers and limits, the admin API's
# and the command line's key overrides all validate with the models below. Counts and budgets
# end up as integers in the limit engine and in Redis, whose Lua numbers are doubles: below
# 2**53 (9.007e15) they are exact, and 10**15 leaves room for a count plus a request's cost.
# A budget is kept in micro-dollars, so USD 1e9 is that same 10**15; below one micro-dollar it
# would round to a limit of nothing.
MAX_COUNT = 10**15
MIN_USD = 0.000001
MAX_USD = 1e9
Count = Annotated[int, Field(gt=0, le=MAX_COUNT)]


def _check_usd(value: float) -> float:
    # Not Field(ge=, le=): pydantic would word the bound as 1e-06.
    if not MIN_USD <= value <= MAX_USD:
        raise ValueError(f"a budget must be between {MIN_USD:f} and {MAX_USD:.0f} USD")
    return value


Usd = Annotated[
    float,
    Field(allow_inf_nan=False, json_schema_extra={"minimum": MIN_USD, "maximum": MAX_USD}),
    AfterValidator(_check_usd),
]


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_secret_ref(value: str | None) -> str | None:
    if value is None:
        return None
    if not SECRET_REF.match(value):
        raise ValueError(
            "secrets are not written in the config; reference an environment variable "
            "as env:NAME (for example env:OPENAI_API_KEY)"
        )
    return value


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    workers: PositiveInt = Field(default=1, description="Gateway processes on one port; above 1 needs redis.")
    max_body_bytes: PositiveInt = Field(default=16 * 1024 * 1024, description="Requests with a larger body get 413.")
    header_timeout: float = Field(
        default=10.0, gt=0, le=3600, description="seconds for a request's head to arrive; then the connection closes"
    )
    body_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="seconds a request's body may go without a byte arriving; then 408"
    )


class LimitValues(_Strict):
    """The shorthand limits a tier sets for each of its keys, and a key may override.

    Rates (per minute, per hour) refill continuously; per day and per month are calendar quotas
    that reset at midnight in the configured ``timezone``.
    """

    rpm: Count | None = None
    rph: Count | None = None
    rpd: Count | None = None
    requests_per_month: Count | None = None
    tpm: Count | None = None
    tph: Count | None = None
    tpd: Count | None = None
    tokens_per_month: Count | None = None
    itpm: Count | None = Field(default=None, description="input (prompt) tokens per minute")
    otpm: Count | None = Field(default=None, description="output (completion) tokens per minute")
    concurrency: Count | None = Field(default=None, description="requests in flight at once")
    usd_per_day: Usd | None = Field(default=None, description="a daily budget, in USD")
    usd_per_month: Usd | None = Field(default=None, description="a monthly budget, in USD")


RateAlgorithm = Literal["gcra", "sliding-window"]

# The semantic cache's default similarity threshold: the lowest above every pair of different
# questions among the labelled English and Chinese ones (tests/data/semantic_pairs; the closest,
# "How do I get a promo code?" and "... use a promo code?", scores 0.946 as the cache compares
# questions, normalized; bench/NOTES.md).
DEFAULT_SEMANTIC_THRESHOLD = 0.96


class CacheRule(_Strict):
    """How a tier's or a model's answers are cached. A model's rule overrides its tier's field by
    field (only the fields it sets), so a tier can turn the cache on and a model tune its threshold."""

    mode: Literal["off", "exact", "semantic"] = Field(
        default="exact", description="exact: the same request; semantic: also the same question reworded"
    )
    ttl: float = Field(default=3600.0, gt=0, le=365 * 86400, description="seconds an answer is kept")
    namespace: Literal["key", "user", "tier", "global"] = Field(
        default="key", description="who shares answers: each key, each user, each tier, or everyone"
    )
    threshold: float = Field(
        default=DEFAULT_SEMANTIC_THRESHOLD,
        gt=0,
        le=1,
        description="cosine similarity from which a reworded question gets the cached answer",
    )


class OnLimit(_Strict):
    """What a request gets instead of a 429 when its tenant's limits for the model refuse it
    (a tier's, for every model; a model's, for that model, before the tier's): the ``downgrade``
    model, within the tenant's limits for that one. Off unless set; a request that sends
    ``x-quotagate-downgrade: off`` gets the 429."""

    downgrade: str = Field(min_length=1, description="the cheaper model that serves instead")
    at_budget: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="also downgrade, before any refusal, once a USD budget on the request is this "
        "fraction used (e.g. 0.8), for the rest of the budget's window",
    )


class TierLimits(LimitValues):
    """A tier: the limits every key on it gets, and how its requests wait for capacity."""

    algorithm: RateAlgorithm = Field(default="gcra", description="for the tier's rate limits")
    max_wait: float = Field(
        default=0.0, ge=0, le=600, description="seconds a request may wait for capacity (0: refuse at once)"
    )
    priority: int = Field(default=0, description="waiting requests of higher priority go first")
    cache: CacheRule | None = Field(default=None, description="answers served from the response cache")
    on_limit: OnLimit | None = Field(
        default=None, description="serve a cheaper model instead of refusing when a limit would refuse"
    )


_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "month": 0.0}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ScopedLimit(_Strict):
    """A limit beyond the tiers': on a user, each team, a tier as a whole, a model, a key+model, or
    global (a team scope counts each team's keys together; a key without a team has none).

    ``per`` is second, minute, hour, day, month or a duration ("10s", "90m", "2h"). Per day and
    per month are calendar quotas unless ``algorithm`` says otherwise; ``match`` restricts the
    limit to requests of some tiers, users or models.
    """

    scope: Literal["key", "user", "team", "tier", "model", "key+model", "global"]
    unit: Literal["requests", "tokens", "input_tokens", "output_tokens", "concurrent", "usd"]
    amount: float = Field(gt=0, allow_inf_nan=False, description="an integer count, or USD for unit usd")
    per: str = "minute"
    algorithm: Literal["gcra", "sliding-window", "calendar"] | None = None
    burst: Count | None = None
    name: str | None = None
    match: dict[Literal["tier", "team", "user", "model"], list[str]] = Field(default_factory=dict)

    @field_validator("per")
    @classmethod
    def _check_per(cls, value: str) -> str:
        if value not in _PERIODS and not _DURATION.match(value):
            raise ValueError("must be second, minute, hour, day, month or a duration like 10s, 90m, 2h")
        return value

    @property
    def seconds(self) -> float:
        if self.per in _PERIODS:
            return _PERIODS[self.per]
        matched = _DURATION.match(self.per)
        assert matched is not None
        return float(matched.group(1)) * _UNIT_SECONDS[matched.group(2)]

    @field_validator("amount")
    @classmethod
    def _check_amount(cls, value: float, info: ValidationInfo) -> float:
        # A field validator (``unit`` comes first, so it is known here) rather than a model
        # validator: the error then names ``amount``, not just the limit.
        unit = info.data.get("unit")
        if unit is None:
            return value  # the unit's own error says what is wrong
        if unit == "usd":
            return _check_usd(value)
        if value != int(value):
            raise ValueError(f"must be a whole number of {unit}")
        if value > MAX_COUNT:
            raise ValueError(f"must be at most {MAX_COUNT:,} {unit}")
        return value

    @model_validator(mode="after")
    def _check_algorithm(self) -> ScopedLimit:
        if self.algorithm == "calendar" and self.per not in ("day", "month"):
            raise ValueError("a calendar quota is per day or per month")
        if self.per == "month" and self.algorithm not in (None, "calendar"):
            raise ValueError("per month is a calendar quota")
        return self


class PriceConfig(_Strict):
    input: float = Field(ge=0, description="USD per million input tokens")
    output: float = Field(ge=0, description="USD per million output tokens")
    cached_input: float | None = Field(default=None, ge=0, description="USD per million cached input tokens")
    cache_write: float | None = Field(
        default=None, ge=0, description="USD per million prompt-cache write tokens (Anthropic's); input's if unset"
    )


class CurrencySettings(_Strict):
    display: str = Field(default="USD", min_length=3, max_length=3, description="shown in reports")
    rate: float = Field(default=1.0, gt=0, description="units of the display currency per USD")


class AlertSettings(_Strict):
    webhook: str | None = Field(default=None, description="JSON POSTs go here")
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0])

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(cls, value: list[float]) -> list[float]:
        if any(not 0 < t <= 1 for t in value):
            raise ValueError("thresholds are fractions in (0, 1], e.g. [0.5, 0.8, 1.0]")
        return sorted(set(value))


class LedgerSettings(_Strict):
    enabled: bool = True
    batch_size: PositiveInt = Field(default=500, description="rows per database write")
    flush_seconds: float = Field(default=0.5, gt=0, description="longest a row waits to be written")
    claim_after_seconds: float = Field(
        default=30.0, gt=0, description="rows another node read but did not write are taken over after this"
    )


class MetricsSettings(_Strict):
    """Who may read GET /metrics. Open by default, as Prometheus scrapers expect; a gateway whose
    listener is public can require a bearer token or switch the endpoint off."""

    enabled: bool = Field(default=True, description="false: /metrics answers 404")
    token: str | None = Field(
        default=None, description="env:NAME of a token scrapers send as 'Authorization: Bearer ...'"
    )

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        return _check_secret_ref(value)


class LoggingSettings(_Strict):
    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    requests: bool = Field(default=False, description="a log line per request")


class LimiterSettings(_Strict):
    on_store_failure: Literal["closed", "open"] = Field(
        default="closed", description="closed: 503 while Redis is down; open: this node's share locally"
    )
    fallback_share: float = Field(
        default=1.0, gt=0, le=1, description="the share of each limit one node enforces when failing open"
    )
    timeout_ms: float = Field(default=250.0, gt=0, description="deadline of each call to the store")
    max_queue: PositiveInt = Field(default=10_000, description="requests waiting for capacity, per node")
    expected_output_tokens: PositiveInt = Field(
        default=512, description="output estimate when a request sets no max_tokens"
    )


class Deployment(_Strict):
    """One upstream that serves a model: a provider endpoint with one API key."""

    provider: Provider = "openai"
    base_url: str | None = None
    api_key: str | None = Field(default=None, description="env:NAME; null for keyless upstreams")
    model: str | None = Field(default=None, description="The model's name at the provider")
    rpm: Count | None = None
    tpm: Count | None = None
    weight: float = Field(default=1.0, gt=0)
    priority: int = Field(default=0, ge=0)
    burst: Count | None = Field(
        default=None,
        description="requests the gateway may send at once within the rpm (default: one second's "
        "share, rpm/60 rounded up; 1 paces strictly); no 60 s window ever holds more than rpm",
    )
    timeout: float = Field(
        default=600.0, gt=0, description="Default for first_byte_timeout and chunk_timeout, in seconds."
    )
    connect_timeout: float = Field(default=10.0, gt=0)
    first_byte_timeout: float | None = Field(default=None, gt=0, description="until the response starts")
    chunk_timeout: float | None = Field(default=None, gt=0, description="between two chunks of a stream")
    total_timeout: float | None = Field(default=None, gt=0, description="for the whole response, streams included")
    stream_usage: bool = Field(
        default=True,
        description="ask streams for a final usage chunk (stream_options.include_usage); turn off "
        "for providers that reject the option, and the gateway counts streamed tokens itself",
    )
    proxy: str | None = Field(
        default=None,
        description="an HTTP proxy for this deployment (http://HOST:PORT, or env:NAME of a URL with "
        "user:password); default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment",
    )
    api_version: str | None = Field(default=None, description="provider azure: the api-version query parameter")
    azure_ad_token: str | None = Field(
        default=None, description="provider azure: env:NAME of a Microsoft Entra ID bearer token, instead of api_key"
    )
    anthropic_version: str = Field(
        default="2023-06-01",
        description="provider anthropic: the anthropic-version header sent when the client sends none",
    )

    @field_validator("api_key", "azure_ad_token")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        return _check_secret_ref(value)

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        if value is None or value.startswith("env:"):
            return _check_secret_ref(value)
        # The value is not echoed: it may hold a password.
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// (or https://) proxy URL, or env:NAME of one")
        if "@" in value.partition("://")[2].partition("/")[0]:
            raise ValueError(
                "a proxy's user:password is a secret: put the URL in an environment variable, proxy: env:NAME"
            )
        return value

    @model_validator(mode="after")
    def _fill_base_url(self) -> Deployment:
        url = self.base_url or PROVIDER_BASE_URLS[self.provider]
        if url is None:
            raise ValueError(f"base_url is required for provider {self.provider!r}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        object.__setattr__(self, "base_url", url.rstrip("/"))
        return self

    @model_validator(mode="after")
    def _check_azure(self) -> Deployment:
        if self.provider == "azure":
            if self.api_version is None:
                raise ValueError("provider azure needs api_version (e.g. 2024-10-21)")
            if self.api_key is not None and self.azure_ad_token is not None:
                raise ValueError("provider azure takes api_key or azure_ad_token, not both")
        elif self.api_version is not None or self.azure_ad_token is not None:
            raise ValueError("api_version and azure_ad_token are for provider azure")
        return self

    @model_validator(mode="after")
    def _check_burst(self) -> Deployment:
        if self.burst is not None and self.rpm is not None and self.burst > self.rpm:
            raise ValueError(f"burst ({self.burst}) cannot exceed rpm ({self.rpm})")
        return self

    @property
    def url(self) -> str:
        assert self.base_url is not None  # filled by the validator
        return self.base_url


Routing = Literal["weighted", "least-busy", "usage-based", "latency-based"]

# Class names go in a response header and in metrics labels: plain ASCII.
_CLASS_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# The semantic classifier's default confidence floor: the similarity to the nearest class's
# examples (their centroid) below which a request gets the default class. On the labelled support
# prompts it sends 1 % of them to the default and 8 of 10 off-topic ones (bench/NOTES.md, "Model
# tiering quality").
DEFAULT_MIN_SIMILARITY = 0.3


class RouteRules(_Strict):
    """Conditions that give a request its class; all that are set must hold, and a list holds
    when any of its items does. Text conditions read the last user message."""

    min_prompt_tokens: Count | None = None
    max_prompt_tokens: Count | None = None
    min_turns: PositiveInt | None = Field(default=None, description="user messages, at least")
    max_turns: PositiveInt | None = Field(default=None, description="user messages, at most")
    tools: bool | None = Field(default=None, description="true: requests with tools; false: without")
    images: bool | None = Field(default=None, description="true: requests with an image; false: without")
    response_format: bool | None = Field(
        default=None, description="true: requests asking for JSON (response_format); false: the others"
    )
    keywords: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="any of these words or phrases, ignoring case"
    )
    regex: list[str] = Field(default_factory=list, description="any of these regular expressions (Python's)")
    tiers: list[str] = Field(default_factory=list, description="requests of keys on these tiers")
    keys: list[str] = Field(default_factory=list, description="requests of these key ids")

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_rules(self) -> RouteRules:
        if not self.model_dump(exclude_defaults=True):
            raise ValueError("rules: {} would match every request; leave rules out instead")
        for low, high in (("min_prompt_tokens", "max_prompt_tokens"), ("min_turns", "max_turns")):
            low_value, high_value = getattr(self, low), getattr(self, high)
            if low_value is not None and high_value is not None and low_value > high_value:
                raise ValueError(f"{low} ({low_value}) is above {high} ({high_value})")
        return self


class RouteClass(_Strict):
    """One class of requests and the model that serves it."""

    name: str = Field(pattern=_CLASS_NAME)
    model: str = Field(min_length=1, description="a model of this configuration with deployments")
    rules: list[RouteRules] = Field(
        default_factory=list,
        description="requests meeting all of these get this class; a list of such sets: any one of them",
    )
    examples: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, description="prompts of this class, for the semantic classifier"
    )

    @field_validator("examples")
    @classmethod
    def _check_examples(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty example set: give example prompts of the class, or leave examples out")
        return value

    @field_validator("rules", mode="before")
    @classmethod
    def _one_or_more_sets(cls, value: object) -> object:
        # One set (a mapping) is a list of one: its errors then name its fields, not a union's arms.
        if isinstance(value, list) and not value:
            raise ValueError("an empty list of rule sets: give one, or leave rules out")
        return [value] if isinstance(value, dict) else value


class RouteConfig(_Strict):
    """A routed model: each request is classified and served by its class's model.

    ``classes`` go from the cheapest to the strongest. A request gets the strongest class whose
    ``rules`` it meets (every rule of a set; any one set, where a class has a list of them);
    failing that, the class whose examples it is nearest to (their centroid), when that similarity
    reaches ``min_similarity``; failing that, ``default``. A class whose model cannot serve it
    (down, or its context window too small) moves it up the list, never down.
    """

    classes: list[RouteClass] = Field(min_length=1, description="from the cheapest to the strongest")
    default: str | None = Field(
        default=None, description="the class when nothing else decides (default: the strongest)"
    )
    min_similarity: float = Field(
        default=DEFAULT_MIN_SIMILARITY,
        ge=-1,
        le=1,
        description="the cosine similarity to the nearest class's examples (their mean) below which the "
        "default class applies",
    )

    @model_validator(mode="after")
    def _check_classes(self) -> RouteConfig:
        names = [route_class.name for route_class in self.classes]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"class {name!r} is defined twice")
        if self.default is not None and self.default not in names:
            raise ValueError(f"default {self.default!r} is not one of the classes ({', '.join(names)})")
        return self

    @property
    def default_class(self) -> str:
        return self.default if self.default is not None else self.classes[-1].name


class ModelConfig(_Strict):
    """A model clients ask for: served by its ``deployments``, or, for a routed model (``route``),
    by the models of its classes."""

    name: str = Field(min_length=1)
    deployments: list[Deployment] = Field(default_factory=list)
    route: RouteConfig | None = Field(default=None, description="a routed model: classes instead of deployments")
    on_limit: OnLimit | None = Field(
        default=None, description="serve a cheaper model instead of refusing (before the tier's on_limit)"
    )
    routing: Routing = Field(default="weighted", description="how a deployment is chosen among equals")
    context_window: PositiveInt | None = Field(
        default=None, description="caps the token estimate; longer requests go to context_window_fallback"
    )
    fallbacks: list[str] = Field(default_factory=list, description="models to try when this one fails")
    context_window_fallback: str | None = None
    cache: CacheRule | None = Field(default=None, description="overrides the tiers' cache rules for this model")

    @model_validator(mode="after")
    def _check_served(self) -> ModelConfig:
        if self.route is None:
            if not self.deployments:
                raise ValueError(f"model {self.name!r} needs deployments (or a route, for a routed model)")
            return self
        # A routed model is served by its classes' models, with their deployments, limits,
        # context windows and fallbacks: none of its own.
        for field in ("deployments", "fallbacks", "context_window", "context_window_fallback", "on_limit"):
            if field in self.model_fields_set:
                raise ValueError(f"model {self.name!r} is routed: its classes' models have the {field}, not it")
        return self


class BreakerSettings(_Strict):
    failures: PositiveInt = Field(default=5, description="failures within window_seconds that open it")
    window_seconds: float = Field(default=30.0, gt=0)
    cooldown_seconds: float = Field(default=30.0, gt=0, description="open this long, then half-open")
    probes: PositiveInt = Field(default=1, description="requests let through while half-open")


class RouterSettings(_Strict):
    max_attempts: PositiveInt = Field(default=3, description="tries per request, over all deployments")
    deadline_seconds: float = Field(default=120.0, gt=0, description="for all tries of one request")
    backoff_base: float = Field(default=0.2, gt=0)
    backoff_cap: float = Field(default=5.0, gt=0)
    default_cooldown_seconds: float = Field(
        default=5.0, gt=0, description="cooldown after a provider 429 that names no Retry-After"
    )
    max_queue_wait: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="seconds a request the tenant's limits admitted may wait for a deployment's "
        "provider limits (its tier's max_wait, if longer, instead; never past deadline_seconds)",
    )
    breaker: BreakerSettings = BreakerSettings()


class CacheSettings(_Strict):
    """The response cache's store and embedding model; the tiers and models say what is cached."""

    store: Literal["memory", "redis"] = Field(
        default="memory", description="memory: this process; redis: the gateway's redis, shared by every node"
    )
    embedding: str = Field(
        default="local",
        min_length=1,
        description="local: the shipped offline model; or the name of an embeddings model of this config",
    )
    max_entries: PositiveInt = Field(default=10_000, description="answers kept in memory (store: memory)")
    max_bytes: PositiveInt = Field(default=256 * 1024 * 1024, description="bytes of answers kept (store: memory)")
    semantic_entries: PositiveInt = Field(
        default=10_000, description="questions each node's semantic index holds (oldest out first)"
    )
    hits_charge: Literal["requests", "tokens"] = Field(
        default="requests",
        description="requests: a hit counts on request limits only; tokens: also on token and spend "
        "limits, as the cached answer's usage",
    )


# Headers whose names say they carry a credential: their values must be env:NAME references.
_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|password|cookie", re.IGNORECASE)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110 5.6.2)


class TracingSettings(_Strict):
    """OpenTelemetry export (OTLP over HTTP, protobuf) of a span per request, with child spans for
    its cache lookup, limit decision and upstream attempts. Off by default; read at start only."""

    enabled: bool = Field(default=False, description="true: needs pip install 'quotagate[otel]'")
    endpoint: str = Field(default="http://127.0.0.1:4318/v1/traces", description="the collector's OTLP/HTTP traces URL")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="sent with each export; a credential's value (authorization, api keys) as env:NAME",
    )
    service_name: str = Field(default="quotagate", min_length=1, description="the resource's service.name")
    sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="the share of requests traced; one with a client's traceparent follows its sampled flag",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=300, description="for each export to the collector")
    propagate: bool = Field(
        default=True,
        description="a request with a W3C traceparent header joins the client's trace (and its sampling "
        "decision); false: each request starts a trace of its own",
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        scheme, _, rest = value.partition("://")
        host = rest.partition("/")[0]
        if scheme not in ("http", "https") or not host:
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:4318/v1/traces")
        if "@" in host:
            # The value is not echoed: it may hold a password.
            raise ValueError("credentials do not go in the URL: send them in headers, as env:NAME")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name[:100]!r} is not an HTTP header name")
            if header.startswith("env:") or _CREDENTIAL_HEADER.search(name):
                try:
                    _check_secret_ref(header)
                except ValueError:
                    # Not echoed: it may be the credential itself.
                    raise ValueError(
                        f"header {name}: a credential is not written in the config; reference an "
                        "environment variable as env:NAME (for example env:OTLP_TOKEN)"
                    ) from None
            elif "\r" in header or "\n" in header:
                raise ValueError(f"header {name}: a value cannot hold a line break")
        return value


class PassthroughSettings(_Strict):
    """The OpenAI endpoints served by relaying them as they come (images, audio, files, batches,
    any other /v1/* path)."""

    default_model: str | None = Field(
        default=None,
        min_length=1,
        description="the model whose deployments serve requests that name none (files, batches, ...)",
    )


class Config(_Strict):
    server: ServerSettings = ServerSettings()
    database: str = "sqlite:///./quotagate.db"
    redis: str | None = None
    master_key: str | None = Field(default=None, description="env:NAME of the admin API key")
    tiers: dict[str, TierLimits] = Field(default_factory=lambda: {"default": TierLimits()})
    teams: dict[str, LimitValues] = Field(
        default_factory=dict,
        description="teams that keys belong to, each with limits shared by all of its keys together",
    )
    models: list[ModelConfig] = Field(default_factory=list)
    limits: list[ScopedLimit] = Field(default_factory=list)
    cache: CacheSettings = CacheSettings()
    limiter: LimiterSettings = LimiterSettings()
    router: RouterSettings = RouterSettings()
    pricing: dict[str, PriceConfig] = Field(default_factory=dict, description="overrides the shipped prices")
    currency: CurrencySettings = CurrencySettings()
    alerts: AlertSettings = AlertSettings()
    ledger: LedgerSettings = LedgerSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    passthrough: PassthroughSettings = PassthroughSettings()
    tracing: TracingSettings = TracingSettings()
    metrics_per_key: bool = Field(default=False, description="key labels on metrics (unbounded cardinality)")
    timezone: str = Field(default="UTC", description="where calendar quotas' days and months begin")
    auth_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a node trusts a key lookup; a key disabled on another node "
        "stops working within this time (at once on the node that disabled it).",
    )

    @field_validator("master_key")
    @classmethod
    def _check_master(cls, value: str | None) -> str | None:
        return _check_secret_ref(value)

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        return value

    @field_validator("redis")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(URL_SCHEMES):
            raise ValueError(
                "must be redis://HOST:PORT/DB, rediss://... or unix://PATH (one server), "
                "redis+cluster://HOST:PORT[,HOST:PORT...] (a Cluster) or "
                "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB] (Sentinel)"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Asia/Shanghai)") from None
        return value

    @field_validator("tiers")
    @classmethod
    def _check_tiers(cls, value: dict[str, TierLimits]) -> dict[str, TierLimits]:
        if not value:
            raise ValueError("at least one tier is needed; keys belong to a tier")
        return value

    @field_validator("teams")
    @classmethod
    def _check_teams(cls, value: dict[str, LimitValues]) -> dict[str, LimitValues]:
        # A team's name is stored with its keys (100 characters at most, as PostgreSQL holds it)
        # and grouped by in reports, where "(none)" stands for the keys without a team.
        for name in value:
            if not 1 <= len(name) <= 100 or not name.isprintable() or name.strip() != name:
                raise ValueError(f"team name {name[:100]!r}: 1 to 100 printable characters, no spaces at the ends")
            if name == "(none)":
                raise ValueError("team name '(none)' is how reports show keys without a team")
        return value

    @model_validator(mode="after")
    def _unique_models(self) -> Config:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model {model.name!r} is defined twice")
            seen.add(model.name)
        for model in self.models:
            for other in [
                *model.fallbacks,
                *([model.context_window_fallback] if model.context_window_fallback else []),
            ]:
                if other not in seen:
                    raise ValueError(f"model {model.name!r} falls back to {other!r}, which is not configured")
                if other == model.name:
                    raise ValueError(f"model {model.name!r} falls back to itself")
                if self.model_named(other).route is not None:  # type: ignore[union-attr]
                    raise ValueError(f"model {model.name!r} falls back to {other!r}, a routed model")
        return self

    @model_validator(mode="after")
    def _check_routes(self) -> Config:
        routed = {model.name for model in self.models if model.route is not None}
        for number, limit in enumerate(self.limits):
            named = [name for name in limit.match.get("model", []) if name in routed]
            if named:
                raise ValueError(
                    f"limits[{number}].match.model: {named[0]!r} is a routed model, whose requests are "
                    "charged to its classes' models: limit those"
                )
        for model in self.models:
            if model.route is None:
                continue
            for route_class in model.route.classes:
                served = self.model_named(route_class.model)
                where = f"models[{model.name}].route.classes[{route_class.name}]"
                if served is None:
                    raise ValueError(f"{where}.model: {route_class.model!r} is not a model of this configuration")
                if served.route is not None:
                    raise ValueError(f"{where}.model: {route_class.model!r} is a routed model; name a served one")
                for rules in route_class.rules:
                    unknown = [tier for tier in rules.tiers if tier not in self.tiers]
                    if unknown:
                        raise ValueError(f"{where}.rules.tiers: {', '.join(map(repr, unknown))} is not a tier")
        return self

    @model_validator(mode="after")
    def _check_downgrades(self) -> Config:
        where_set = [(f"tiers.{name}.on_limit", tier.on_limit) for name, tier in self.tiers.items()]
        where_set += [(f"models[{model.name}].on_limit", model.on_limit) for model in self.models]
        for where, on_limit in where_set:
            if on_limit is None:
                continue
            target = self.model_named(on_limit.downgrade)
            if target is None:
                raise ValueError(f"{where}.downgrade: {on_limit.downgrade!r} is not a model of this configuration")
            if target.route is not None:
                raise ValueError(f"{where}.downgrade: {on_limit.downgrade!r} is a routed model; name a served one")
        # A model's downgrade leads to another model, whose own may lead on: never back round.
        for model in self.models:
            path = [model.name]
            current = model
            while current.on_limit is not None:
                following = current.on_limit.downgrade
                if following in path:
                    cycle = " -> ".join([*path[path.index(following) :], following])
                    raise ValueError(f"models[{model.name}].on_limit: a cycle of downgrades: {cycle}")
                path.append(following)
                current = self.model_named(following)  # type: ignore[assignment]
        return self

    @model_validator(mode="after")
    def _check_cache(self) -> Config:
        if self.cache.store == "redis" and self.redis is None:
            raise ValueError("cache.store: redis needs the gateway's redis: URL")
        embedding = self.cache.embedding
        if embedding != "local" and self.model_named(embedding) is None:
            raise ValueError(
                f"cache.embedding {embedding!r} is neither 'local' nor the name of a model of this configuration"
            )
        if embedding != "local" and self.model_named(embedding).route is not None:  # type: ignore[union-attr]
            raise ValueError(f"cache.embedding {embedding!r} is a routed model; name an embeddings model")
        return self

    @model_validator(mode="after")
    def _check_passthrough(self) -> Config:
        name = self.passthrough.default_model
        if name is None:
            return self
        model = self.model_named(name)
        if model is None:
            raise ValueError(f"passthrough.default_model {name!r} is not a model of this configuration")
        if model.route is not None:
            raise ValueError(f"passthrough.default_model {name!r} is a routed model; name a served one")
        return self

    def model_named(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if model.name == name:
                return model
        return None
