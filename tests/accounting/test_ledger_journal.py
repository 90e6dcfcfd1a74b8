"""The embedded ledger's journal: rows in a local file before their responses complete, removed
once their batch is written, and replayed once by the next ledger when a process was killed."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from quotagate.accounting import Ledger, SqlWriter
from quotagate.accounting.ledger import journal_path, journal_record, read_journal
from quotagate.keys import KeyStore

from .test_ledger import ledger_rows
from .test_stream_ledger import usage_row


async def make_store(path: Path) -> KeyStore:
    store = KeyStore.from_url(f"sqlite:///{path}")
    await store.create_schema()
    return store


def journals(database: Path) -> list[Path]:
    return sorted(database.parent.glob(f"{database.name}.ledger-journal.*"))


def leave_journal(database: Path, data: bytes) -> Path:
    """A journal as a killed process (id 4242) left it."""
    journal = Path(f"{database}.ledger-journal.4242-1")
    journal.write_bytes(data)
    return journal


async def test_a_committed_row_is_journalled_until_its_batch_is_written(tmp_path: Path) -> None:
    """commit() returns with the row in the journal file; the flush that writes it removes the file."""
    path = tmp_path / "ledger.db"
    store = await make_store(path)
    assert journal_path(store.database) == Path(f"{path}.ledger-journal")
    ledger = Ledger(SqlWriter(store.database), flush_seconds=60, journal=journal_path(store.database))
    try:
        await ledger.start()
        await ledger.commit(usage_row("req_1"))
        (journal,) = journals(path)
        assert [row.request_id for row in read_journal(journal.read_bytes())] == ["req_1"]
        assert ledger_rows(f"sqlite:///{path}") == []
        await ledger.flush()
        assert journals(path) == []
        await ledger.commit(usage_row("req_2"))  # a new file for the rows after the batch
        assert [row.request_id for row in read_journal(journals(path)[0].read_bytes())] == ["req_2"]
    finally:
        await ledger.aclose()
        await store.close()
    assert journals(path) == []
    assert sorted(row.request_id for row in ledger_rows(f"sqlite:///{path}")) == ["req_1", "req_2"]


async def test_a_journal_left_behind_is_replayed_once_without_its_torn_record(tmp_path: Path) -> None:
    """A killed process's journal is written by the next ledger at start, then removed: rows already
    in the table are not doubled, and a record cut short by the kill is left out."""
    path = tmp_path / "ledger.db"
    store = await make_store(path)
    writer = SqlWriter(store.database)
    await writer.write([usage_row("req_written")])  # its batch was written before the kill
    await writer.aclose()
    torn = journal_record([usage_row("req_torn")])
    leave_journal(
        path,
        journal_record([usage_row("req_written"), usage_row("req_a")])
        + journal_record([usage_row("req_b")])
        + torn[: len(torn) - 5],
    )
    try:
        for replayed in (3, 0):  # the second start finds nothing left to replay
            ledger = Ledger(SqlWriter(store.database), flush_seconds=60, journal=journal_path(store.database))
            await ledger.start()
            assert ledger.replayed == replayed
            assert journals(path) == []
            await ledger.aclose()
    finally:
        await store.close()
    assert sorted(row.request_id for row in ledger_rows(f"sqlite:///{path}")) == ["req_a", "req_b", "req_written"]


async def test_a_running_process_journal_is_not_taken(tmp_path: Path) -> None:
    """A journal locked by its (live) process is left alone by a ledger starting on the same database."""
    path = tmp_path / "ledger.db"
    store = await make_store(path)
    live = leave_journal(path, journal_record([usage_row("req_live")]))
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        ledger = Ledger(SqlWriter(store.database), flush_seconds=60, journal=journal_path(store.database))
        await ledger.start()
        await ledger.aclose()
        assert ledger.replayed == 0
        assert journals(path) == [live]
    finally:
        os.close(fd)
        await store.close()
    assert ledger_rows(f"sqlite:///{path}") == []
