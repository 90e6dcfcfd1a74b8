"""What makes two requests the same question: the exact cache's key.

A request's canonical form is its body as JSON with sorted keys, without the fields that do not
change the answer (who asks, request ids, whether it is streamed, the cache's own controls), and
with the model as the gateway serves it. Two requests with the same canonical form get the same
answer from a deterministic model, and a cached one from any other. The key is the SHA-256 of the
canonical form, under a namespace (a key, a user, a tier, or everyone), so a lookup never reaches
another namespace's entry.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal
from urllib.parse import quote

import orjson

Namespace = Literal["key", "user", "tier", "global"]

# Fields that change nothing in the answer. ``stream``: a cached answer is replayed either way;
# ``stream_options``: only whether a usage chunk is sent, which the replay decides; ``user`` and
# ``metadata``: who asks and why; ``cache``: the controls LiteLLM users send in the body.
IGNORED_FIELDS = frozenset({"user", "stream", "stream_options", "metadata", "cache", "store", "service_tier"})


def canonical(body: dict[str, Any], model: str) -> bytes:
    """The request as the cache compares it: sorted keys, ignored fields dropped, ``model`` as served."""
    kept = {name: value for name, value in body.items() if name not in IGNORED_FIELDS}
    kept["model"] = model
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def namespace_of(scope: Namespace, key_id: str | None, user: str | None, tier: str | None) -> str:
    """The namespace an entry lives in: one per key, per user, per tier, or one for everyone. A key
    without a user has the namespace of its key under ``user``: it shares answers with no one."""
    if scope == "user" and user is not None:
        return "u:" + _escaped(user)
    if scope == "tier" and tier is not None:
        return "t:" + _escaped(tier)
    if scope == "global":
        return "g"
    return "k:" + _escaped(key_id or "")


def _escaped(name: str) -> str:
    # A key is "<namespace>:<hash>", and a purge drops the keys that start with "<namespace>:";
    # a user named "alice:x" must not be inside alice's namespace.
    return quote(name, safe="")


def cache_key(namespace: str, body: dict[str, Any], model: str) -> str:
    """``namespace`` and the SHA-256 of the canonical request: the exact cache's key."""
    return f"{namespace}:{hashlib.sha256(canonical(body, model)).hexdigest()}"
