"""The operator console at /ui: sign-in, the session, and the console's files.

The console is static files inside the package (``console/static``: HTML, CSS and ES modules, no
build step) that read and change everything through the admin API, under the session cookie that
signing in here sets (see _session). Nothing but the sign-in page and what it needs is served
without a session: the console's pages and scripts answer 401 (the page itself redirects to the
sign-in page), and the data is the admin API's, which checks the session again on every call.

GET  /ui, /ui/          the console (303 to /ui/login without a session)
GET  /ui/login          the sign-in page
POST /ui/login          {"key": "..."} -> the session's cookie; the caller's role, name and CSRF token
GET  /ui/session        the caller's role, name, team and CSRF token (401 without a session)
POST /ui/logout         signs out: the browser's cookie is cleared (see _session for ending sessions)
GET  /ui/static/<file>  the console's files
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Any

import orjson

from ..errors import AuthenticationError, InvalidRequestError, MethodNotAllowedError, NotFoundError
from ..server._admin_auth import AdminAuth, AdminPrincipal, check_csrf, check_origin
from ..server._asgi import Receive, RequestHeaders, Scope, Send, read_body, send_bytes, send_json
from ._session import clear_cookie, set_cookie

# Only the page and its own files may run or load anything: no inline script, nothing from
# elsewhere, and no framing (clickjacking the console's buttons).
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
# What the sign-in page needs; everything else of the console is for signed-in operators only.
_PUBLIC = frozenset({"login.html", "login.js", "app.css", "favicon.svg"})
_LOGIN_BODY_LIMIT = 4096
# By suffix, not from the system's MIME table: a module script must be served as JavaScript
# whatever /etc/mime.types says, and files of any other kind are not served.
_CONTENT_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "svg": b"image/svg+xml",
    "png": b"image/png",
}


class Console:
    def __init__(self, auth: Callable[[], AdminAuth], audit_record: Any) -> None:
        self._auth = auth  # asked at each request: the admin API's, as a reload last made it
        self._audit_record = audit_record
        self._static = files("quotagate.console").joinpath("static")
        self._files: dict[str, tuple[bytes, bytes]] = {}  # name -> (body, content type), read once

    @property
    def auth(self) -> AdminAuth:
        return self._auth()

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, request_id: str
    ) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        auth = self.auth  # one request, one AdminAuth: a reload meanwhile does not mix two
        if path in ("/ui", "/ui/"):
            self._allow(method, "GET")
            if await self._principal(auth, scope) is None:
                await send_bytes(send, 303, b"", [(b"location", b"/ui/login"), (b"cache-control", b"no-store")])
                return
            await self._send_file(send, "index.html")
        elif path == "/ui/login":
            if method == "POST":
                await self._sign_in(auth, scope, receive, send, headers)
            else:
                self._allow(method, "GET")
                await self._send_file(send, "login.html")
        elif path == "/ui/session":
            self._allow(method, "GET")
            session = auth.session(scope)
            principal = await self._principal(auth, scope)
            if session is None or principal is None:
                raise AuthenticationError("Not signed in.", code="not_signed_in")
            await send_json(send, 200, _describe(principal, session.csrf), [(b"cache-control", b"no-store")])
        elif path == "/ui/logout":
            self._allow(method, "POST")
            session = auth.session(scope)
            if session is not None:
                check_csrf(scope, session)  # another site must not be able to sign an operator out
            await send_bytes(send, 204, b"", [clear_cookie(_secure(scope))])
        elif path.startswith("/ui/static/"):
            self._allow(method, "GET")
            name = path.removeprefix("/ui/static/")
            if name not in _PUBLIC and await self._principal(auth, scope) is None:
                raise AuthenticationError("Sign in at /ui/login first.", code="not_signed_in")
            await self._send_file(send, name)
        else:
            raise NotFoundError(f"Unknown route: {method} {path}.", code="unknown_url")

    @staticmethod
    async def _principal(auth: AdminAuth, scope: Scope) -> AdminPrincipal | None:
        session = auth.session(scope)
        return await auth.from_subject(session.subject) if session is not None else None

    async def _sign_in(
        self, auth: AdminAuth, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders
    ) -> None:
        check_origin(scope)
        raw = await read_body(receive, headers.content_length, _LOGIN_BODY_LIMIT)
        try:
            key = orjson.loads(raw).get("key")
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        if not isinstance(key, str) or not key.strip():
            raise InvalidRequestError('Send {"key": "..."}: the master key or an admin key.', param="key")
        principal = await auth.from_key(key.strip())
        session, cookie = auth.sessions.new(principal.actor)
        await self._audit_record(principal.actor, "console.sign_in", None, None, actor_name=principal.name)
        await send_json(
            send,
            200,
            _describe(principal, session.csrf),
            [set_cookie(cookie, auth.sessions.seconds, _secure(scope)), (b"cache-control", b"no-store")],
        )

    async def _send_file(self, send: Send, name: str) -> None:
        found = self._files.get(name)
        if found is None:
            # Names come from the URL: only plain names and subfolders of static/, never "..".
            parts = name.split("/")
            if not name or any(part in ("", ".", "..") or "\\" in part for part in parts):
                raise NotFoundError(f"No console file {name!r}.", code="unknown_url")
            resource = self._static.joinpath(*parts)
            kind = _CONTENT_TYPES.get(name.rpartition(".")[2])
            if kind is None or not resource.is_file():
                raise NotFoundError(f"No console file {name!r}.", code="unknown_url")
            found = (resource.read_bytes(), kind)
            self._files[name] = found
        body, kind = found
        # The pages are read fresh after an upgrade; the session's answers are never stored.
        await send_bytes(
            send, 200, body, [(b"content-type", kind), (b"cache-control", b"no-cache"), *_SECURITY_HEADERS]
        )

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise MethodNotAllowedError(f"{method} is not allowed here; use {allowed}.", headers={"Allow": allowed})


def _describe(principal: AdminPrincipal, csrf: str) -> dict[str, Any]:
    return {"role": principal.role, "name": principal.name, "team": principal.team, "id": principal.actor, "csrf": csrf}


def _secure(scope: Scope) -> bool:
    """Whether the browser reached the gateway over HTTPS (directly, or through a proxy that says so)."""
    if scope.get("scheme") == "https":
        return True
    return any(name == b"x-forwarded-proto" and value.strip().lower() == b"https" for name, value in scope["headers"])
