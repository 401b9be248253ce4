"""Pure time-series rules of the API: timestamps, ranges, paging and local-time buckets.

No I/O here, so every rule is unit-tested without a database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Generic, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic_core import PydanticCustomError

from services.api.errors import ApiError, InvalidParametersError
from services.api.models import BucketWidth

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_SECOND = timedelta(seconds=1)
ONE_MINUTE = timedelta(minutes=1)

_TIMESTAMP = re.compile(
    r"""^(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<time>\d{2}:\d{2}(:\d{2})?)
        (?P<fraction>\.\d+)?
        (?P<offset>[Zz]|[+-]\d{2}:\d{2})?$""",
    re.VERBOSE,
)
# What a "+hh:mm" offset becomes when the client forgot to percent-encode the "+".
_PLUS_DECODED_AS_SPACE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt][\d:.]+ \d{2}:\d{2}$")


def parse_timestamp(value: object) -> datetime:
    """An RFC 3339 timestamp with an offset, as an aware datetime in UTC.

    Naive timestamps are refused: guessing a time zone would shift the range silently.
    Seconds may be left out (``2026-03-29T10:00Z``); fractions beyond microseconds, which
    the database does not keep, are cut off.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _no_offset(value.isoformat())
        return value.astimezone(UTC)
    text = str(value).strip()
    match = _TIMESTAMP.match(text)
    if match is None:
        if _PLUS_DECODED_AS_SPACE.match(text):
            raise PydanticCustomError(
                "timestamp_plus_as_space",
                "'{value}' looks like a timestamp whose '+' offset was decoded as a space: "
                "percent-encode '+' as %2B in the query string, or give the time in UTC "
                "with 'Z'",
                {"value": text},
            )
        raise PydanticCustomError(
            "timestamp_format",
            "'{value}' is not an RFC 3339 timestamp; use e.g. 2026-03-29T00:00:00Z or "
            "2026-03-29T01:00:00%2B01:00",
            {"value": text},
        )
    if match["offset"] is None:
        raise _no_offset(text)
    fraction = (match["fraction"] or "")[:7]  # "." and at most six digits
    offset = "+00:00" if match["offset"] in ("Z", "z") else match["offset"]
    try:
        parsed = datetime.fromisoformat(f"{match['date']}T{match['time']}{fraction}{offset}")
    except ValueError as exc:
        raise PydanticCustomError(
            "timestamp_value",
            "'{value}' is not a valid date and time: {reason}",
            {"value": text, "reason": str(exc)},
        ) from exc
    return parsed.astimezone(UTC)


def _no_offset(text: str) -> PydanticCustomError:
    return PydanticCustomError(
        "timestamp_without_offset",
        "'{value}' has no UTC offset; add 'Z' for UTC or '+hh:mm' (sent as %2Bhh:mm), "
        "e.g. 2026-03-29T00:00:00Z",
        {"value": text},
    )


def check_range(start: datetime, end: datetime, *, max_days: float) -> None:
    """from < to, and no wider than ``max_days``."""
    if end <= start:
        raise InvalidParametersError.one(
            "query",
            "to",
            "range_empty",
            f"{end.isoformat()} is not later than from ({start.isoformat()}); the range is "
            "[from, to), so to must come after from",
        )
    if end - start > timedelta(days=max_days):
        days = (end - start) / timedelta(days=1)
        raise InvalidParametersError.one(
            "query",
            "to",
            "range_too_long",
            f"the range spans {days:g} days; at most {max_days:g} days per request: "
            "split it into several requests",
        )


def check_whole_minutes(name: str, value: datetime) -> None:
    if value.second or value.microsecond:
        raise InvalidParametersError.one(
            "query",
            name,
            "not_whole_minute",
            f"{value.isoformat()} is not on a whole minute; energy is stored per minute, so "
            f"give {name} as e.g. {value.replace(second=0, microsecond=0).isoformat()}",
        )


class _Timed(Protocol):
    @property
    def ts(self) -> datetime: ...


