"""The embedded ledger's journal files: where they are, their records, and who may take them.

Contract: a journal is a sequence of records, each appended whole with one ``os.write`` by the
process that owns the file; a record cut short or damaged (its process was killed in the middle
of the write) ends the journal for its reader. A file is named after its process and locked
(flock) for as long as that process has it open, so a process takes the files of another only
once that one is dead (``orphan_journals``), and removes a file before it unlocks it
(``remove_journals``), so that nobody takes rows that are already written. What is done with
the rows is the buffer's business (see _buffer.Ledger).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import marshal
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ...keys import Database
from ._rows import FIELD_NAMES, FIELDS_V1, as_current, fields_of
from ._schema import UsageRow

# A journal record: its payload's length and CRC-32, then the payload: a zero byte, the names of
# the fields (_rows.FIELD_NAMES) after their length, then marshal of the list of rows, each the
# tuple of its values in that order. The previous version's payload was the marshal alone, in
# version 1's order (_rows.FIELDS_V1): a marshal never starts with a zero byte (no type code is
# zero), so such records are still read. The previous version, reading a record of this one, takes
# it for a damaged one and stops there: it leaves the rows out rather than misreading them.
_RECORD = struct.Struct("<II")
_NAMED = b"\x00"
_NAMES = struct.Struct("<H")
_PREFIX = _NAMED + _NAMES.pack(len(FIELD_NAMES)) + FIELD_NAMES  # made once, for every record


class JournalFile(NamedTuple):
    """An open journal file, locked (flock) by this process for as long as it is open."""

    fd: int
    path: Path


def journal_path(database: Database) -> Path | None:
    """Where the embedded ledger journals its rows: next to a SQLite file; for another database
    (PostgreSQL), in the user's state directory, named after the database's URL; None for a SQLite
    in memory, which a killed process loses whole anyway."""
    if database.sqlite_file is not None:
        return Path(f"{database.sqlite_file}.ledger-journal")
    if database.dialect == "sqlite":
        return None
    url = database.engine.url.render_as_string(hide_password=True)
    name = f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.ledger-journal"
    state = os.environ.get("XDG_STATE_HOME")
    if not state:
        try:
            state = str(Path.home() / ".local" / "state")
        except RuntimeError:
            # No HOME and no passwd entry (a container's arbitrary user): the temporary
            # directory still outlives a killed process, which is all the journal is for.
            return Path(tempfile.gettempdir()) / f"quotagate-{os.getuid()}" / name
    return Path(state) / "quotagate" / name


def journal_record(rows: list[UsageRow]) -> bytes:
    """One record holding ``rows``, to be appended with one write."""
    # marshal, not JSON: fewer bytes (bench/NOTES.md), and floats, booleans and None come back as
    # they were.
    payload = _PREFIX + marshal.dumps([tuple(row) for row in rows])
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def _record_rows(payload: bytes) -> list[UsageRow]:
    """The rows of a record's payload, of this version (named fields) or the previous one."""
    if payload[:1] == _NAMED:
        (size,) = _NAMES.unpack_from(payload, len(_NAMED))
        start = len(_NAMED) + _NAMES.size
        fields = fields_of(payload[start : start + size])
        values = marshal.loads(payload[start + size :])
    else:
        fields, values = FIELDS_V1, marshal.loads(payload)
    return [UsageRow(*row) for row in as_current(values, fields)]


def read_journal(data: bytes) -> list[UsageRow]:
    """The rows of a journal's whole records. A record cut short or damaged (the process was
    killed in the middle of its write) ends the journal: it and anything after it are left out,
    and the responses of its rows had not completed."""
    rows: list[UsageRow] = []
    offset = 0
    while offset + _RECORD.size <= len(data):
        length, crc = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        try:
            rows.extend(_record_rows(payload))
        except (ValueError, EOFError, TypeError, struct.error):
            break
        offset = start + length
    return rows


def open_journal(journal: Path, numbers: Iterator[int]) -> JournalFile:
    """A new journal file of this process, created and locked: ``journal``'s name, then the
    process id and the next of ``numbers`` not taken."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    for number in numbers:
        path = journal.with_name(f"{journal.name}.{os.getpid()}-{number}")
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            continue  # a dead process's of the same id, not replayed yet
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # A ledger starting took it for a dead process's (it is empty, and it removes it).
            os.close(fd)
            continue
        return JournalFile(fd, path)
    raise RuntimeError("no journal file numbers left")


def orphan_journals(journal: Path) -> Iterator[tuple[JournalFile, list[UsageRow]]]:
    """The journal files of ``journal`` that no process holds (their process died), each open and
    locked by this process now, with its rows."""
    for path in sorted(journal.parent.glob(glob.escape(journal.name) + ".*")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # its process has just removed it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a running process's
        with open(fd, "rb", closefd=False) as file:
            rows = read_journal(file.read())
        yield JournalFile(fd, path), rows


def remove_journals(journals: list[JournalFile]) -> None:
    """Remove and close journal files whose rows are all in the database."""
    for journal in journals:
        # Removed before it is unlocked: a ledger starting never takes a live file's rows.
        journal.path.unlink(missing_ok=True)
        os.close(journal.fd)
