"""The SQLite writer: large batches split over several statements, idempotent by request id, and
never a wait on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from quotagate.accounting import Ledger, SqlWriter, UsageRow, usage_table
from quotagate.accounting.ledger._sql import _statement_sizes
from quotagate.keys import KeyStore

from .test_ledger import ledger_rows
from .test_stream_ledger import usage_row


async def test_a_batch_of_many_statements_is_written_whole_and_once(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = KeyStore.from_url(database)
    await store.create_schema()
    writer = SqlWriter(store.database)
    rows = [
        usage_row(f"req_{n}")._replace(prompt_tokens=n, stream=n % 2 == 1, client_request_id=f"c{n}" if n % 3 else None)
        for n in range(250)  # more than two statements' worth
    ]
    try:
        await writer.write(rows)
        await writer.write([*rows[200:], usage_row("req_late")])  # delivered again, and one more
    finally:
        await writer.aclose()
        await store.close()
    written = {row.request_id: row for row in ledger_rows(database)}
    assert len(written) == 251
    for n in (0, 99, 100, 101, 199, 249):
        row = written[f"req_{n}"]
        assert (row.prompt_tokens, row.stream, row.client_request_id) == (n, n % 2 == 1, f"c{n}" if n % 3 else None)
        assert (row.cost_usd, row.latency_ms, row.error_type, row.day) == (0.0000058, 12.5, None, "2026-09-21")
        assert row.ts.isoformat().startswith("2026-09-21T")


def test_batches_of_any_size_use_a_handful_of_statement_shapes() -> None:
    """SQLite prepares and keeps a statement per distinct text: whatever the batch sizes, the
    writer uses powers of two rows per INSERT, within the parameter limit."""
    shapes: set[int] = set()
    for count in range(1, 1001):
        sizes = list(_statement_sizes(count, SqlWriter.ROWS_PER_STATEMENT))
        assert sum(sizes) == count
        shapes.update(sizes)
    assert shapes == {1, 2, 4, 8, 16, 32, 64, 128}
    # An old SQLite allows 999 parameters: 47 rows of 21 columns, so 32 rows at most.
    assert set(_statement_sizes(300, 47)) == {32, 8, 4}


async def test_a_locked_file_does_not_hold_up_the_event_loop(tmp_path: Path) -> None:
    """The ledger writes SQLite from the event loop: while another process holds the write lock
    (the CLI writing a key, another worker's ledger), the batch waits with the loop running; held
    longer than the writer waits, the batch is kept, and the next flush writes it."""
    path = tmp_path / "ledger.db"
    store = KeyStore.from_url(f"sqlite:///{path}")
    await store.create_schema()
    writer = SqlWriter(store.database)
    writer.LOCK_WAIT_SECONDS = 0.5
    ledger = Ledger(writer, batch_size=500, flush_seconds=60)
    other = sqlite3.connect(path, isolation_level=None)
    gaps: list[float] = []

    async def tick(seconds: float) -> None:
        last = time.monotonic()
        for _ in range(int(seconds / 0.01)):
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    try:
        await ledger.commit(usage_row("req_waited"))
        other.execute("BEGIN IMMEDIATE")  # the write lock, as a CLI transaction holds it
        flushing = asyncio.ensure_future(ledger.flush())
        await tick(0.2)
        other.execute("COMMIT")
        await flushing
        assert (ledger.written, ledger.write_errors) == (1, 0)
        assert max(gaps) < 0.1  # the loop went on while the batch waited for the lock

        await ledger.commit(usage_row("req_kept"))
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        await ledger.flush()  # gives up after LOCK_WAIT_SECONDS and keeps the row
        assert time.monotonic() - started < 2.0
        assert (ledger.written, ledger.write_errors) == (1, 1)
        other.execute("COMMIT")
        await ledger.flush()
        assert ledger.written == 2
    finally:
        other.close()
        await ledger.aclose()
        await store.close()
    assert sorted(row.request_id for row in ledger_rows(f"sqlite:///{path}")) == ["req_kept", "req_waited"]


def wal_size(database: Path) -> int:
    return Path(f"{database}-wal").stat().st_size


async def test_the_wal_is_checkpointed_off_the_event_loop(tmp_path: Path) -> None:
    """Automatic checkpoints are off on the writing connection; the writer's own, on a thread, keep
    the WAL from growing without end."""
    path = tmp_path / "ledger.db"
    store = KeyStore.from_url(f"sqlite:///{path}")
    await store.create_schema()
    writer = SqlWriter(store.database)
    writer.CHECKPOINT_ROWS = 100
    try:
        for batch in range(20):
            await writer.write([usage_row(f"req_{batch}_{n}") for n in range(100)])
            await asyncio.sleep(0.01)  # the checkpoint thread's turn
        assert writer._checkpointing is not None
        await writer._checkpointing
        # Checkpointed, the WAL is written again from its start: it holds about one batch. Without
        # checkpoints these 2,000 rows took 1.5 MB of WAL.
        assert wal_size(path) < 300_000
    finally:
        await writer.aclose()
        await store.close()
    assert len(ledger_rows(f"sqlite:///{path}")) == 2000


def test_a_row_is_its_values_in_column_order() -> None:
    """Rows are bound to the INSERT as they are: their fields are the table's columns, in order."""
    assert UsageRow._fields == tuple(column.name for column in usage_table.columns)
