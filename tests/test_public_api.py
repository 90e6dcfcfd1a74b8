"""The package's public names."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PUBLIC = {
    "quotagate": ["__version__"],
    "quotagate.config": ["Config", "ConfigError", "load_config", "parse_config", "default_config"],
    "quotagate.errors": ["GatewayError", "InvalidRequestError", "UpstreamError", "UpstreamTimeoutError"],
    "quotagate.keys": ["KeyStore", "KeyRecord", "hash_key"],
    "quotagate.auth": ["Authenticator", "Principal"],
    "quotagate.upstream": ["Transport", "AiohttpTransport", "ModelRoutes"],
    "quotagate.tokens": ["get_encoding", "count_chat_tokens"],
    "quotagate.mock": ["MockUpstream", "MockOptions"],
    "quotagate.server": ["Gateway"],
    "quotagate.limits": ["Limit", "Limiter", "InProcessStore", "RedisStore", "Decision", "Unit", "Algorithm"],
    "quotagate.policy": ["Policy"],
    "quotagate.surfaces": ["chat_to_messages", "messages_to_chat", "MessagesStreamToChat", "ChatStreamToMessages"],
    "quotagate.client": ["limited", "RateLimiter", "RateLimitTimeout", "run_batch", "run_batch_sync"],
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_all_lists_exactly_what_the_module_exports(module_name: str) -> None:
    """Every name in __all__ exists, and the documented names are in __all__."""
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name} is in __all__ but missing"
    for name in PUBLIC[module_name]:
        assert name in module.__all__, f"{module_name}.{name} is not public"


def test_importing_quotagate_changes_nothing_process_wide() -> None:
    """Importing the package (the gateway, its ledger, the client library) registers no sqlite3
    adapter and leaves the garbage collector as it was: an embedding program's process is its own."""
    code = (
        "import gc, sqlite3; before = (gc.get_threshold(), gc.isenabled(), dict(sqlite3.adapters));"
        "import quotagate, quotagate.server, quotagate.accounting, quotagate.client, quotagate.limits;"
        "assert (gc.get_threshold(), gc.isenabled(), dict(sqlite3.adapters)) == before, 'changed'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
