"""Epoch minutes on a site's local calendar (pure): which local days a set of minutes
spans, and where each local day starts. Factors are effective by local calendar day."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray


def local_day(minute: int, zone: ZoneInfo) -> date:
    """The local date of an epoch minute."""
    return datetime.fromtimestamp(minute * 60, UTC).astimezone(zone).date()


def local_days(minutes: NDArray[np.int64], zone: ZoneInfo) -> list[date]:
    """Every local date from the earliest minute's to the latest's (a batch spans a few)."""
    if not len(minutes):
        return []
    first = local_day(int(minutes.min()), zone)
    last = local_day(int(minutes.max()), zone)
    return [first + timedelta(days=k) for k in range((last - first).days + 1)]


def local_midnight_minute(day: date, zone: ZoneInfo) -> int:
    """The epoch minute a local date starts at."""
    return int(datetime.combine(day, time.min, zone).timestamp() // 60)


def minutes_on(minutes: NDArray[np.int64], day: date, zone: ZoneInfo) -> int:
    """How many of the minutes fall on a local date."""
    start = local_midnight_minute(day, zone)
    end = local_midnight_minute(day + timedelta(days=1), zone)
    return int(np.count_nonzero((minutes >= start) & (minutes < end)))
