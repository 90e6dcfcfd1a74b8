"""The limit engine: exact multi-dimensional rate limits, quotas and concurrency.

Usable on its own::

    from quotagate.limits import Limit, Unit, Usage, Limiter, InProcessStore

    limiter = Limiter(InProcessStore())
    rpm = Limit("my-app:rpm", Unit.REQUESTS, 500, period=60)
    tpm = Limit("my-app:tpm", Unit.TOKENS, 120_000, period=60)
    reservation = await limiter.reserve([rpm, tpm], Usage(input_tokens=1000, output_tokens=200))
    if reservation.allowed:
        ...  # call the provider, then:
        await reservation.settle(Usage(input_tokens=1000, output_tokens=57))

``RedisStore.from_url(url)`` shares the same limits across processes and machines: one server
(``redis://``, over one pipelined connection), a Cluster (``redis+cluster://``) or Sentinel
(``redis+sentinel://``); ``RedisStore(redis.asyncio.Redis(...))`` works too.
"""

from ..redis import RedisConnection, RedisReplyError
from ._limiter import Limiter, StoreUnavailableError
from ._memory import InProcessStore
from ._model import Algorithm, Calendar, Decision, Limit, LimitStatus, Unit, one_second_burst
from ._redis import RedisStore
from ._reservation import Reservation
from ._store import Store
from ._usage import NOTHING, Usage, cost_on, costs_on

__all__ = [
    "NOTHING",
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
    "Reservation",
    "Store",
    "StoreUnavailableError",
    "Unit",
    "Usage",
    "cost_on",
    "costs_on",
    "one_second_burst",
]
