"""Who is calling the admin API, and what their role lets them do.

A caller proves who they are with the master key or an admin key (``Authorization: Bearer``),
or with the console's session cookie (see console._session). Cookie-borne writes must also
carry the session's CSRF token, and come from the gateway's own origin when the browser says
where they come from (``Origin``): the cookie is sent by the browser on its own, the token only by
the console's scripts.

Roles (keys._admins): ``admin`` may do everything; ``viewer`` may read; ``team_admin`` may read,
and manage the keys of its one team. AdminAPI asks ``require_write`` and ``require_admin`` before
each change, and ``may_see_team`` of each key; the filters that keep a team admin to its team are
AdminAPI's.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ..auth import extract_key
from ..console._session import Session, SessionCodec, cookie_value
from ..errors import AuthenticationError, PermissionDeniedError
from ..keys import AdminKeyStore, Role
from ._asgi import RequestHeaders, Scope

MASTER = "master"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    actor: str  # "master" or the admin key's id: what the audit log records
    name: str
    role: Role
    team: str | None = None

    def to_public_dict(self) -> dict[str, str | None]:
        return {"object": "admin", "id": self.actor, "name": self.name, "role": self.role, "team": self.team}

    def require_admin(self, what: str) -> None:
        if self.role != "admin":
            raise PermissionDeniedError(
                f"Your admin key's role ({self.role}) may not {what}; it takes an admin.", code="permission_denied"
            )

    def require_write(self) -> None:
        if self.role == "viewer":
            raise PermissionDeniedError("Your admin key's role (viewer) may only read.", code="permission_denied")

    def may_see_team(self, team: str | None) -> bool:
        return self.role != "team_admin" or team == self.team


MASTER_PRINCIPAL = AdminPrincipal(MASTER, "master key", "admin")


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


class AdminAuth:
    def __init__(self, master_key: str | None, admin_keys: AdminKeyStore) -> None:
        self._master_key = master_key
        self.admin_keys = admin_keys
        self.sessions = SessionCodec(master_key)

    async def from_key(self, key: str) -> AdminPrincipal:
        """The principal a master or admin key stands for; 401 for any other string."""
        if self._master_key is not None and hmac.compare_digest(key.encode(), self._master_key.encode()):
            return MASTER_PRINCIPAL
        if key.startswith("qga-"):
            record = await self.admin_keys.find(key)
            if record is not None:
                return AdminPrincipal(record.id, record.name, record.role, record.team)
        if self._master_key is None:
            raise PermissionDeniedError(
                "The admin API is disabled: no master_key is configured (admin keys made with "
                "`quotagate admin-keys create` still work).",
                code="admin_disabled",
            )
        # The code of the versions before admin keys, which scripts may test for.
        raise AuthenticationError("Invalid master or admin key.", code="invalid_master_key")

    async def from_subject(self, subject: str) -> AdminPrincipal | None:
        """The principal a session was made for, as it is now (None: its admin key was deleted)."""
        if subject == MASTER:
            return MASTER_PRINCIPAL if self._master_key is not None else None
        record = await self.admin_keys.get(subject)
        return AdminPrincipal(record.id, record.name, record.role, record.team) if record is not None else None

    def session(self, scope: Scope) -> Session | None:
        value = cookie_value(scope["headers"])
        return self.sessions.read(value) if value is not None else None

    async def identify(self, scope: Scope, headers: RequestHeaders) -> AdminPrincipal:
        """The caller of an admin request: by key if one is sent, else by the session cookie."""
        session = self.session(scope)
        # A key wins over the cookie; but a browser behind a proxy with Basic auth sends its
        # "Authorization: Basic ..." with every console call, which is no admin key.
        basic = (headers.authorization or "").lower().startswith("basic ") and not headers.x_api_key
        if (headers.authorization or headers.x_api_key) and not (basic and session is not None):
            return await self.from_key(extract_key(headers.authorization, headers.x_api_key))
        if session is None:
            raise AuthenticationError(
                "Send the master key or an admin key as 'Authorization: Bearer KEY', or sign in at /ui.",
                code="missing_api_key",
            )
        principal = await self.from_subject(session.subject)
        if principal is None:
            raise AuthenticationError("Your console session's admin key no longer exists.", code="session_ended")
        if scope["method"] not in _SAFE_METHODS:
            check_csrf(scope, session)
        return principal


def check_csrf(scope: Scope, session: Session) -> None:
    """A write under a session cookie must carry the session's token and, when the browser names
    the page's origin, come from the gateway's own."""
    token = _header(scope, b"x-csrf-token")
    if token is None or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise PermissionDeniedError("Missing or wrong X-CSRF-Token for this session.", code="csrf_failed")
    check_origin(scope)


def check_origin(scope: Scope) -> None:
    """A browser's request that names another origin than the gateway's is refused (a write, or a
    sign-in that would put the operator's browser in someone else's session)."""
    origin = _header(scope, b"origin")
    if origin is None:
        return
    # Behind a reverse proxy the Host may be the proxy's upstream name; the proxy then says the
    # browser's in X-Forwarded-Host.
    hosts = {_header(scope, b"host"), _header(scope, b"x-forwarded-host")} - {None}
    if hosts and origin.partition("://")[2] not in hosts:
        raise PermissionDeniedError(f"Cross-origin request from {origin} refused.", code="csrf_failed")
