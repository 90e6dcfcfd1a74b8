"""Lines of requests waiting for capacity: the bounded wait queue of one node.

A request that finds no capacity joins a line (one per limit, or one per model for requests
waiting on any of its deployments). Lines are ordered by priority, then first come first served.
Only the head of a line asks the store again, and when it leaves (served or given up) the next
one is woken: nothing polls, and a burst far over the rate becomes a steady flow. The limiter's
waits for tenants' limits and the router's waits for deployments count against one bound.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class Waiter:
    sort_key: tuple[int, int]
    wake: asyncio.Event = field(compare=False, default_factory=asyncio.Event)


class WaitQueue:
    def __init__(self, max_size: int, clock: Callable[[], float]) -> None:
        self.max_size = max_size
        self.waiting = 0
        self._clock = clock
        self._lines: dict[str, list[Waiter]] = {}
        self._seq = itertools.count()

    @property
    def full(self) -> bool:
        return self.waiting >= self.max_size

    def has_line(self, key: str) -> bool:
        return key in self._lines

    def any_line(self, keys: list[str]) -> str | None:
        """The first of ``keys`` that others are already waiting on."""
        if not self._lines:
            return None
        return next((key for key in keys if key in self._lines), None)

    def join(self, key: str, priority: int) -> Waiter:
        waiter = Waiter((-priority, next(self._seq)))
        heapq.heappush(self._lines.setdefault(key, []), waiter)
        self.waiting += 1
        return waiter

    def leave(self, key: str, waiter: Waiter) -> None:
        self._remove(key, waiter)
        self.waiting -= 1

    def move(self, old_key: str, new_key: str, waiter: Waiter) -> None:
        """Move to another line, keeping the place a priority and an arrival time give."""
        self._remove(old_key, waiter)
        heapq.heappush(self._lines.setdefault(new_key, []), waiter)

    def is_head(self, key: str, waiter: Waiter) -> bool:
        line = self._lines.get(key)
        return bool(line) and line[0] is waiter  # type: ignore[index]

    async def wait_turn(self, key: str, waiter: Waiter, deadline: float) -> bool:
        """Until ``waiter`` heads its line (True) or ``deadline`` passes (False)."""
        while not self.is_head(key, waiter):
            left = deadline - self._clock()
            if left <= 0:
                return False
            waiter.wake.clear()
            try:
                async with asyncio.timeout(left):
                    await waiter.wake.wait()
            except TimeoutError:
                continue
        return True

    def _remove(self, key: str, waiter: Waiter) -> None:
        line = self._lines.get(key)
        if line is None:
            return
        was_head = bool(line) and line[0] is waiter
        if waiter in line:
            line.remove(waiter)
            heapq.heapify(line)
        if not line:
            del self._lines[key]
        elif was_head:
            line[0].wake.set()