T = TypeVar("T", bound=_Timed)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_from: datetime | None

    @property
    def truncated(self) -> bool:
        return self.next_from is not None


def split_page(rows: Sequence[T], limit: int) -> Page[T]:
    """Cut ``rows`` (ordered by ts, at most ``limit + 1`` of them) into one page.

    A page never ends in the middle of a timestamp: several metrics can share one ts, and
    continuing with ``from=next_from`` must neither repeat nor skip any of them.
    """
    if len(rows) <= limit:
        return Page(rows, None)
    next_from = rows[limit].ts
    items = [row for row in rows[:limit] if row.ts < next_from]
    if not items:
        raise InvalidParametersError.one(
            "query",
            "limit",
            "limit_below_timestamp_group",
            f"more than {limit} readings share the timestamp {next_from.isoformat()}; "
            "raise limit or filter by metric",
        )
    return Page(items, next_from)


BUCKET_SIZES: dict[BucketWidth, timedelta] = {
    BucketWidth.MINUTE: timedelta(minutes=1),
    BucketWidth.QUARTER_HOUR: timedelta(minutes=15),
    BucketWidth.HOUR: timedelta(hours=1),
    BucketWidth.DAY: timedelta(days=1),
}


@dataclass(frozen=True)
class Bucket:
    """One bucket: its real extent [start, end) and the part of it inside the request."""

    start: datetime
    end: datetime
    lo: datetime
    hi: datetime

    @property
    def minutes(self) -> int:
        return round((self.hi - self.lo) / ONE_MINUTE)


def estimate_bucket_count(start: datetime, end: datetime, width: BucketWidth) -> int:
    """An upper bound, cheap enough to check before building the buckets."""
    return int((end - start) / BUCKET_SIZES[width]) + 2


def local_buckets(start: datetime, end: datetime, width: BucketWidth, tz: ZoneInfo) -> list[Bucket]:
    """The buckets of ``width`` overlapping [start, end), aligned to the local clock of ``tz``.

    A day runs from local midnight to the next local midnight, so it lasts 23 or 25 hours
    on DST change days. Shorter buckets start where the local clock shows a multiple of the
    width; in the repeated hour of an autumn change both real hours are buckets of their
    own, told apart by the UTC offset of their start.
    """
    if width is BucketWidth.DAY:
        bounds = _local_midnights(start, end, tz)
    else:
        bounds = _local_steps(start, end, BUCKET_SIZES[width], tz)
    return [
        Bucket(start=lo.astimezone(tz), end=hi.astimezone(tz), lo=max(lo, start), hi=min(hi, end))
        for lo, hi in pairwise(bounds)
    ]


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # fold=0 puts a midnight that falls in a DST gap at the transition itself.
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def _local_midnights(start: datetime, end: datetime, tz: ZoneInfo) -> list[datetime]:
    day = start.astimezone(tz).date()
    bounds = [_local_midnight(day, tz)]
    while bounds[-1] < end:
        day += timedelta(days=1)
        bounds.append(_local_midnight(day, tz))
    return bounds


def _seconds_past_local_boundary(instant: datetime, step: timedelta, tz: ZoneInfo) -> timedelta:
    offset = instant.astimezone(tz).utcoffset() or timedelta(0)
    return ((instant - EPOCH) + offset) % step


def _local_steps(start: datetime, end: datetime, step: timedelta, tz: ZoneInfo) -> list[datetime]:
    bounds = [start - _seconds_past_local_boundary(start, step, tz)]
    while bounds[-1] < end:
        current = bounds[-1]
        following = current + step
        # A DST change by less than the step (Lord Howe: 30 min) moves the local grid.
        shift = _seconds_past_local_boundary(following, step, tz)
        if shift and following - shift > current:
            following -= shift
        bounds.append(following)
    return bounds


def site_zone(name: str) -> ZoneInfo:
    """The site's time zone; one the API cannot resolve is a server-side data problem."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ApiError(
            f"the site's time zone {name!r} is not in the API's time zone database"
        ) from exc
