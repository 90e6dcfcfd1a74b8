"""Gateway keys: creation, hashed storage, listing, disabling and deletion."""

from ._database import Database
from ._secrets import KEY_PREFIX, hash_key, key_hint, new_key
from ._store import KeyRecord, KeyStore

__all__ = [
    "KEY_PREFIX",
    "Database",
    "KeyRecord",
    "KeyStore",
    "hash_key",
    "key_hint",
    "new_key",
]
