"""Gateway key material: how keys look, and the only form in which they are stored."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "qg-"


def new_key() -> str:
    # 32 random bytes: guessing is hopeless, so a fast hash (not a slow KDF) is the right choice
    # for storage; it also keeps the lookup on a cache miss to a single indexed query.
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_hint(key: str) -> str:
    """What lists show of a key: enough to recognise it, too little to use it."""
    return f"{key[:7]}...{key[-4:]}"


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)
