"""Which limits apply to a request: the caller's tier (per key, with the key's overrides), its
team's (shared by all of the team's keys), and the configured scoped limits (user, team, tier as a
whole, model, key+model, global).

Storage keys carry Redis Cluster hash tags: everything of one key (``{k:ID}``) shares a slot, so
the common decision (a tier's RPM/TPM/TPD on a key) is one script on one node; shared limits
carry their own tags (``{u:...}``, ``{team:...}``, ``{t:...}``, ``{m:...}``, ``{g}``), see
limits/_redis.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..accounting._pricing import micro_usd
from ..auth import Principal
from ..config import Config, LimitValues, ScopedLimit
from ..limits import Algorithm, Calendar, Limit, Unit

# shorthand -> (unit, period seconds or a calendar, label)
SHORTHANDS: dict[str, tuple[Unit, float | Calendar, str]] = {
    "rpm": (Unit.REQUESTS, 60.0, "requests per minute (RPM)"),
    "rph": (Unit.REQUESTS, 3600.0, "requests per hour (RPH)"),
    "rpd": (Unit.REQUESTS, Calendar.DAY, "requests per day (RPD)"),
    "requests_per_month": (Unit.REQUESTS, Calendar.MONTH, "requests per month"),
    "tpm": (Unit.TOKENS, 60.0, "tokens per minute (TPM)"),
    "tph": (Unit.TOKENS, 3600.0, "tokens per hour (TPH)"),
    "tpd": (Unit.TOKENS, Calendar.DAY, "tokens per day (TPD)"),
    "tokens_per_month": (Unit.TOKENS, Calendar.MONTH, "tokens per month"),
    "itpm": (Unit.INPUT_TOKENS, 60.0, "input tokens per minute (ITPM)"),
    "otpm": (Unit.OUTPUT_TOKENS, 60.0, "output tokens per minute (OTPM)"),
    "concurrency": (Unit.CONCURRENT, 0.0, "concurrent requests"),
    "usd_per_day": (Unit.SPEND, Calendar.DAY, "USD per day (budget)"),
    "usd_per_month": (Unit.SPEND, Calendar.MONTH, "USD per month (budget)"),
}
_TOKEN_UNITS = (Unit.TOKENS, Unit.INPUT_TOKENS, Unit.OUTPUT_TOKENS, Unit.SPEND)
_CACHE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class AppliedLimits:
    limits: tuple[Limit, ...]
    counts_tokens: bool  # any token or spend limit: the request's tokens must be estimated and settled
    max_wait: float
    priority: int
    counts_spend: bool = False  # any budget: the request's most possible cost is reserved

    def __bool__(self) -> bool:
        return bool(self.limits)


def _tag(value: str) -> str:
    # Braces would break the hash tag; nothing else in a name matters to Redis.
    return value.replace("{", "(").replace("}", ")")


def _rate_key(key: str, algorithm: str, amount: int, period: float, burst: int | None = None) -> str:
    # GCRA keeps its state as a time scaled by the rate; when an operator changes the rate, the
    # old state would mean something else. Naming the rate in the key starts a fresh bucket.
    # (Counting algorithms keep counts, which stay right under a new amount: no suffix.)
    if algorithm != "gcra":
        return key
    return f"{key}:{amount}/{period:g}" + (f"b{burst}" if burst else "")


def _shorthand_limit(
    name: str, amount: float, key: str, algorithm: str, timezone: str, scope: str, owner: str
) -> Limit:
    unit, period, label = SHORTHANDS[name]
    amount = micro_usd(amount) if unit is Unit.SPEND else int(amount)
    if unit is Unit.CONCURRENT:
        return Limit(key, unit, amount, Algorithm.CONCURRENCY, label=label + owner, scope=scope)
    if isinstance(period, Calendar):
        return Limit(
            key,
            unit,
            amount,
            Algorithm.CALENDAR,
            calendar=period,
            timezone=timezone,
            label=label + owner,
            scope=scope,
        )
    return Limit(
        _rate_key(key, algorithm, amount, period),
        unit,
        amount,
        Algorithm(algorithm),
        period,
        label=label + owner,
        scope=scope,
    )


def _team_tag(team: str) -> str:
    return f"{{team:{_tag(team)}}}"


def _team_limits(team: str, values: LimitValues, timezone: str) -> tuple[Limit, ...]:
    """The limits a team's keys share: the tier shorthands, each one counter for the whole team
    (``{team:NAME}:rpm``), whichever key, tier or node a request comes through. Its rates are
    GCRAs: a team's keys may sit on tiers of different algorithms, and one counter has one."""
    tag, owner = _team_tag(team), f" of team {team}"
    return tuple(
        _shorthand_limit(name, amount, f"{tag}:{name}", "gcra", timezone, "team", owner)
        for name, amount in values.model_dump(include=set(SHORTHANDS), exclude_none=True).items()
    )


