"""The admin HTTP API under /admin, guarded by the master key.

GET    /admin/keys[?user=U&team=T] list keys (never the keys themselves)
POST   /admin/keys                 create; the response holds the key, the only time it is shown
GET    /admin/keys/{id}
PATCH  /admin/keys/{id}            change user, team, tier, models, expires_at, name, disabled,
                                   limits ("team": null takes the key out of its team; limits
                                   merge: {"tpm": 5000} sets one, {"tpm": null} removes one,
                                   "limits": null removes all)
POST   /admin/keys/{id}/disable
POST   /admin/keys/{id}/enable
DELETE /admin/keys/{id}
GET    /admin/tiers                the configured tiers and their limits
GET    /admin/teams                the configured teams and their limits
POST   /admin/reload               serve the configuration file as it is now (as SIGHUP does)
GET    /admin/cache                the response cache's figures
DELETE /admin/cache[?namespace=NS] drop the cache's entries (of key:ID, user:NAME, tier:NAME or
                                   global only); answers how many
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol
from urllib.parse import parse_qs

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..auth import Authenticator, Principal, extract_key
from ..config import Config, LimitValues
from ..errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
)
from ..keys import KeyRecord, KeyStore
from ..keys._store import LABEL_PATTERN, text_problem
from ..router import Router
from ._asgi import Receive, RequestHeaders, Scope, Send, read_body, send_json
from ._deployments_view import describe_deployments

_ADMIN_BODY_LIMIT = 64 * 1024


def _plain(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A one-line label: no NUL (PostgreSQL cannot store it) and no other control character. The
# pattern describes the same check in the OpenAPI description.
Label = Annotated[str, AfterValidator(_plain), Field(json_schema_extra={"pattern": LABEL_PATTERN})]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Label = Field(min_length=1, max_length=200)
    # The column's width: PostgreSQL would refuse a longer one with an error, not a 400.
    tier: Label = Field(min_length=1, max_length=100)
    team: Label | None = Field(
        default=None, min_length=1, max_length=100, description="one of the configured teams (null: none)"
    )
    models: list[Label] | None = None
    expires_at: datetime | None = None
    name: Label | None = Field(default=None, max_length=200)
    limits: LimitValues | None = Field(default=None, description="overrides of the tier's limits")

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a time zone, e.g. 2027-01-01T00:00:00Z")
        return value


class KeyUpdate(KeyCreate):
    user: Label | None = Field(default=None, min_length=1, max_length=200)  # type: ignore[assignment]
    tier: Label | None = Field(default=None, min_length=1, max_length=100)  # type: ignore[assignment]
    disabled: bool | None = None


class CacheControl(Protocol):
    """What the admin API asks of the response cache."""

    async def stats(self) -> dict[str, Any]: ...

    async def purge(self, namespace: str | None) -> int:
        """Drop the entries of ``namespace`` (key:ID, user:NAME, tier:NAME or global; None: all),
        answering how many; ValueError, with a message for the operator, for any other name."""
        ...


def check_key_fields(config: Config, tier: str | None, models: list[str] | None, team: str | None = None) -> None:
    """A key's tier, models and team must exist in the configuration: a typo would lock the user
    out, or leave the key outside the limits its team shares."""
    if tier is not None and tier not in config.tiers:
        raise InvalidRequestError(
            f"Unknown tier {tier!r}; configured tiers: {', '.join(config.tiers)}.",
            param="tier",
            code="unknown_tier",
        )
    if team is not None and team not in config.teams:
        raise InvalidRequestError(
            f"Unknown team {team!r}; configured teams: {', '.join(config.teams) or '(none)'}.",
            param="team",
            code="unknown_team",
        )
    if models:
        unknown = [m for m in models if config.model_named(m) is None]
        if unknown:
            known = ", ".join(m.name for m in config.models) or "(none)"
            raise InvalidRequestError(
                f"Unknown model(s) {', '.join(unknown)}; configured models: {known}.",
                param="models",
                code="unknown_model",
            )


def expiry_problem(expires_at: datetime | None, now: datetime) -> str | None:
    """Why a new key may not have this expiry, or None. A key made already expired would be
    refused from its first request with nothing at creation to say why."""
    if expires_at is not None and expires_at <= now:
        return f"{expires_at.isoformat()} is in the past; a new key must expire in the future"
    return None


def _parse_day(value: str | None, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(f"{param} must be a date (YYYY-MM-DD) or an ISO 8601 time.", param=param) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _payload_error(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    return InvalidRequestError(
        f"Invalid '{field}': {first['msg'].removeprefix('Value error, ')}.",
        param=field,
        code="invalid_value",
    )


class AdminAPI:
    def __init__(
        self,
        config: Config,
        store: KeyStore,
        authenticator: Authenticator,
        master_key: str | None,
        quota: Callable[[Principal, str | None], Awaitable[dict[str, Any]]] | None = None,
        router: Router | None = None,
        usage: Callable[[str, datetime | None, datetime | None], Awaitable[dict[str, Any]]] | None = None,
        reload: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        cache: Callable[[], CacheControl] | None = None,
    ) -> None:
        self.config = config
        self._reload = reload
        # Asked at each request: the gateway's cache as it is then.
        self._cache = cache
        self.store = store
        self.authenticator = authenticator
        self._master_key = master_key
        self._quota = quota
        self._router = router
        self._usage = usage

    def _check_master_key(self, headers: RequestHeaders) -> None:
        if self._master_key is None:
            raise PermissionDeniedError(
                "The admin API is disabled: no master_key is configured.", code="admin_disabled"
            )
        given = extract_key(headers.authorization, headers.x_api_key)
        if not hmac.compare_digest(given.encode(), self._master_key.encode()):
            raise AuthenticationError("Invalid master key.", code="invalid_master_key")

    async def handle(self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders) -> None:
        self._check_master_key(headers)
        method: str = scope["method"]
        parts = scope["path"].rstrip("/").split("/")[2:]  # after "", "admin"
        if parts == ["tiers"]:
            self._allow(method, "GET")
            tiers = {name: t.model_dump(exclude_none=True) for name, t in self.config.tiers.items()}
            await send_json(send, 200, {"object": "list", "data": tiers})
            return
        if parts == ["teams"]:
            self._allow(method, "GET")
            teams = {name: t.model_dump(exclude_none=True) for name, t in self.config.teams.items()}
            await send_json(send, 200, {"object": "list", "data": teams})
            return
        if parts == ["usage"] and self._usage is not None:
            self._allow(method, "GET")
            # Blank values kept: "?by=" is a mistake to point out, not the default.
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            by = query.get("by", ["key"])[0]
            if by not in ("key", "user", "team", "model", "deployment", "day", "route"):
                raise InvalidRequestError("by must be key, user, team, model, deployment, day or route.", param="by")
            since, until = (_parse_day(query.get(name, [None])[0], name) for name in ("since", "until"))
            await send_json(send, 200, await self._usage(by, since, until))
            return
        if parts == ["deployments"] and self._router is not None:
            self._allow(method, "GET")
            await send_json(send, 200, {"object": "list", "data": await describe_deployments(self._router)})
            return
        if parts == ["reload"] and self._reload is not None:
            self._allow(method, "POST")
            await send_json(send, 200, await self._reload())
            return
        if parts == ["cache"] and self._cache is not None:
            await self._cache_route(method, scope, send, self._cache())
            return
        if parts[:1] != ["keys"] or len(parts) > 3:
            raise NotFoundError(f"Unknown admin route {scope['path']}.")
        if len(parts) == 1:
            if method == "GET":
                await self._list(scope, send)
            elif method == "POST":
                await self._create(receive, send, headers)
            else:
                raise MethodNotAllowedError(f"{method} is not allowed on /admin/keys.", headers={"Allow": "GET, POST"})
            return
        key_id = parts[1]
        if text_problem(key_id) is not None:
            # No key has such an id (ids are key_ and hex), and PostgreSQL could not even look.
            raise self._no_such_key(key_id)
        if len(parts) == 3 and parts[2] == "quota":
            self._allow(method, "GET")
            await self._key_quota(key_id, scope, send)
            return
        if len(parts) == 3:
            if parts[2] not in ("disable", "enable"):
                raise NotFoundError(f"Unknown admin route {scope['path']}.")
            self._allow(method, "POST")
            await self._respond_record(send, await self._change(key_id, disabled=parts[2] == "disable"))
        elif method == "GET":
            await self._respond_record(send, await self.store.get(key_id), key_id)
        elif method == "PATCH":
            await self._update(key_id, receive, send, headers)
        elif method == "DELETE":
            record = await self.store.delete(key_id)
            if record is None:
                raise self._no_such_key(key_id)
            self.authenticator.forget(key_id)
            await send_json(send, 200, {"id": key_id, "object": "key", "deleted": True})
        else:
            raise MethodNotAllowedError(
                f"{method} is not allowed on /admin/keys/{{id}}.", headers={"Allow": "GET, PATCH, DELETE"}
            )

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise MethodNotAllowedError(f"{method} is not allowed here; use {allowed}.", headers={"Allow": allowed})

    @staticmethod
    def _no_such_key(key_id: str) -> GatewayError:
        return NotFoundError(f"No key with id {key_id!r}.", code="key_not_found")

    async def _respond_record(self, send: Send, record: KeyRecord | None, key_id: str = "") -> None:
        if record is None:
            raise self._no_such_key(key_id)
        await send_json(send, 200, {"object": "key", **record.to_public_dict()})

    async def _read_json(self, receive: Receive, headers: RequestHeaders) -> Any:
        raw = await read_body(receive, headers.content_length, _ADMIN_BODY_LIMIT)
        try:
            return orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"Invalid JSON body: {exc.args[0]}.", code="invalid_json") from None

    async def _cache_route(self, method: str, scope: Scope, send: Send, cache: CacheControl) -> None:
        if method == "GET":
            await send_json(send, 200, {"object": "cache", **await cache.stats()})
            return
        if method != "DELETE":
            raise MethodNotAllowedError(f"{method} is not allowed on /admin/cache.", headers={"Allow": "GET, DELETE"})
        # Blank values kept: "?namespace=" is a mistake to point out, not "everything".
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        namespace = query.get("namespace", [None])[0]
        try:
            purged = await cache.purge(namespace)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="namespace", code="invalid_value") from None
        await send_json(send, 200, {"object": "cache_purge", "namespace": namespace, "purged": purged})

    async def _key_quota(self, key_id: str, scope: Scope, send: Send) -> None:
        record = await self.store.get(key_id)
        if record is None:
            raise self._no_such_key(key_id)
        assert self._quota is not None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        model = query.get("model", [None])[0]
        principal = Principal(
            record.id,
            record.user,
            record.tier,
            frozenset(record.models) if record.models is not None else None,
            record.limits,
            record.team,
        )
        await send_json(send, 200, await self._quota(principal, model))

    async def _list(self, scope: Scope, send: Send) -> None:
        # Blank values kept: "?team=" (a script's empty variable) must not list every key.
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        user, team = (query.get(name, [None])[0] for name in ("user", "team"))
        for name, value in (("user", user), ("team", team)):
            if value == "":
                raise InvalidRequestError(f"Invalid '{name}': empty.", param=name, code="invalid_value")
            problem = text_problem(value) if value is not None else None
            if problem is not None:
                raise InvalidRequestError(f"Invalid '{name}': {problem}.", param=name, code="invalid_value")
        records = await self.store.list(user=user, team=team)
        await send_json(
            send, 200, {"object": "list", "data": [{"object": "key", **r.to_public_dict()} for r in records]}
        )

    async def _create(self, receive: Receive, send: Send, headers: RequestHeaders) -> None:
        try:
            payload = KeyCreate.model_validate(await self._read_json(receive, headers))
        except ValidationError as exc:
            raise _payload_error(exc) from None
        check_key_fields(self.config, payload.tier, payload.models, payload.team)
        problem = expiry_problem(payload.expires_at, datetime.now(UTC))
        if problem is not None:
            raise InvalidRequestError(f"Invalid 'expires_at': {problem}.", param="expires_at", code="invalid_value")
        record, key = await self.store.create(
            user=payload.user,
            tier=payload.tier,
            models=payload.models,
            expires_at=payload.expires_at,
            name=payload.name,
            limits=payload.limits.model_dump(exclude_none=True) if payload.limits else None,
            team=payload.team,
        )
        await send_json(send, 201, {"object": "key", "key": key, **record.to_public_dict()})

    async def _update(self, key_id: str, receive: Receive, send: Send, headers: RequestHeaders) -> None:
        try:
            payload = KeyUpdate.model_validate(await self._read_json(receive, headers))
        except ValidationError as exc:
            raise _payload_error(exc) from None
        changes = payload.model_dump(exclude_unset=True)
        if any(changes.get(f) is None for f in ("user", "tier", "disabled") if f in changes):
            raise InvalidRequestError("user, tier and disabled cannot be null.", code="invalid_value")
        check_key_fields(self.config, changes.get("tier"), changes.get("models"), changes.get("team"))
        # "team": null takes the key out of its team. "limits" stays a merge patch, nulls included:
        # the store merges it (see KeyStore.update).
        await self._respond_record(send, await self._change(key_id, **changes), key_id)

    async def _change(self, key_id: str, **changes: Any) -> KeyRecord | None:
        record = await self.store.update(key_id, **changes)
        if record is None:
            raise self._no_such_key(key_id)
        self.authenticator.forget(key_id)
        return record
