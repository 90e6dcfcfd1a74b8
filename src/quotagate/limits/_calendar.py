"""Calendar windows: a day or a month that starts at midnight in a time zone."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from ._model import Calendar


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _start_of(moment: datetime, calendar: Calendar) -> datetime:
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day.replace(day=1) if calendar is Calendar.MONTH else day


def _next_start(start: datetime, calendar: Calendar, zone: ZoneInfo) -> datetime:
    if calendar is Calendar.MONTH:
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        return datetime(year, month, 1, tzinfo=zone)
    # Wall-clock arithmetic: across a DST change a day is 23 or 25 hours, and still a day.
    following = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
    return following


def window_bounds(now: float, calendar: Calendar, timezone: str) -> tuple[float, float, float]:
    """(start, end, end of the next window), as epoch seconds, of the window holding ``now``.

    The third value lets a store whose clock has just passed ``end`` (Redis's, say, a little
    ahead of this node's) move on to the next window without asking again.
    """
    zone = _zone(timezone)
    start = _start_of(datetime.fromtimestamp(now, zone), calendar)
    end = _next_start(start, calendar, zone)
    after = _next_start(end, calendar, zone)
    return start.timestamp(), end.timestamp(), after.timestamp()