def _scoped_algorithm(spec: ScopedLimit) -> str:
    if spec.unit == "concurrent":
        return "concurrency"
    return spec.algorithm or ("calendar" if spec.per in ("day", "month") else "gcra")


def _scoped_names(specs: list[ScopedLimit]) -> list[str]:
    """The name in the storage key of each scoped limit: its own ``name``, else one made of what
    defines it (scope, unit, period, algorithm, match), never of its place in the list, so that
    adding, removing or moving another limit (a reload) leaves its key, and so its count, alone.
    Not of its amount: a count stays right under a new amount, and a GCRA's key names its rate
    (see _rate_key). Limits alike in all of that are told apart by their order among themselves.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    for spec in specs:
        if spec.name:
            names.append(spec.name)
            continue
        identity = repr(
            (
                spec.scope,
                spec.unit,
                spec.per,
                _scoped_algorithm(spec),
                sorted((k, sorted(v)) for k, v in spec.match.items()),
            )
        )
        name = f"{spec.unit}-per-{spec.per}-{hashlib.blake2b(identity.encode(), digest_size=4).hexdigest()}"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def _scoped_limit(name: str, spec: ScopedLimit, principal: Principal, model: str | None, timezone: str) -> Limit | None:
    if "tier" in spec.match and principal.tier not in spec.match["tier"]:
        return None
    if "user" in spec.match and principal.user not in spec.match["user"]:
        return None
    if "team" in spec.match and principal.team not in spec.match["team"]:
        return None
    if "model" in spec.match and model not in spec.match["model"]:
        return None
    if spec.scope in ("model", "key+model") and model is None:
        return None
    if spec.scope == "team" and principal.team is None:
        return None  # a key without a team has no team to count with
    owner, tag = {
        "key": ("", f"{{k:{_tag(principal.key_id)}}}"),
        "user": (f" for user {principal.user}", f"{{u:{_tag(principal.user)}}}"),
        "team": (f" of team {principal.team}", _team_tag(principal.team or "")),
        "tier": (f" for tier {principal.tier}", f"{{t:{_tag(principal.tier)}}}"),
        "model": (f" for model {model}", f"{{m:{_tag(model or '')}}}"),
        "key+model": (
            f" for model {model} on this key",
            f"{{k:{_tag(principal.key_id)}}}:m:{_tag(model or '')}",
        ),
        "global": (" for the whole gateway", "{g}"),
    }[spec.scope]
    label = (spec.name or f"{spec.unit.replace('_', ' ').replace('usd', 'USD')} per {spec.per}") + owner
    key = f"{tag}:x:{name}"
    unit = Unit.SPEND if spec.unit == "usd" else Unit(spec.unit)
    amount = micro_usd(spec.amount) if unit is Unit.SPEND else int(spec.amount)
    if unit is Unit.CONCURRENT:
        return Limit(key, unit, amount, Algorithm.CONCURRENCY, label=label, scope=spec.scope)
    algorithm = _scoped_algorithm(spec)
    if algorithm == "calendar":
        calendar = Calendar.MONTH if spec.per == "month" else Calendar.DAY
        return Limit(
            key,
            unit,
            amount,
            Algorithm.CALENDAR,
            calendar=calendar,
            timezone=timezone,
            label=label,
            scope=spec.scope,
        )
    return Limit(
        _rate_key(key, algorithm, amount, spec.seconds, spec.burst),
        unit,
        amount,
        Algorithm(algorithm),
        spec.seconds,
        burst=spec.burst,
        label=label,
        scope=spec.scope,
    )


class Policy:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._cache: dict[tuple[Principal, str | None], AppliedLimits] = {}
        self._scoped_names = _scoped_names(config.limits)
        # Built once: a request's team is one lookup. A team a key names but the configuration
        # does not (any more) has no limits.
        self._teams = {team: _team_limits(team, values, config.timezone) for team, values in config.teams.items()}
        team_limits = [limit for limits in self._teams.values() for limit in limits]
        self.enabled = (
            bool(config.limits)
            or bool(team_limits)
            or any(tier.model_dump(include=set(SHORTHANDS), exclude_none=True) for tier in config.tiers.values())
        )
        # Whether a configured limit counts tokens (or dollars): then requests are tokenized.
        # (A key's own overrides can add one later; its first request then loads the tokenizer.)
        self.counts_tokens = (
            any(spec.unit not in ("requests", "concurrent") for spec in config.limits)
            or any(limit.unit in _TOKEN_UNITS for limit in team_limits)
            or any(
                SHORTHANDS[name][0] in _TOKEN_UNITS
                for tier in config.tiers.values()
                for name in tier.model_dump(include=set(SHORTHANDS), exclude_none=True)
            )
        )

    def shaping(self, principal: Principal) -> tuple[float, int]:
        """(max_wait, priority) of the caller's tier: how long a request may wait for capacity."""
        tier = self._config.tiers.get(principal.tier)
        return (tier.max_wait, tier.priority) if tier is not None else (0.0, 0)

    def limits_for(self, principal: Principal, model: str | None) -> AppliedLimits:
        """The limits on a request of ``principal`` for ``model`` (None: those not tied to a model)."""
        cache_key = (principal, model)
        applied = self._cache.get(cache_key)
        if applied is None:
            applied = self._build(principal, model)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[cache_key] = applied
        return applied

    def _build(self, principal: Principal, model: str | None) -> AppliedLimits:
        config = self._config
        tier = config.tiers.get(principal.tier)
        values: dict[str, float] = {}
        if tier is not None:
            values.update(tier.model_dump(include=set(SHORTHANDS), exclude_none=True))
        if principal.limits:
            values.update(principal.limits)
        algorithm = tier.algorithm if tier is not None else "gcra"
        key_tag = f"{{k:{_tag(principal.key_id)}}}"
        limits = [
            _shorthand_limit(name, amount, f"{key_tag}:{name}", algorithm, config.timezone, "key", "")
            for name, amount in values.items()
        ]
        if principal.team is not None:
            limits.extend(self._teams.get(principal.team, ()))
        for name, spec in zip(self._scoped_names, config.limits, strict=True):
            scoped = _scoped_limit(name, spec, principal, model, config.timezone)
            if scoped is not None:
                limits.append(scoped)
        return AppliedLimits(
            tuple(limits),
            any(limit.unit in _TOKEN_UNITS for limit in limits),
            tier.max_wait if tier is not None else 0.0,
            tier.priority if tier is not None else 0,
            any(limit.unit is Unit.SPEND for limit in limits),
        )


def check_overrides(values: dict[str, float]) -> dict[str, float]:
    """Validate a key's limit overrides (the tier shorthands); raises ValueError."""
    return LimitValues.model_validate(values).model_dump(exclude_none=True)
