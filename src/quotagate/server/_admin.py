"""The admin HTTP API under /admin, for the master key, admin keys and console sessions.

Who may call what is _admin_auth's: an admin (the master key, or an admin key of role admin) may
do everything; a viewer may only read; a team admin reads, and manages its own team's keys only
(another team's key is not found for it, and its lists, ledger and usage are its team's). Every
change is written to the audit log, with who made it.

GET    /admin/whoami               the caller: role, name, team
GET    /admin/keys[?user=U&team=T] list keys (never the keys themselves)
POST   /admin/keys                 create; the response holds the key, the only time it is shown
GET    /admin/keys/{id}
PATCH  /admin/keys/{id}            change user, team, tier, models, expires_at, name, disabled,
                                   limits ("team": null takes the key out of its team; limits
                                   merge: {"tpm": 5000} sets one, {"tpm": null} removes one,
                                   "limits": null removes all)
POST   /admin/keys/{id}/disable
POST   /admin/keys/{id}/enable
POST   /admin/keys/{id}/rotate     a new secret (shown once) for the same key: id, settings and
                                   usage stay; the old secret stops working
DELETE /admin/keys/{id}
GET    /admin/keys/{id}/quota      the key's limits, live: used, remaining, reset
GET    /admin/tiers                the configured tiers and their limits
GET    /admin/teams                the configured teams and their limits
GET    /admin/teams/{name}/quota   the team's shared limits and budgets, live
GET    /admin/users                the users that keys belong to
GET    /admin/users/{user}/quota   the user's own limits (limits[] of scope user), live
GET    /admin/usage                totals grouped by key, user, team, tier, model, deployment, day
                                   or route (_admin_ledger)
GET    /admin/usage/series         the same over time, in buckets (_admin_ledger)
GET    /admin/ledger               the request log, filtered and paginated, or as CSV (_admin_ledger)
GET    /admin/deployments          each deployment's health, live
POST   /admin/reload               serve the configuration file as it is now (as SIGHUP does)
GET    /admin/cache                the response cache's figures
DELETE /admin/cache[?namespace=NS] drop the cache's entries (of key:ID, user:NAME, tier:NAME or
                                   global only); answers how many
GET    /admin/audit                the audit log, newest first (?limit=, ?before=ID)
GET    /admin/admin-keys           admin keys (admins only), POST to make one, DELETE /{id}
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol
from urllib.parse import parse_qs

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..auth import Authenticator, Principal
from ..config import Config, LimitValues
from ..errors import (
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
)
from ..keys import AuditLog, KeyRecord, KeyStore, Role, role_problem
from ..keys._store import LABEL_PATTERN, text_problem
from ..router import Router
from ._admin_auth import AdminAuth, AdminPrincipal
from ._admin_ledger import LedgerViews, query_params, text_param, whole_number
from ._asgi import Receive, RequestHeaders, Scope, Send, read_body, send_json
from ._deployments_view import describe_deployments

logger = logging.getLogger("quotagate.admin")

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


class AdminKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Label = Field(min_length=1, max_length=200)
    role: Role
    team: Label | None = Field(default=None, min_length=1, max_length=100, description="a team_admin's team")


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
        auth: AdminAuth,
        audit: AuditLog,
        quota: Callable[[Principal, str | None], Awaitable[dict[str, Any]]] | None = None,
        router: Router | None = None,
        reload: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        cache: Callable[[], CacheControl] | None = None,
        ledger: LedgerViews | None = None,
    ) -> None:
        self.config = config
        self._reload = reload
        # Asked at each request: the gateway's cache as it is then.
        self._cache = cache
        self.store = store
        self.authenticator = authenticator
        self.auth = auth
        self.audit = audit
        self._quota = quota
        self._router = router
        self._ledger = ledger

    async def handle(self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders) -> None:
        caller = await self.auth.identify(scope, headers)
        method: str = scope["method"]
        if method != "GET":
            caller.require_write()  # a viewer's every write, whatever the route
        parts = scope["path"].rstrip("/").split("/")[2:]  # after "", "admin"
        if parts == ["whoami"]:
            self._allow(method, "GET")
            await send_json(send, 200, caller.to_public_dict())
            return
        if parts == ["tiers"]:
            self._allow(method, "GET")
            tiers = {name: t.model_dump(exclude_none=True) for name, t in self.config.tiers.items()}
            await send_json(send, 200, {"object": "list", "data": tiers})
            return
        if parts[:1] == ["teams"]:
            await self._teams(caller, method, parts[1:], send)
            return
        if parts[:1] == ["users"]:
            await self._users(caller, method, parts[1:], send)
            return
        if self._ledger is not None and parts in (["usage"], ["ledger"], ["usage", "series"]):
            self._allow(method, "GET")
            if parts == ["usage"]:
                await self._ledger.usage(scope, send, self._team_of(caller))
            elif parts == ["ledger"]:
                await self._ledger.ledger(scope, send, self._team_of(caller), receive)
            else:
                await self._ledger.series(scope, send, self._team_of(caller))
            return
        if parts == ["deployments"] and self._router is not None:
            self._allow(method, "GET")
            await send_json(send, 200, {"object": "list", "data": await describe_deployments(self._router)})
            return
        if parts == ["reload"] and self._reload is not None:
            self._allow(method, "POST")
            caller.require_admin("reload the configuration")
            result = await self._reload()
            await self._record(caller, "config.reload", None, {"file": result.get("file")})
            await send_json(send, 200, result)
            return
        if parts == ["cache"] and self._cache is not None:
            await self._cache_route(caller, method, scope, send, self._cache())
            return
        if parts == ["audit"]:
            self._allow(method, "GET")
            await self._audit_page(caller, scope, send)
            return
        if parts[:1] == ["admin-keys"]:
            await self._admin_keys(caller, method, parts[1:], receive, send, headers)
            return
        if parts[:1] != ["keys"] or len(parts) > 3:
            raise NotFoundError(f"Unknown admin route {scope['path']}.")
        await self._keys(caller, method, parts[1:], scope, receive, send, headers)

    async def _keys(
        self,
        caller: AdminPrincipal,
        method: str,
        parts: list[str],
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: RequestHeaders,
    ) -> None:
        if not parts:
            if method == "GET":
                await self._list(caller, scope, send)
            elif method == "POST":
                await self._create(caller, receive, send, headers)
            else:
                raise MethodNotAllowedError(f"{method} is not allowed on /admin/keys.", headers={"Allow": "GET, POST"})
            return
        key_id = parts[0]
        if text_problem(key_id) is not None:
            # No key has such an id (ids are key_ and hex), and PostgreSQL could not even look.
            raise self._no_such_key(key_id)
        # A team admin's view of the keys is its team's: another team's key is not there for it.
        record = await self.store.get(key_id)
        if record is None or not caller.may_see_team(record.team):
            raise self._no_such_key(key_id)
        action = parts[1] if len(parts) == 2 else None
        if action == "quota":
            self._allow(method, "GET")
            await self._key_quota(record, scope, send)
            return
        if action is not None:
            if action not in ("disable", "enable", "rotate"):
                raise NotFoundError(f"Unknown admin route {scope['path']}.")
            self._allow(method, "POST")
            if action == "rotate":
                rotated = await self.store.rotate(key_id)
                if rotated is None:
                    raise self._no_such_key(key_id)
                self.authenticator.forget(key_id)  # the old secret stops working at once here
                new_record, key = rotated
                await self._record(caller, "key.rotate", key_id, {"key_hint": new_record.key_hint})
                await send_json(send, 200, {"object": "key", "key": key, **new_record.to_public_dict()})
                return
            changed = await self._change(key_id, disabled=action == "disable")
            await self._record(caller, f"key.{action}", key_id)
            await self._respond_record(send, changed)
        elif method == "GET":
            await self._respond_record(send, record, key_id)
        elif method == "PATCH":
            await self._update(caller, record, receive, send, headers)
        elif method == "DELETE":
            if await self.store.delete(key_id) is None:
                raise self._no_such_key(key_id)
            self.authenticator.forget(key_id)
            await self._record(caller, "key.delete", key_id, {"user": record.user, "team": record.team})
            await send_json(send, 200, {"id": key_id, "object": "key", "deleted": True})
        else:
            raise MethodNotAllowedError(
                f"{method} is not allowed on /admin/keys/{{id}}.", headers={"Allow": "GET, PATCH, DELETE"}
            )

    @staticmethod
    def _team_of(caller: AdminPrincipal) -> str | None:
        """The team a caller's reads are kept to (a team admin's), or None: every team."""
        return caller.team if caller.role == "team_admin" else None

    async def _record(
        self, caller: AdminPrincipal, action: str, target: str | None, details: dict[str, Any] | None = None
    ) -> None:
        try:
            await self.audit.record(caller.actor, action, target, details, actor_name=caller.name)
        except Exception:
            # The change is made and committed: its caller must get the answer (a rotated key's
            # new secret exists only in it). The missing entry is in the log instead.
            logger.exception("the audit log could not record %s of %s by %s", action, target, caller.actor)

    async def _teams(self, caller: AdminPrincipal, method: str, parts: list[str], send: Send) -> None:
        self._allow(method, "GET")
        if not parts:
            teams = {
                name: t.model_dump(exclude_none=True)
                for name, t in self.config.teams.items()
                if caller.may_see_team(name)
            }
            await send_json(send, 200, {"object": "list", "data": teams})
            return
        name = parts[0]
        if len(parts) != 2 or parts[1] != "quota" or self._quota is None:
            raise NotFoundError(f"Unknown admin route /admin/teams/{'/'.join(parts)}.")
        if name not in self.config.teams or not caller.may_see_team(name):
            raise NotFoundError(f"No team {name!r} is configured.", code="team_not_found")
        quota = await self._quota(Principal("", "", "", None, None, name), None)
        limits = [entry for entry in quota["limits"] if entry["scope"] == "team"]
        await send_json(send, 200, {"object": "team_quota", "team": name, "limits": limits})

    async def _users(self, caller: AdminPrincipal, method: str, parts: list[str], send: Send) -> None:
        """The users that keys belong to (a team admin: its team's), and a user's own limits."""
        self._allow(method, "GET")
        user = parts[0] if parts else None
        if user is not None and text_problem(user) is not None:
            raise NotFoundError(f"No key belongs to user {user!r}.", code="user_not_found")
        records = await self.store.list(user=user, team=self._team_of(caller))
        users: dict[str, dict[str, Any]] = {}
        for record in records:
            entry = users.setdefault(record.user, {"object": "user", "user": record.user, "keys": 0, "teams": []})
            entry["keys"] += 1
            if record.team is not None and record.team not in entry["teams"]:
                entry["teams"].append(record.team)
        if not parts:
            await send_json(send, 200, {"object": "list", "data": [users[name] for name in sorted(users)]})
            return
        assert user is not None
        if len(parts) != 2 or parts[1] != "quota" or self._quota is None:
            raise NotFoundError(f"Unknown admin route /admin/users/{'/'.join(parts)}.")
        if user not in users:
            raise NotFoundError(f"No key belongs to user {user!r}.", code="user_not_found")
        quota = await self._quota(Principal("", user, "", None, None, None), None)
        limits = [entry for entry in quota["limits"] if entry["scope"] == "user"]
        await send_json(send, 200, {**users[user], "object": "user_quota", "limits": limits})

    async def _audit_page(self, caller: AdminPrincipal, scope: Scope, send: Send) -> None:
        if caller.role == "team_admin":
            # The log names every team's keys and changes; a team admin's view is its team's.
            raise PermissionDeniedError("The audit log is for admins and viewers.", code="permission_denied")
        query = query_params(scope)
        limit = whole_number(query, "limit", 50, 1, 500)
        before = whole_number(query, "before", None, 1, 2**62)
        assert limit is not None
        entries, more = await self.audit.page(limit, before)
        await send_json(send, 200, {"object": "list", "data": [e.to_public_dict() for e in entries], "has_more": more})

    async def _admin_keys(
        self,
        caller: AdminPrincipal,
        method: str,
        parts: list[str],
        receive: Receive,
        send: Send,
        headers: RequestHeaders,
    ) -> None:
        caller.require_admin("manage admin keys")
        admin_keys = self.auth.admin_keys
        if not parts:
            if method == "GET":
                records = await admin_keys.list()
                data = [{"object": "admin_key", **r.to_public_dict()} for r in records]
                await send_json(send, 200, {"object": "list", "data": data})
                return
            self._allow(method, "POST")
            try:
                payload = AdminKeyCreate.model_validate(await self._read_json(receive, headers))
            except ValidationError as exc:
                raise _payload_error(exc) from None
            problem = role_problem(payload.role, payload.team)
            if problem is not None:
                raise InvalidRequestError(f"Invalid 'role': {problem}.", param="role", code="invalid_value")
            check_key_fields(self.config, None, None, payload.team)
            record, key = await admin_keys.create(name=payload.name, role=payload.role, team=payload.team)
            details = {"name": record.name, "role": record.role, "team": record.team}
            await self._record(caller, "admin_key.create", record.id, details)
            await send_json(send, 201, {"object": "admin_key", "key": key, **record.to_public_dict()})
            return
        if len(parts) != 1:
            raise NotFoundError(f"Unknown admin route /admin/admin-keys/{'/'.join(parts)}.")
        self._allow(method, "DELETE")
        deleted = await admin_keys.delete(parts[0]) if text_problem(parts[0]) is None else None
        if deleted is None:
            raise NotFoundError(f"No admin key with id {parts[0]!r}.", code="admin_key_not_found")
        await self._record(caller, "admin_key.delete", deleted.id, {"name": deleted.name, "role": deleted.role})
        await send_json(send, 200, {"id": deleted.id, "object": "admin_key", "deleted": True})

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

    async def _cache_route(
        self, caller: AdminPrincipal, method: str, scope: Scope, send: Send, cache: CacheControl
    ) -> None:
        if method == "GET":
            await send_json(send, 200, {"object": "cache", **await cache.stats()})
            return
        if method != "DELETE":
            raise MethodNotAllowedError(f"{method} is not allowed on /admin/cache.", headers={"Allow": "GET, DELETE"})
        caller.require_admin("purge the response cache")
        # "?namespace=" is a mistake to point out, not "everything" (query_params keeps it).
        query = query_params(scope)
        namespace = query.get("namespace", [None])[0]
        problem = text_problem(namespace) if namespace is not None else None
        if problem is not None:
            raise InvalidRequestError(f"Invalid 'namespace': {problem}.", param="namespace", code="invalid_value")
        try:
            purged = await cache.purge(namespace)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="namespace", code="invalid_value") from None
        await self._record(caller, "cache.purge", namespace, {"purged": purged})
        await send_json(send, 200, {"object": "cache_purge", "namespace": namespace, "purged": purged})

    async def _key_quota(self, record: KeyRecord, scope: Scope, send: Send) -> None:
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

    async def _list(self, caller: AdminPrincipal, scope: Scope, send: Send) -> None:
        # "?team=" (a script's empty variable) is a 400, and must not list every key.
        query = query_params(scope)
        user, team = text_param(query, "user"), text_param(query, "team")
        own = self._team_of(caller)
        if own is not None:
            if team not in (None, own):
                raise PermissionDeniedError(
                    f"A team admin of {own!r} sees only its team's keys.", code="permission_denied"
                )
            team = own
        records = await self.store.list(user=user, team=team)
        await send_json(
            send, 200, {"object": "list", "data": [{"object": "key", **r.to_public_dict()} for r in records]}
        )

    async def _create(self, caller: AdminPrincipal, receive: Receive, send: Send, headers: RequestHeaders) -> None:
        try:
            payload = KeyCreate.model_validate(await self._read_json(receive, headers))
        except ValidationError as exc:
            raise _payload_error(exc) from None
        own = self._team_of(caller)
        if own is not None:
            if payload.team not in (None, own):
                raise PermissionDeniedError(
                    f"A team admin of {own!r} makes keys of its team only.", code="permission_denied"
                )
            payload.team = own
            overrides = payload.limits.model_dump(exclude_none=True) if payload.limits else {}
            await self._check_team_admin_change(own, payload.user, payload.tier, overrides)
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
        details = {"user": record.user, "tier": record.tier, "team": record.team, "name": record.name}
        await self._record(caller, "key.create", record.id, details)
        await send_json(send, 201, {"object": "key", "key": key, **record.to_public_dict()})

    async def _update(
        self, caller: AdminPrincipal, current: KeyRecord, receive: Receive, send: Send, headers: RequestHeaders
    ) -> None:
        key_id = current.id
        try:
            payload = KeyUpdate.model_validate(await self._read_json(receive, headers))
        except ValidationError as exc:
            raise _payload_error(exc) from None
        changes = payload.model_dump(exclude_unset=True)
        if any(changes.get(f) is None for f in ("user", "tier", "disabled") if f in changes):
            raise InvalidRequestError("user, tier and disabled cannot be null.", code="invalid_value")
        own = self._team_of(caller)
        if own is not None:
            if "team" in changes and changes["team"] != own:
                raise PermissionDeniedError(
                    f"A team admin of {own!r} cannot move keys out of it.", code="permission_denied"
                )
            overrides = {k: v for k, v in (changes.get("limits") or {}).items() if v is not None}
            user = changes.get("user", current.user)
            await self._check_team_admin_change(own, user, changes.get("tier", current.tier), overrides)
        check_key_fields(self.config, changes.get("tier"), changes.get("models"), changes.get("team"))
        # "team": null takes the key out of its team. "limits" stays a merge patch, nulls included:
        # the store merges it (see KeyStore.update).
        record = await self._change(key_id, **changes)
        await self._record(caller, "key.update", key_id, orjson.loads(payload.model_dump_json(exclude_unset=True)))
        await self._respond_record(send, record, key_id)

    async def _check_team_admin_change(self, team: str, user: str, tier: str, overrides: dict[str, float]) -> None:
        """What a team admin may not do to a key of its team: give it a user whose other keys are
        another team's (a user's limits, and the response cache's user namespace, are the user's
        across teams), or give it limits above its tier's (the admins' plans are the ceiling)."""
        others = [r for r in await self.store.list(user=user) if r.team != team]
        if others:
            raise PermissionDeniedError(
                f"User {user!r} has keys outside team {team!r}; a team admin may not make keys for them.",
                param="user",
                code="permission_denied",
            )
        ceiling = self.config.tiers.get(tier)
        for name, value in overrides.items():
            allowed = getattr(ceiling, name, None) if ceiling is not None else None
            if allowed is not None and value > allowed:
                raise PermissionDeniedError(
                    f"A team admin may only lower a key's limits: {name} {value:g} is above tier {tier!r}'s "
                    f"{allowed:g}.",
                    param="limits",
                    code="permission_denied",
                )

    async def _change(self, key_id: str, **changes: Any) -> KeyRecord | None:
        record = await self.store.update(key_id, **changes)
        if record is None:
            raise self._no_such_key(key_id)
        self.authenticator.forget(key_id)
        return record
