"""Gateway keys: creation, hashed storage, listing, disabling and deletion."""

from ._secrets import KEY_PREFIX, hash_key, key_hint, new_key
from ._store import KeyRecord, KeyStore, async_database_url, create_engine

__all__ = [
    "KEY_PREFIX",
    "KeyRecord",
    "KeyStore",
    "async_database_url",
    "create_engine",
    "hash_key",
    "key_hint",
    "new_key",
]
