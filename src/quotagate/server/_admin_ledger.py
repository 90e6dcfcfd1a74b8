"""The ledger's reports, request log and charts over HTTP, for AdminAPI (queries:
accounting._reports and accounting._ledger_views), and the query parameters every admin route reads.

GET /admin/usage?by=key|user|team|tier|model|deployment|day|route&since&until
    totals grouped (accounting._reports)

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
Each first writes the rows this node holds (waiting FLUSH_WAIT at most), so that the request the
operator just made is in the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import cast, get_args
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
from ..accounting._reports import GroupBy, usage_report
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


def query_params(scope: Scope) -> dict[str, list[str]]:
    """The request's query parameters, each name's values in order."""
    # Blank values kept: "?team=" (a script's empty variable) is a mistake to point out, not "all".
    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def _invalid(param: str, problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid '{param}': {problem}.", param=param, code="invalid_value")


def text_param(query: dict[str, list[str]], param: str) -> str | None:
    """A one-line label's parameter (a user, a team, ...), or None; empty or with control
    characters is a 400 naming it."""
    value = query.get(param, [None])[0]
    if value is None:
        return None
    if value == "":
        raise _invalid(param, "empty")
    problem = text_problem(value)
    if problem is not None:
        raise _invalid(param, problem)
    return value


def parse_time(value: str) -> datetime:
    """A date (YYYY-MM-DD: its midnight) or an ISO 8601 time (UTC unless it says otherwise), in
    UTC as the queries bind it; ValueError for anything else, and for a time at either end of the
    calendar, which UTC cannot hold."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except OverflowError as exc:
        raise ValueError(str(exc)) from None


def _time(query: dict[str, list[str]], param: str) -> datetime | None:
    value = text_param(query, param)
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise _invalid(param, "a date (YYYY-MM-DD) or an ISO 8601 time is expected") from None


def _report_time(query: dict[str, list[str]], param: str) -> datetime | None:
    """GET /admin/usage's since and until, refused in the words that route has always used."""
    value = query.get(param, [None])[0]
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise InvalidRequestError(f"{param} must be a date (YYYY-MM-DD) or an ISO 8601 time.", param=param) from None


def whole_number(query: dict[str, list[str]], param: str, default: int | None, low: int, high: int) -> int | None:
    """A whole-number parameter from ``low`` to ``high`` (``default`` when not given); anything
    else, "²" and other digits that are not ASCII included, is a 400 naming it."""
    text = query.get(param, [None])[0]
    if text is None:
        return default
    if not _digits(text) or not low <= int(text) <= high:
        raise _invalid(param, f"a whole number from {low} to {high} is expected")
    return int(text)


def _digits(value: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return value.isascii() and value.isdigit()


def _status(query: dict[str, list[str]]) -> str | int | None:
    value = text_param(query, "status")
    if value is None or value in ("ok", "error"):
        return value
    if _digits(value) and 100 <= int(value) <= 599:
        return int(value)
    raise _invalid("status", "ok, error or an HTTP status code (100-599) is expected")


def _team(query: dict[str, list[str]], own: str | None) -> str | None:
    """The team asked for; for a team admin (``own``), its own, whatever else it asks for."""
    asked = text_param(query, "team")
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
    """The handlers of GET /admin/usage, GET /admin/ledger and GET /admin/usage/series.

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

    async def usage(self, scope: Scope, send: Send, team: str | None) -> None:
        """GET /admin/usage; ``team``: the caller's team when it is a team admin, else None."""
        query = query_params(scope)
        # "?by=" is a mistake to point out, not the default.
        by = query.get("by", ["key"])[0]
        if by not in get_args(GroupBy):
            raise InvalidRequestError("by must be key, user, team, tier, model, deployment, day or route.", param="by")
        since, until = (_report_time(query, name) for name in ("since", "until"))
        await self._written()
        # Within the database's statement deadline, like every call to it (a 503 past it).
        report = await usage_report(self.database, cast(GroupBy, by), since, until, self.currency, self.rate, team=team)
        await send_json(send, 200, report.to_dict())

    async def ledger(self, scope: Scope, send: Send, team: str | None, receive: Receive | None = None) -> None:
        """GET /admin/ledger; ``team``: the caller's team when it is a team admin, else None;
        ``receive``: the request's, to stop a CSV export whose client has gone."""
        query = query_params(scope)
        filters = LedgerFilters(
            since=_time(query, "since"),
            until=_time(query, "until"),
            key=text_param(query, "key"),
            user=text_param(query, "user"),
            team=_team(query, team),
            model=text_param(query, "model"),
            deployment=text_param(query, "deployment"),
            tier=text_param(query, "tier"),
            status=_status(query),
        )
        form = query.get("format", ["json"])[0]
        if form not in ("json", "csv"):
            raise _invalid("format", "json or csv is expected")
        if form == "csv":
            await self._written()
            await self._send_csv(send, filters, receive)
            return
        limit = whole_number(query, "limit", 50, 1, MAX_LIMIT)
        assert limit is not None
        cursor = query.get("cursor", [None])[0]
        if cursor is not None:
            try:
                decode_cursor(cursor)
            except ValueError:
                raise _invalid("cursor", "not a next_cursor of this API") from None
        await self._written()
        page = await ledger_page(self.database, filters, limit, cursor, self.currency, self.rate)
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
        query = query_params(scope)
        window = query.get("window", ["day"])[0]
        if window not in ("hour", "day", "month"):
            raise _invalid("window", "hour, day or month is expected")
        by = text_param(query, "by")
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
