"""Ledger, the embedded ledger: each row journalled before its response completes, and written
to the database in batches.

Contract: ``commit(row)`` returns once the row is in the journal (in the kernel: a process
killed outright loses none) and the buffer; the buffer is written by SqlWriter every
``flush_seconds`` or ``batch_size`` rows, and ``flush()`` on demand; a batch that fails is kept
for the next flush. ``start()`` first writes the rows a killed process left in its journals;
``aclose()`` writes what is left, within CLOSE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from pathlib import Path

from ..._logging import EveryFewSeconds
from ._journal import JournalFile, journal_record, open_journal, orphan_journals, remove_journals
from ._schema import UsageRow
from ._sql import SqlWriter

logger = logging.getLogger("quotagate.ledger")


class Ledger:
    """The embedded ledger: each row journalled to a local file before its response completes,
    and written to SQL in batches (every ``flush_seconds`` or ``batch_size`` rows).

    A row only buffered for its batch was lost when the process was killed (SIGKILL lost hundreds
    of acknowledged requests' rows, issue 18). Committing each turn's rows to SQLite before their
    responses completed lost none, but a transaction costs the same CPU however few rows it holds,
    which made every proxied request dearer (both measured in bench/NOTES.md). So the rows of one
    turn of the event loop are appended to the journal with one ``os.write`` (no fsync, no thread:
    what the kernel has is what a killed process does not lose; a machine that loses its power may
    lose the last ones), and the batches are written as before.

    Each flush starts a new journal file: the old ones are removed once the rows they hold are in
    the database. Each file is named after the process and locked (flock) while it is open, so
    several processes can share a database (workers of the stream ledger, whose rows come here
    when Redis does not take them): at start a ledger takes the files nobody holds, those of a
    process that died, and writes their rows (inserted by request id: a row already written is
    not written twice) before it removes them.

    The calendar quotas' state goes in the batches' transactions (see accounting._quotas): after a SIGKILL
    it is as of the last batch, which the journal does not replay.
    """

    # How long closing waits for the last writes before giving up on them (and saying so).
    CLOSE_TIMEOUT = 10.0

    def __init__(
        self,
        writer: SqlWriter,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        self.writer = writer
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.journal = Path(journal) if journal is not None else None
        self._buffer: list[UsageRow] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # One batch is written at a time: the flusher, a report and closing all flush.
        self._flush_lock = asyncio.Lock()
        self._closing = False
        # The rows of this turn of the loop, and what their commits wait for.
        self._group: list[UsageRow] = []
        self._group_done: asyncio.Future[None] | None = None
        # The journal file appended to now, and those whose rows wait for (or are in) a batch.
        self._current: JournalFile | None = None
        self._retired: list[JournalFile] = []
        self._journal_numbers = itertools.count(1)  # of this process's journal files
        # A database that is down would otherwise log a line per flush.
        self._log_unwritten = EveryFewSeconds(logger)
        self.written = 0
        self.write_errors = 0
        self.journal_errors = 0
        self.replayed = 0  # rows taken from the journals of a process that died

    async def commit(self, row: UsageRow) -> None:
        """Return once the row is in the journal (in the kernel) and the buffer."""
        await self._keep(row)

    def _keep(self, row: UsageRow) -> asyncio.Future[None]:
        """The row, journalled with every row kept in the same turn of the loop: one write for
        the responses that came back together. The turn this takes is also what lets them be
        accounted for and sent together, each stage for all of them back to back (as the
        stream's append and the limiter's in-process decision do)."""
        if self._group_done is None:
            loop = asyncio.get_running_loop()
            self._group_done = loop.create_future()
            loop.call_soon(self._write_group)
        self._group.append(row)
        return self._group_done

    def _write_group(self) -> None:
        rows, self._group = self._group, []
        done, self._group_done = self._group_done, None
        try:
            if self.journal is not None:
                self._append(rows)
        finally:
            # Journalled or not (the journal's errors are logged), the rows go in the next batch.
            self._buffer.extend(rows)
            if len(self._buffer) >= self.batch_size:
                self._wake.set()
            if done is not None and not done.done():
                done.set_result(None)

    def _append(self, rows: list[UsageRow]) -> None:
        record = journal_record(rows)
        try:
            if self._current is None:
                assert self.journal is not None
                self._current = open_journal(self.journal, self._journal_numbers)
            written = os.write(self._current.fd, record)
            if written == len(record):
                return
            error = f"{written} of {len(record)} bytes written"  # the disk is full
        except OSError as exc:
            error = str(exc)
        # Part of the record may be in the file: nothing goes after it; the next group opens a new one.
        self._retire()
        self.journal_errors += 1
        self._log_unwritten.warning(
            "could not journal %d usage rows (%s); a process killed before the next batch would lose them",
            len(rows),
            error,
        )

    def _retire(self) -> None:
        if self._current is not None:
            self._retired.append(self._current)
            self._current = None

    def _adopt_orphans(self) -> None:
        """The journals no process holds, their rows into the buffer and their files retired."""
        assert self.journal is not None
        for journal, rows in orphan_journals(self.journal):
            self._buffer.extend(rows)
            self.replayed += len(rows)
            self._retired.append(journal)

    async def start(self) -> None:
        if self.journal is not None:
            try:
                self.journal.parent.mkdir(parents=True, exist_ok=True)
                self._adopt_orphans()
            except OSError as exc:
                logger.error(
                    "no ledger journal at %s (%s): a process killed outright will lose the rows of its last batch",
                    self.journal,
                    exc,
                )
                self.journal = None
        if self._retired:
            if self.replayed:
                logger.warning("writing %d usage rows journalled by a gateway that was stopped", self.replayed)
            await self.flush()
        self._flusher = asyncio.ensure_future(self._flush_forever())

    async def _flush_forever(self) -> None:
        while not self._closing:
            try:
                async with asyncio.timeout(self.flush_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write the rows buffered now, and the quotas' changes. Rows that arrive meanwhile wait
        for the next flush (a full batch, or the next tick): writing them at once would turn a
        busy gateway's ledger into a stream of tiny batches, each paying a transaction."""
        async with self._flush_lock:
            pending, self._buffer = self._buffer, []
            # The journal files so far hold the pending rows (and perhaps rows written already):
            # new rows go to a new file, and these go once the pending rows are in the database.
            self._retire()
            journals, self._retired = self._retired, []
            # Without rows, one empty batch all the same: the writer may have the quotas' changes.
            for start in range(0, len(pending), self.batch_size) or range(1):
                batch = pending[start : start + self.batch_size]
                try:
                    await self.writer.write(batch)
                    self.written += len(batch)
                except BaseException as exc:
                    # Keep the rows and try again with the next flush: the database may be back.
                    self._buffer[:0] = pending[start:]
                    self._retired[:0] = journals
                    if not isinstance(exc, Exception):
                        raise
                    self.write_errors += 1
                    self._log_unwritten.warning(
                        "could not write %d usage rows%s (%s); will retry",
                        len(pending) - start,
                        " and the quotas' state" if self.writer.quotas is not None else "",
                        exc,
                    )
                    return
            remove_journals(journals)

    async def aclose(self) -> None:
        # The flusher is asked to stop, not cancelled: cancelling it in the middle of a write
        # left that connection's transaction holding SQLite's write lock, and the final flush
        # then failed with "database is locked", losing the last rows.
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(self.CLOSE_TIMEOUT):
                if self._flusher is not None:
                    await self._flusher
                await self.flush()
        except TimeoutError:
            pass
        if self._buffer:
            logger.error(
                "%d usage rows could not be written before shutdown%s",
                len(self._buffer),
                "; their journal is written at the next start" if self.journal is not None else "",
            )
        # Files whose rows are not all written stay for the next start.
        self._retire()
        for journal in self._retired:
            os.close(journal.fd)
        self._retired = []
        await self.writer.aclose()
