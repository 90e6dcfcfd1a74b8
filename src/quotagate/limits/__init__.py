"""The limit engine: exact multi-dimensional rate limits, quotas and concurrency.

Usable on its own::

    from quotagate.limits import Limit, Unit, Limiter, InProcessStore

    limiter = Limiter(InProcessStore())
    rpm = Limit("my-app:rpm", Unit.REQUESTS, 500, period=60)
    tpm = Limit("my-app:tpm", Unit.TOKENS, 120_000, period=60)
    decision = await limiter.acquire([rpm, tpm], [1, 1200])

``RedisStore.from_url("redis://...")`` shares the same limits across processes and machines, over a
``RedisConnection`` (one pipelined connection; ``RedisStore(redis.asyncio.Redis(...))`` works too).
"""

from ._connection import RedisConnection, RedisReplyError
from ._limiter import Limiter, StoreUnavailableError
from ._memory import InProcessStore
from ._model import Algorithm, Calendar, Decision, Limit, LimitStatus, Unit, one_second_burst
from ._redis import RedisStore
from ._store import Store

__all__ = [
    "Algorithm",
    "Calendar",
    "Decision",
    "InProcessStore",
    "Limit",
    "LimitStatus",
    "Limiter",
    "RedisConnection",
    "RedisReplyError",
    "RedisStore",
    "Store",
    "StoreUnavailableError",
    "Unit",
    "one_second_burst",
]
