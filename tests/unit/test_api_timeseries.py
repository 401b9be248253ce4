"""The API's pure time rules: timestamps, ranges, paging and local-time buckets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic_core import PydanticCustomError

from services.api.errors import ApiError, InvalidParametersError
from services.api.models import BucketWidth
from services.api.timeseries import (
    Bucket,
    check_range,
    check_whole_minutes,
    local_buckets,
    parse_timestamp,
    site_zone,
    split_page,
)

BUDAPEST = ZoneInfo("Europe/Budapest")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-29T00:00:00Z", utc(2026, 3, 29)),
        ("2026-03-29t00:00:00z", utc(2026, 3, 29)),
        ("2026-03-29T01:00:00+01:00", utc(2026, 3, 29)),
        ("2026-03-28T19:00:00-05:00", utc(2026, 3, 29)),
        ("2026-03-29T10:00Z", utc(2026, 3, 29, 10)),
        ("2026-03-29T00:00:00.25Z", utc(2026, 3, 29, 0, 0, 0, 250_000)),
        ("2026-03-29T00:00:00.123456789Z", utc(2026, 3, 29, 0, 0, 0, 123_456)),
    ],
)
def test_rfc3339_timestamps_parse_to_utc(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("2026-03-29T00:00:00", "timestamp_without_offset"),
        ("2026-03-29T00:00", "timestamp_without_offset"),
        ("2026-03-29T00:00:00 01:00", "timestamp_plus_as_space"),
        ("2026-03-29", "timestamp_format"),
        ("1774742400", "timestamp_format"),
        ("yesterday", "timestamp_format"),
        ("2026-02-30T00:00:00Z", "timestamp_value"),
    ],
)
def test_bad_timestamps_are_refused_with_a_reason(text: str, code: str) -> None:
    with pytest.raises(PydanticCustomError) as caught:
        parse_timestamp(text)
    assert caught.value.type == code
    assert text in caught.value.message()


def test_naive_datetime_objects_are_refused_too() -> None:
    with pytest.raises(PydanticCustomError, match="no UTC offset"):
        parse_timestamp(datetime(2026, 3, 29))


def test_range_must_be_non_empty_and_bounded() -> None:
    check_range(utc(2026, 1, 1), utc(2026, 2, 1), max_days=31)
    with pytest.raises(InvalidParametersError) as empty:
        check_range(utc(2026, 1, 2), utc(2026, 1, 2), max_days=31)
    assert empty.value.errors is not None
    assert empty.value.errors[0].code == "range_empty"
    with pytest.raises(InvalidParametersError) as long:
        check_range(utc(2026, 1, 1), utc(2026, 2, 1, 0, 1), max_days=31)
    assert long.value.errors is not None
    assert long.value.errors[0].code == "range_too_long"
    assert "31 days" in long.value.detail


def test_energy_ranges_are_whole_minutes() -> None:
    check_whole_minutes("from", utc(2026, 1, 1, 10, 5))
    with pytest.raises(InvalidParametersError, match="not on a whole minute"):
        check_whole_minutes("from", utc(2026, 1, 1, 10, 5, 30))


@dataclass(frozen=True)
class Row:
    ts: datetime
    metric: str


def test_pages_end_before_the_first_reading_left_out() -> None:
    t0 = utc(2026, 1, 1)
    rows = [Row(t0 + timedelta(seconds=k), "power_w") for k in range(5)]
    whole = split_page(rows, 5)
    assert not whole.truncated
    assert list(whole.items) == rows
    cut = split_page(rows, 4)
    assert cut.truncated
    assert list(cut.items) == rows[:4]
    assert cut.next_from == rows[4].ts


def test_pages_never_split_one_timestamp() -> None:
    t0, t1 = utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 10)
    rows = [Row(t0, "energy_wh"), Row(t0, "power_w"), Row(t1, "energy_wh"), Row(t1, "power_w")]
    page = split_page(rows[:4], 3)  # the 4th row shares t1 with the 3rd
    assert list(page.items) == rows[:2]
    assert page.next_from == t1
    with pytest.raises(InvalidParametersError, match="raise limit or filter by metric"):
        split_page(rows[:2], 1)


def _starts(buckets: list[Bucket]) -> list[str]:
    return [b.start.isoformat() for b in buckets]


def test_a_day_is_local_midnight_to_local_midnight_across_spring_forward() -> None:
    start = datetime(2026, 3, 28, tzinfo=BUDAPEST).astimezone(UTC)
    end = datetime(2026, 3, 31, tzinfo=BUDAPEST).astimezone(UTC)
    buckets = local_buckets(start, end, BucketWidth.DAY, BUDAPEST)
    assert _starts(buckets) == [
        "2026-03-28T00:00:00+01:00",
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
    ]
    assert [b.minutes for b in buckets] == [1440, 1380, 1440]
    assert buckets[1].end.isoformat() == "2026-03-30T00:00:00+02:00"


def test_the_autumn_day_has_25_hours() -> None:
    start = datetime(2026, 10, 25, tzinfo=BUDAPEST).astimezone(UTC)
    buckets = local_buckets(start, start + timedelta(hours=25), BucketWidth.DAY, BUDAPEST)
    assert len(buckets) == 1
    assert buckets[0].minutes == 1500


def test_buckets_are_clipped_to_the_range_but_keep_their_real_extent() -> None:
    start = utc(2026, 3, 29, 6)
    end = utc(2026, 3, 30, 1)
    buckets = local_buckets(start, end, BucketWidth.DAY, BUDAPEST)
    assert _starts(buckets) == ["2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"]
    assert buckets[0].lo == start
    assert buckets[0].minutes == (22 - 6) * 60  # 06:00Z up to local midnight at 22:00Z
    assert buckets[1].minutes == 3 * 60  # 22:00Z up to 01:00Z
    assert sum(b.minutes for b in buckets) == (end - start) / timedelta(minutes=1)


def test_hours_skip_the_missing_hour_in_spring() -> None:
    start = utc(2026, 3, 29, 0)  # 01:00 local
    buckets = local_buckets(start, start + timedelta(hours=3), BucketWidth.HOUR, BUDAPEST)
    assert _starts(buckets) == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T04:00:00+02:00",
    ]
    assert all(b.minutes == 60 for b in buckets)


def test_the_repeated_hour_in_autumn_is_two_buckets() -> None:
    start = utc(2026, 10, 24, 23)  # 01:00 CEST
    buckets = local_buckets(start, start + timedelta(hours=4), BucketWidth.HOUR, BUDAPEST)
    assert _starts(buckets) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    assert all(b.minutes == 60 for b in buckets)


def test_hours_follow_half_hour_offsets() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    start = utc(2026, 1, 1, 0, 0)  # 05:30 local
    buckets = local_buckets(start, start + timedelta(hours=2), BucketWidth.HOUR, kolkata)
    assert _starts(buckets) == [
        "2026-01-01T05:00:00+05:30",
        "2026-01-01T06:00:00+05:30",
        "2026-01-01T07:00:00+05:30",
    ]
    assert [b.minutes for b in buckets] == [30, 60, 30]


def test_quarter_hours_and_minutes_tile_the_range() -> None:
    start, end = utc(2026, 3, 29, 0, 7), utc(2026, 3, 29, 2, 7)
    quarters = local_buckets(start, end, BucketWidth.QUARTER_HOUR, BUDAPEST)
    assert quarters[0].start == utc(2026, 3, 29, 0, 0)
    assert quarters[-1].start == utc(2026, 3, 29, 2, 0)
    assert len(quarters) == 9
    assert sum(b.minutes for b in quarters) == 120
    minutes = local_buckets(start, end, BucketWidth.MINUTE, BUDAPEST)
    assert len(minutes) == 120
    assert all(b.minutes == 1 for b in minutes)


def test_unknown_site_zone_is_a_server_error() -> None:
    assert site_zone("Europe/Budapest") == BUDAPEST
    with pytest.raises(ApiError) as caught:
        site_zone("CEST")
    assert caught.value.problem.status == 500
