"""The console's sign-in session: a signed cookie, so any node behind a load balancer can read it.

The cookie holds who signed in (``master`` or an admin key's id), when the session ends, and the
session's CSRF token, signed with HMAC-SHA256. Nodes sharing a configuration share the signing
secret, derived from the master key: a session made on one node is good on every node, and
changing the master key ends every session. Without a master key (admin keys made with the CLI
only), the secret is random per process: sessions then last as long as the process (reloads
included) and are good on that process only, so a gateway of several workers or nodes needs a
master key for its console.

Signing out clears the browser's cookie; the cookie itself stays valid until it expires. To end
sessions at once, delete the admin key they were made with (or change the master key: all of them).

The cookie is HttpOnly (page scripts cannot read it), SameSite=Strict (another site's pages do
not send it), and Secure when the gateway is reached over HTTPS. Writes made with it must also
carry the CSRF token in ``X-CSRF-Token``: the console reads the token from GET /ui/session, which
a page of another origin cannot read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

COOKIE_NAME = "qg_session"
SESSION_SECONDS = 12 * 3600
# Without a master key: one secret for the process's life, so a reload does not sign everyone out.
_PROCESS_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class Session:
    subject: str  # "master" or an admin key's id
    expires: float  # epoch seconds
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    def __init__(self, master_key: str | None, seconds: float = SESSION_SECONDS) -> None:
        if master_key:
            self._secret = hmac.new(master_key.encode(), b"quotagate console session v1", hashlib.sha256).digest()
        else:
            self._secret = _PROCESS_SECRET
        self.seconds = seconds

    def new(self, subject: str, now: float | None = None) -> tuple[Session, str]:
        """A new session for ``subject``, and its cookie value."""
        session = Session(subject, (now if now is not None else time.time()) + self.seconds, secrets.token_urlsafe(24))
        payload = _b64(orjson.dumps({"sub": session.subject, "exp": session.expires, "csrf": session.csrf}))
        return session, f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str, now: float | None = None) -> Session | None:
        """The session a cookie value holds, or None if it is forged, damaged or over."""
        payload, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            fields = orjson.loads(_unb64(payload))
            session = Session(str(fields["sub"]), float(fields["exp"]), str(fields["csrf"]))
        except (binascii.Error, ValueError, KeyError, TypeError):
            return None
        return session if session.expires > (now if now is not None else time.time()) else None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())


def cookie_value(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The session cookie's value among a request's headers, or None."""
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, _, text = part.strip().partition("=")
            if key == COOKIE_NAME and text:
                return text
    return None


def set_cookie(value: str, seconds: float, secure: bool) -> tuple[bytes, bytes]:
    attributes = f"{COOKIE_NAME}={value}; Path=/; Max-Age={int(seconds)}; HttpOnly; SameSite=Strict"
    return (b"set-cookie", (attributes + ("; Secure" if secure else "")).encode())


def clear_cookie(secure: bool) -> tuple[bytes, bytes]:
    return set_cookie("", 0, secure)
