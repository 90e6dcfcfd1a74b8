"""StreamLedger, the distributed ledger: rows through a Redis stream and its consumer group.

Contract: ``commit(row)`` returns once the row is in the stream or, when Redis does not take it
within the store's deadline, in the journal and the buffer (as Ledger's). A stream entry holds
``b``, a JSON array of rows (each an array of values, _rows.row_json), ``n``, their number, and
``f``, the names of the arrays' fields (_rows.FIELD_NAMES); an entry without ``f`` is of the
version before the names (_rows.FIELDS_V1), and one with ``r`` (one row as a JSON object) of an
earlier one still. Every node's consumer writes entries of any of them, acknowledging each once
its rows are in the database.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import socket
from typing import Any

import orjson

from ..._logging import EveryFewSeconds
from ...redis import RedisClient, RedisReplyError
from ._buffer import Ledger
from ._rows import FIELD_NAMES, batch_json, current_json, row_json
from ._schema import UsageRow
from ._sql import SqlWriter

logger = logging.getLogger("quotagate.ledger")


class StreamLedger(Ledger):
    """The distributed ledger: rows go through a Redis stream and a consumer group.

    Redis is not trusted to keep them: a Redis without persistence that restarts has forgotten
    the rows no consumer had written yet (acknowledged requests lost, issue 18). So a node
    keeps the rows it appended (in memory, up to MAX_UNCONFIRMED) until it has seen them in the
    database: every second it looks up the request ids appended more than ``confirm_after``
    seconds ago, and writes those missing itself (inserted by request id: a row the consumers
    write as well is written once).

    Nor is Redis waited for: the append has the store's deadline (``limiter.timeout_ms``, the
    appender connection's timeout), and a row that could not be appended in time goes to the
    journal and the next batch, as without Redis. For RETRY_SECONDS after a failed append
    every row goes that way, so that a Redis that stopped answering costs one group of requests
    the deadline, not every request (when the append had a deadline of its own, each request
    waited it out and more: bench/NOTES.md).
    """

    STREAM = "qg:ledger"
    GROUP = "qg-ledger-writers"
    RETRY_SECONDS = 1.0
    MAX_UNCONFIRMED = 200_000  # rows; beyond it the oldest are left to Redis alone
    CONFIRM_ROWS = 10_000  # request ids looked up in one statement

    def __init__(
        self,
        writer: SqlWriter,
        appender: RedisClient,
        consumer: RedisClient,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
        claim_after_seconds: float = 30.0,
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(writer, batch_size, flush_seconds, journal)
        self.claim_after = claim_after_seconds
        # Two pipelined connections: appends from every request share one; the consumer blocks on
        # XREADGROUP for up to flush_seconds, so it reads over its own, with a timeout longer
        # than that block.
        self.appender = appender
        self.reader = consumer
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._pending: list[tuple[UsageRow, asyncio.Future[None]]] = []  # rows and their commits
        self._scheduled = False
        self._consumer_task: asyncio.Task[None] | None = None
        # Rows appended but not yet seen in the database: (loop time of the append, its rows).
        self.confirm_after = max(2.0, 4 * flush_seconds)
        self._unconfirmed: collections.deque[tuple[float, list[UsageRow]]] = collections.deque()
        self._unconfirmed_rows = 0
        self._confirm_task: asyncio.Task[None] | None = None
        self._redis_down_until = -math.inf
        self.rewritten = 0  # rows the stream lost, written by this node
        # With Redis down every group of requests would say so: one line now and then does.
        self._log_kept = EveryFewSeconds(logger)

    async def commit(self, row: UsageRow) -> None:
        """Return once the row is in the stream or, when Redis did not take it in time, in the
        journal and the buffer (as without Redis)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._redis_down_until:
            await self._keep(row)
            return
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((row, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(lambda: asyncio.ensure_future(self._append_pending()))
        try:
            await future
        except Exception:
            await self._keep(row)

    async def _append_pending(self) -> None:
        # Everything committed since the last append goes in one stream entry: a JSON array of
        # rows, each the array of its values in column order (row_json), and the names of those
        # columns, the same bytes for every entry (FIELD_NAMES).
        self._scheduled = False
        batch, self._pending = self._pending, []
        entry = batch_json([row_json(row) for row, _ in batch])
        loop = asyncio.get_running_loop()
        try:
            # The connection's own deadline (the store's timeout) bounds the append.
            await self.appender.execute("XADD", self.STREAM, "*", "b", entry, "n", len(batch), "f", FIELD_NAMES)
        except Exception as exc:
            self._log_kept.warning(
                "could not append usage rows to the stream (%s: %s); writing them to the database for %gs",
                type(exc).__name__,
                exc,
                self.RETRY_SECONDS,
            )
            self._redis_down_until = loop.time() + self.RETRY_SECONDS
            for row, future in batch:
                if not future.done():
                    future.set_exception(exc)  # commit() keeps the row
                elif future.cancelled():
                    # Its request was cancelled (the client left) while the row was on its way:
                    # nobody waits for it any more, but it is kept all the same.
                    self._keep(row)
            return
        self._unconfirmed.append((loop.time(), [row for row, _ in batch]))
        self._unconfirmed_rows += len(batch)
        while self._unconfirmed_rows > self.MAX_UNCONFIRMED:
            _, dropped = self._unconfirmed.popleft()
            self._unconfirmed_rows -= len(dropped)
            self._log_unwritten.warning(
                "over %d usage rows not yet seen in the database; the oldest are left to Redis", self.MAX_UNCONFIRMED
            )
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def start(self) -> None:
        # Redis may be down at start: the consumer creates its group when it can.
        await super().start()
        self._consumer_task = asyncio.ensure_future(self._consume_forever())
        self._confirm_task = asyncio.ensure_future(self._confirm_forever())

    async def _confirm_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(min(1.0, self.confirm_after / 2))
            try:
                while await self.confirm(asyncio.get_running_loop().time() - self.confirm_after):
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log_unwritten.warning("could not check that the stream's rows were written (%s); will retry", exc)

    async def confirm(self, appended_before: float = math.inf) -> int:
        """Look up (up to CONFIRM_ROWS of) the rows appended before ``appended_before``, loop
        time, in the database, and write those that are missing; the number of rows looked up."""
        rows: list[UsageRow] = []
        while self._unconfirmed and self._unconfirmed[0][0] <= appended_before and len(rows) < self.CONFIRM_ROWS:
            rows.extend(self._unconfirmed.popleft()[1])
        self._unconfirmed_rows -= len(rows)
        if not rows:
            return 0
        try:
            written = await self.writer.written_ids([row.request_id for row in rows])
            missing = [row for row in rows if row.request_id not in written]
            if missing:
                await self.writer.write(missing)
        except BaseException:
            # Looked up again next time: the database may be back.
            self._unconfirmed.appendleft((-math.inf, rows))
            self._unconfirmed_rows += len(rows)
            raise
        if missing:
            self.rewritten += len(missing)
            self.written += len(missing)
            logger.warning(
                "wrote %d usage rows that no consumer had written %gs after their append (lost by a Redis "
                "that restarted empty, or the consumers are behind)",
                len(missing),
                self.confirm_after,
            )
        return len(rows)

    async def _ensure_group(self) -> None:
        try:
            await self.reader.execute("XGROUP", "CREATE", self.STREAM, self.GROUP, "0", "MKSTREAM")
        except RedisReplyError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume_forever(self) -> None:
        claim_every, since_claim = min(10.0, self.claim_after), 0.0
        group_ready = False
        while not self._closing:
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                if since_claim <= 0:
                    # Rows a dead node read but never wrote: unacknowledged for long enough, ours.
                    # [next start, [[id, [field, value, ...]], ...], deleted ids]
                    claimed = await self.reader.execute(
                        "XAUTOCLAIM",
                        self.STREAM,
                        self.GROUP,
                        self.consumer,
                        int(self.claim_after * 1000),
                        "0-0",
                        "COUNT",
                        self.batch_size,
                    )
                    await self._store(claimed[1])
                    since_claim = claim_every
                started = asyncio.get_running_loop().time()
                # [[stream, [[id, [field, value, ...]], ...]]], or nil when the block ran out.
                reply = await self.reader.execute(
                    "XREADGROUP",
                    "GROUP",
                    self.GROUP,
                    self.consumer,
                    "COUNT",
                    self.batch_size,
                    "BLOCK",
                    int(self.flush_seconds * 1000),
                    "STREAMS",
                    self.STREAM,
                    ">",
                )
                written = 0
                for _, entries in reply or []:
                    written += await self._store(entries)
                if 0 < written < self.batch_size:
                    # The rows are safe in the stream: let more gather rather than pay a database
                    # transaction and three round trips for a handful of them.
                    await asyncio.sleep(self.flush_seconds / 4)
                since_claim -= asyncio.get_running_loop().time() - started
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):
                    group_ready = False  # Redis lost its data (a restart without persistence)
                logger.warning("ledger consumer: %s; retrying", exc)
                await asyncio.sleep(1.0)

    async def _store(self, entries: list[Any]) -> int:
        """Write the rows of stream entries, then acknowledge and delete them; the rows written."""
        if not entries:
            return 0
        rows: list[bytes] = []  # row_json arrays, joined without parsing
        count = 0
        ids = []
        for entry_id, flat in entries:
            ids.append(entry_id)
            if not flat:
                continue  # deleted from the stream while pending
            entry = dict(zip(flat[::2], flat[1::2], strict=True))
            batch = entry.get(b"b")
            if batch and batch != b"[]":
                # In today's order as it came, unless a node of another version appended it.
                rows.append(current_json(batch, entry.get(b"f"))[1:-1])
                count += int(entry.get(b"n") or 0)
                continue
            # One row as an object: what nodes of earlier versions append.
            single = entry.get(b"r")
            if single:
                rows.append(row_json(UsageRow(**orjson.loads(single))))
                count += 1
        await self.writer.write_json(batch_json(rows))
        self.written += count
        # Acknowledged only once written; deleted so the stream stays small (one round trip).
        await asyncio.gather(
            self.reader.execute("XACK", self.STREAM, self.GROUP, *ids),
            self.reader.execute("XDEL", self.STREAM, *ids),
        )
        return count

    async def aclose(self) -> None:
        # Like the flusher, the consumer finishes the batch it is writing (it notices within
        # one XREADGROUP block); rows it read but did not write are claimed by another node.
        self._closing = True
        if self._confirm_task is not None:
            self._confirm_task.cancel()
            await asyncio.gather(self._confirm_task, return_exceptions=True)
        if self._consumer_task is not None:
            try:
                async with asyncio.timeout(self.flush_seconds + self.CLOSE_TIMEOUT):
                    await self._consumer_task
            except TimeoutError:
                self._consumer_task.cancel()
        # What this node appended and no consumer has written yet, it writes itself: a Redis that
        # restarts empty after this node stopped would otherwise take those rows with it.
        try:
            async with asyncio.timeout(self.CLOSE_TIMEOUT):
                while await self.confirm():
                    pass
        except Exception as exc:
            logger.error("could not check that %d usage rows were written (%s)", self._unconfirmed_rows, exc)
        await super().aclose()
        await self.reader.aclose()
        await self.appender.aclose()
