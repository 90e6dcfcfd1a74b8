"""Running many requests with a concurrency cap, results in input order, errors kept per item."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Result(Generic[R]):
    index: int
    value: R | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _progress(show: bool | None, total: int, label: str) -> Progress | None:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),  # stdout stays the program's own
    )
    progress.start()
    return progress


async def run_batch(
    items: Iterable[T],
    call: Callable[[T], Awaitable[R]],
    *,
    concurrency: int = 8,
    progress: bool | None = None,
    label: str = "requests",
) -> list[Result[R]]:
    """Await ``call(item)`` for every item, at most ``concurrency`` at once.

    Limits are whatever ``call`` honours (a ``limited`` client or a RateLimiter inside it). A
    progress bar shows on a terminal (``progress=True/False`` to force). An item that raises
    gets its error in its Result; the others go on.
    """
    todo = list(items)
    results: list[Result[R] | None] = [None] * len(todo)
    gate = asyncio.Semaphore(concurrency)
    bar = _progress(progress, len(todo), label)
    task = bar.add_task(label, total=len(todo)) if bar else None

    async def one(index: int, item: T) -> None:
        async with gate:
            try:
                results[index] = Result(index, value=await call(item))
            except Exception as exc:
                results[index] = Result(index, error=exc)
        if bar is not None and task is not None:
            bar.advance(task)

    try:
        await asyncio.gather(*(one(i, item) for i, item in enumerate(todo)))
    finally:
        if bar is not None:
            bar.stop()
    return [r for r in results if r is not None]


def run_batch_sync(
    items: Iterable[T],
    call: Callable[[T], R],
    *,
    concurrency: int = 8,
    progress: bool | None = None,
    label: str = "requests",
) -> list[Result[R]]:
    """``run_batch`` for sync callables (a limited ``OpenAI`` client), on a thread pool."""
    todo = list(items)
    bar = _progress(progress, len(todo), label)
    task = bar.add_task(label, total=len(todo)) if bar else None

    def one(pair: tuple[int, T]) -> Result[R]:
        index, item = pair
        try:
            result: Result[R] = Result(index, value=call(item))
        except Exception as exc:
            result = Result(index, error=exc)
        if bar is not None and task is not None:
            bar.advance(task)
        return result

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(one, enumerate(todo)))
    finally:
        if bar is not None:
            bar.stop()
