"""quotagate without the gateway: keep a program under a provider's RPM/TPM.

from openai import OpenAI
from quotagate.client import limited

client = limited(OpenAI(), rpm=500, tpm=120_000)          # or store="redis://..." to share
client.chat.completions.create(model="gpt-4o-mini", messages=[...])
"""

from typing import TYPE_CHECKING, Any

from ._batch import Result, run_batch, run_batch_sync
from ._ratelimiter import Permit, RateLimiter, RateLimitTimeout, Remaining, RequestTooLarge

if TYPE_CHECKING:
    from ._openai import limited
    from ._retry import RetryPolicy


def __getattr__(name: str) -> Any:
    # The OpenAI wrapper needs the `openai` package (pip install 'quotagate[client]'); the plain
    # RateLimiter does not, so it is only imported when asked for.
    if name == "limited":
        from ._openai import limited

        return limited
    if name == "RetryPolicy":
        from ._retry import RetryPolicy

        return RetryPolicy
    raise AttributeError(f"module 'quotagate.client' has no attribute {name!r}")


__all__ = [
    "Permit",
    "RateLimitTimeout",
    "RateLimiter",
    "Remaining",
    "RequestTooLarge",
    "Result",
    "RetryPolicy",
    "limited",
    "run_batch",
    "run_batch_sync",
]
