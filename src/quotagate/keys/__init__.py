"""Gateway keys (creation, hashed storage, listing, disabling, rotation and deletion), the admin
keys of the admin API and console, and the audit log of what was changed through them."""

from ._admins import ADMIN_KEY_PREFIX, ROLES, AdminKeyRecord, AdminKeyStore, Role, role_problem
from ._audit import AuditEntry, AuditLog
from ._database import Database
from ._secrets import KEY_PREFIX, hash_key, key_hint, new_key
from ._store import KeyRecord, KeyStore

__all__ = [
    "ADMIN_KEY_PREFIX",
    "KEY_PREFIX",
    "ROLES",
    "AdminKeyRecord",
    "AdminKeyStore",
    "AuditEntry",
    "AuditLog",
    "Database",
    "KeyRecord",
    "KeyStore",
    "Role",
    "hash_key",
    "key_hint",
    "new_key",
    "role_problem",
]
