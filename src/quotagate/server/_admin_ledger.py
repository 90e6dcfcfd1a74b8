"""The console's request log and charts over HTTP, for AdminAPI (queries: accounting._ledger_views).

GET /admin/ledger?since&until&key&user&team&model&deployment&tier&status&limit&cursor
    {"object": "list", "data": [row, ...], "next_cursor": str | null}, newest first; status is
    ok (below 400), error (400 and above) or a code; limit 1 to 500, 50 unless given; cursor is
    the next_cursor of the page before.
GET /admin/ledger?format=csv&<the same filters>
    every matching row, newest first, as a CSV attachment (header line first), streamed.
GET /admin/usage/series?window=hour|day|month&by=model|deployment|tier|user|team|key&team=
    {"object": "usage_series", "buckets": [...], "series": [...], "totals": {...}, ...}

A team admin's answers hold its team's rows only: its team is the filter, and another team asked
for is refused (403 permission_denied). A value that cannot be what it names is a 400 naming it.
Both first write the rows this node holds (briefly, as GET /admin/usage does), so that the
request the operator just made is in the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import cast
from urllib.parse import parse_qs

from ..accounting._ledger_views import (
    MAX_LIMIT,
    SERIES_BY,
    LedgerFilters,
    SeriesBy,
    Window,
    decode_cursor,
    ledger_csv,
    ledger_page,
    usage_series,
)
from ..config._models import CurrencySettings
from ..errors import InvalidRequestError, PermissionDeniedError
from ..keys import Database
from ..keys._store import text_problem
from ._asgi import Receive, Scope, Send, send_json

logger = logging.getLogger("quotagate.admin")

# How long an answer waits for this node's unwritten rows to be written (as GET /admin/usage).
FLUSH_WAIT = 2.0
CSV_HEADERS = [
    (b"content-type", b"text/csv; charset=utf-8"),
    (b"content-disposition", b'attachment; filename="quotagate-ledger.csv"'),
    (b"cache-control", b"no-store"),
]


def _query(scope: Scope) -> dict[str, list[str]]:
    # Blank values kept: "?team=" (a script's empty variable) is a mistake to point out, not "all".
    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def _invalid(param: str, problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid '{param}': {problem}.", param=param, code="invalid_value")


def _text(query: dict[str, list[str]], param: str) -> str | None:
    value = query.get(param, [None])[0]
    if value is None:
        return None
    if value == "":
        raise _invalid(param, "empty")
    problem = text_problem(value)
    if problem is not None:
        raise _invalid(param, problem)
    return value


def _time(query: dict[str, list[str]], param: str) -> datetime | None:
    value = _text(query, param)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC as the queries bind it: a time at either end of the calendar may have none.
        parsed = parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise _invalid(param, "a date (YYYY-MM-DD) or an ISO 8601 time is expected") from None
    return parsed


def _digits(value: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return value.isascii() and value.isdigit()


def _status(query: dict[str, list[str]]) -> str | int | None:
    value = _text(query, "status")
    if value is None or value in ("ok", "error"):
        return value
    if _digits(value) and 100 <= int(value) <= 599:
        return int(value)
    raise _invalid("status", "ok, error or an HTTP status code (100-599) is expected")


def _team(query: dict[str, list[str]], own: str | None) -> str | None:
    """The team asked for; for a team admin (``own``), its own, whatever else it asks for."""
    asked = _text(query, "team")
    if own is None:
        return asked
    if asked is not None and asked != own:
        raise PermissionDeniedError(f"A team admin of {own!r} sees only its team's usage.", code="permission_denied")
    return own


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone (as server._disconnect's watch notices it)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class LedgerViews:
    """The handlers of GET /admin/ledger and GET /admin/usage/series.

    ``flush`` writes the rows this node holds (the ledger's flush; None without a ledger), and is
    waited for FLUSH_WAIT at most; ``currency`` adds costs in the display currency."""

    def __init__(
        self, database: Database, flush: Callable[[], Awaitable[None]] | None, currency: CurrencySettings
    ) -> None:
        self.database = database
        self._flush = flush
        self.currency = currency.display
        self.rate = currency.rate

    async def _written(self) -> None:
        if self._flush is not None:
            # Not waited for long on a database slow to take them: the flush goes on (shielded).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._flush()), FLUSH_WAIT)

    async def ledger(self, scope: Scope, send: Send, team: str | None, receive: Receive | None = None) -> None:
        """GET /admin/ledger; ``team``: the caller's team when it is a team admin, else None;
        ``receive``: the request's, to stop a CSV export whose client has gone."""
        query = _query(scope)
        filters = LedgerFilters(
            since=_time(query, "since"),
            until=_time(query, "until"),
            key=_text(query, "key"),
            user=_text(query, "user"),
            team=_team(query, team),
            model=_text(query, "model"),
            deployment=_text(query, "deployment"),
            tier=_text(query, "tier"),
            status=_status(query),
        )
        form = query.get("format", ["json"])[0]
        if form not in ("json", "csv"):
            raise _invalid("format", "json or csv is expected")
        if form == "csv":
            await self._written()
            await self._send_csv(send, filters, receive)
            return
        limit_text = query.get("limit", ["50"])[0]
        if not _digits(limit_text) or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise _invalid("limit", f"a whole number from 1 to {MAX_LIMIT} is expected")
        cursor = query.get("cursor", [None])[0]
        if cursor is not None:
            try:
                decode_cursor(cursor)
            except ValueError:
                raise _invalid("cursor", "not a next_cursor of this API") from None
        await self._written()
        page = await ledger_page(self.database, filters, int(limit_text), cursor, self.currency, self.rate)
        await send_json(send, 200, {"object": "list", "data": page.rows, "next_cursor": page.next_cursor})

    async def _send_csv(self, send: Send, filters: LedgerFilters, receive: Receive | None = None) -> None:
        async with contextlib.aclosing(ledger_csv(self.database, filters, self.currency, self.rate)) as chunks:
            await self._stream(send, chunks, receive)

    async def _stream(self, send: Send, chunks: AsyncIterator[bytes], receive: Receive | None = None) -> None:
        # The header and the first page before the response starts: a database that cannot be
        # read is then an error answer (503), not an empty file.
        head = await anext(chunks)
        with contextlib.suppress(StopAsyncIteration):
            head += await anext(chunks)
        await send({"type": "http.response.start", "status": 200, "headers": list(CSV_HEADERS)})
        await send({"type": "http.response.body", "body": head, "more_body": True})
        # uvicorn's send() drops what is sent after the client has gone, without a word: without
        # a watch on receive, an export whose client left would read the whole ledger for nobody.
        gone = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
        step: asyncio.Future[bytes | None] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(chunks, None))
                if gone is not None:
                    await asyncio.wait((step, gone), return_when=asyncio.FIRST_COMPLETED)
                    if gone.done():
                        logger.info("the ledger's CSV export stopped: the client has gone")
                        return  # the page being read is given up on (finally)
                chunk = await step
                if chunk is None:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:
            # The response has started: the connection is closed without the body's end, which a
            # client sees as a download that failed, not as a shorter file.
            logger.warning("the ledger's CSV export stopped: %s", exc)
            return  # uvicorn closes a connection whose response did not end
        finally:
            # The read in flight ended before the pages' generator is closed (it cannot be while
            # it runs), and the watch with it; their outcomes taken, so that none is logged.
            for task in (step, gone):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.wait((task,))
                if task is not None and not task.cancelled():
                    task.exception()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def series(self, scope: Scope, send: Send, team: str | None) -> None:
        """GET /admin/usage/series; ``team``: the caller's team when it is a team admin, else None."""
        query = _query(scope)
        window = query.get("window", ["day"])[0]
        if window not in ("hour", "day", "month"):
            raise _invalid("window", "hour, day or month is expected")
        by = _text(query, "by")
        if by is not None and by not in SERIES_BY:
            raise _invalid("by", f"one of {', '.join(SERIES_BY)} is expected")
        chosen = _team(query, team)
        await self._written()
        answer = await usage_series(
            self.database,
            cast(Window, window),
            cast(SeriesBy | None, by),
            chosen,
            currency=self.currency,
            rate=self.rate,
        )
        await send_json(send, 200, answer)
