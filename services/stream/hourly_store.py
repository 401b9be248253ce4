"""TimescaleDB adapter of hourly location-based pricing: the loaded series covering some
regions and times, and keeping one current location-based figure per minute."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import psycopg

from carbonflow.emissions.factors import FactorRef
from carbonflow.emissions.grid_series import SECONDS_PER_HOUR, HourlyGridSeries
from services.stream.emissions import DeviceSite
from services.stream.hourly_emissions import LoadedSeries

# The latest load of each series of the regions whose span meets [start, end), with its
# hours inside that range (none at all when the range falls in a gap).
_SERIES = """
WITH latest AS (
    SELECT DISTINCT ON (series_id) series_id, version, region_code, first_hour, end_hour
    FROM grid_intensity_series
    WHERE lower(region_code) = ANY(%(regions)s)
    ORDER BY series_id, version DESC
)
SELECT l.series_id, l.version, l.region_code,
       extract(epoch FROM l.first_hour)::bigint, extract(epoch FROM l.end_hour)::bigint,
       extract(epoch FROM h.hour_start)::bigint, h.kg_co2e_per_kwh
FROM latest l
LEFT JOIN grid_intensity_hours h
  ON h.series_id = l.series_id AND h.version = l.version
 AND h.hour_start > %(start)s - interval '1 hour' AND h.hour_start < %(end)s
WHERE l.first_hour < %(end)s AND l.end_hour > %(start)s
ORDER BY l.series_id, h.hour_start
"""


def regions_of(sites: Mapping[str, DeviceSite]) -> list[str]:
    """Every grid region and country the sites may take a series from."""
    return sorted({code for s in sites.values() for code in (s.grid_region, s.country)})


async def series_covering(
    conn: psycopg.AsyncConnection, regions: Iterable[str], start: datetime, end: datetime
) -> list[LoadedSeries]:
    """The latest version of every series of ``regions`` whose span meets [start, end), with
    its values for the hours in that range."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    found: dict[tuple[str, int], tuple[str, int, int, dict[int, float]]] = {}
    async with conn.cursor() as cur:
        await cur.execute(
            _SERIES,
            {"regions": sorted({r.casefold() for r in regions}), "start": start, "end": end},
        )
        for series_id, version, region, first_s, end_s, hour_s, value in await cur.fetchall():
            _, _, _, values = found.setdefault(
                (series_id, version), (region, int(first_s), int(end_s), {})
            )
            if hour_s is not None:
                values[int(hour_s) // SECONDS_PER_HOUR] = float(value)
    return [
        LoadedSeries(
            HourlyGridSeries(FactorRef(series_id, version), region, MappingProxyType(values)),
            first_minute=first_s // 60,
            end_minute=end_s // 60,
        )
        for (series_id, version), (region, first_s, end_s, values) in sorted(found.items())
    ]


def minute_range(minutes: Iterable[int]) -> tuple[datetime, datetime]:
    """[start, end) of the epoch minutes given, as times (for ``series_covering``)."""
    ordered = sorted(minutes)
    if not ordered:
        raise ValueError("no minutes")
    start = datetime.fromtimestamp(ordered[0] * 60, UTC)
    return start, datetime.fromtimestamp(ordered[-1] * 60, UTC) + timedelta(minutes=1)
