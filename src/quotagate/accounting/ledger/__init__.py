"""The ledger: one row per request, durable before its response completes, never doubled.

Embedded (no Redis): before a request's response completes, its row is appended to a journal
file next to the database, with every row of the same turn of the event loop in one write (no
fsync: in the kernel, which a process killed outright does not lose; a machine that loses power
may lose the last ones). The rows are written to SQL in batches (every ``flush_seconds`` or
``batch_size`` rows), after which their journal is removed; a ledger starting writes the rows
of a journal that a killed process left (see Ledger). The calendar quotas' state goes in the
batches' transactions (see accounting._quotas), so it survives a restart as of the last batch.

Distributed (Redis): before a request's response completes, its row is appended to a Redis
stream (``XADD``). Rows produced in the same turn of the event loop go in one stream entry, one
round trip (group commit), so the cost per request stays small. Every node runs a consumer of
the stream's consumer group that writes rows to the database in batches and acknowledges them
after the write; rows left pending by a node that died are claimed by the others
(``XAUTOCLAIM``). A gateway killed with SIGKILL therefore loses no row of a response it
completed, and because rows are inserted by request id (the gateway's own, unique per request)
with ON CONFLICT DO NOTHING, a row delivered twice is written once. A node keeps what it
appended until it sees it in the database, so a Redis that restarts empty loses nothing either,
and a Redis that does not answer within the store's timeout is not waited for (see StreamLedger).

Between gateways (in the stream, and in the journal a killed process leaves for the next one)
rows travel as compact arrays of values, each batch with the names of its fields in order, so
nodes of two versions, one with a column the other lacks, share a stream and journals (see
_rows).

The modules, one job each:

- ``_schema``: the ``qg_usage`` table and ``UsageRow``, one request's row as the gateway makes it.
- ``_rollup``: ``qg_usage_rollup``, per UTC day and group, kept by database triggers on
  ``qg_usage`` (whoever writes the rows), so the console's month charts and the 30-day reports
  read tens of thousands of sums instead of a million rows.
- ``_rows``: the row encoding: arrays of values, each batch with its field names; versions.
- ``_sql``: ``SqlWriter``, batches of rows into ``qg_usage`` (SQLite on a connection of its own,
  PostgreSQL through the engine), idempotent by request id.
- ``_journal``: the embedded ledger's journal files: where, their records, who may take them.
- ``_buffer``: ``Ledger``, the embedded ledger: journal, buffer and flusher.
- ``_stream``: ``StreamLedger``, the distributed ledger: Redis stream and consumer group.

Importing the ledger changes nothing outside it: the one process-wide setting it makes (the
sqlite3 driver's adapter for None) is made when a SQLite writer opens its connection.
"""

from ._buffer import Ledger
from ._journal import journal_path, journal_record, read_journal
from ._rows import FIELD_NAMES, FIELDS, FIELDS_V1, as_current, batch_json, current_json, fields_of, row_json
from ._schema import UsageRow, usage_table
from ._sql import SqlWriter
from ._stream import StreamLedger

__all__ = [
    "FIELDS",
    "FIELDS_V1",
    "FIELD_NAMES",
    "Ledger",
    "SqlWriter",
    "StreamLedger",
    "UsageRow",
    "as_current",
    "batch_json",
    "current_json",
    "fields_of",
    "journal_path",
    "journal_record",
    "read_journal",
    "row_json",
    "usage_table",
]
