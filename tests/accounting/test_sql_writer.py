"""The SQLite writer: large batches split over several statements, idempotent by request id."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from quotagate.accounting import SqlWriter
from quotagate.accounting._ledger import _statement_sizes
from quotagate.keys import KeyStore

from .test_ledger import ledger_rows
from .test_stream_ledger import usage_row


async def test_a_batch_of_many_statements_is_written_whole_and_once(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = KeyStore.from_url(database)
    await store.create_schema()
    writer = SqlWriter(store.database)
    rows = [
        dataclasses.replace(
            usage_row(f"req_{n}"), prompt_tokens=n, stream=n % 2 == 1, client_request_id=f"c{n}" if n % 3 else None
        )
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
