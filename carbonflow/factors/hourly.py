"""Hourly grid-intensity series in the registry: load a file as a new version of a series.

The file format is the one of ``carbonflow.emissions.grid_series`` (parsed and validated by
``parse_grid_intensity_csv``; a file with any problem is refused as a whole).

A series is one region's hourly values under a series id. In the registry it is a factor
(``emission_factors``: carrier electricity, parameter emission_factor, gas CO2e, variant
``hourly``, unit kgCO2e/kWh) and every load is a new version of it (version 1, 2, ...;
a reloaded or restated file never overwrites an earlier one). So an emissions row priced by
a series names it exactly like any other factor: ``factor_id`` = series id, ``factor_version``
= the load. The version's ``value`` is the mean of its hours (a summary for listings); its
``valid`` period spans the UTC dates of its first and last hour. The hours are in
``grid_intensity_hours``, the load's facts (source, file, span, gaps) in
``grid_intensity_series`` (migration 0007).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from carbonflow.emissions.grid_series import GridIntensityFile, parse_grid_intensity_csv
from carbonflow.factors.codes import is_region_code
from carbonflow.factors.errors import FactorError

logger = logging.getLogger(__name__)

HOURLY_VARIANT = "hourly"
HOURLY_UNIT = "kgCO2e/kWh"
_SERIES_ID = re.compile(r"[A-Z0-9][A-Z0-9_]*")

_INSERT_FACTOR = """
INSERT INTO emission_factors (factor_id, scope, category, region_code, carrier, parameter, gas,
    variant, unit, region_label, fuel_label, gas_label)
VALUES (%(series_id)s, 'scope2', 'grid_electricity', %(region)s, 'electricity',
    'emission_factor', 'CO2e', 'hourly', 'kgCO2e/kWh', %(region)s, 'electricity', 'CO2e')
ON CONFLICT (factor_id) DO NOTHING
"""
_INSERT_VERSION = """
INSERT INTO emission_factor_versions (factor_id, version, value, source_value, source_unit,
    valid, source, source_detail, reason)
VALUES (%(series_id)s, %(version)s, %(mean)s, %(mean)s, 'kgCO2e/kWh',
    daterange(%(first_day)s, %(end_day)s, '[)'), %(source)s, %(detail)s, %(reason)s)
"""
_INSERT_SERIES = """
INSERT INTO grid_intensity_series (series_id, version, region_code, source, file_name,
    first_hour, end_hour, hours, gaps)
VALUES (%(series_id)s, %(version)s, %(region)s, %(source)s, %(file_name)s, %(first_hour)s,
    %(end_hour)s, %(hours)s, %(gaps)s)
RETURNING loaded_at
"""


class HourlySeriesError(FactorError):
    """An hourly series could not be loaded (unknown region, id clash, ...)."""


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """What a load recorded."""

    series_id: str
    version: int
    region_code: str
    source: str
    first_hour: datetime
    end_hour: datetime  # exclusive
    hours: int
    gap_hours: int
    mean_kg_co2e_per_kwh: float
    loaded_at: datetime


def load_hourly_series(
    conn: psycopg.Connection[Any],
    text: str,
    *,
    series_id: str,
    source: str,
    region: str | None = None,
    allow_gaps: bool = False,
    reason: str = "",
    file_name: str = "",
) -> LoadedVersion:
    """Validate ``text`` (the CSV import format) and record it as the next version of
    ``series_id``. ``region`` picks one region of a file that holds several."""
    if not _SERIES_ID.fullmatch(series_id):
        raise HourlySeriesError(f"series id {series_id!r}: use A-Z, 0-9 and _ (e.g. CN_EAST_H)")
    if not source.strip():
        raise HourlySeriesError("a series needs a --source (publisher, dataset, release)")
    parsed = parse_grid_intensity_csv(text, allow_gaps=allow_gaps)
    chosen = _region(parsed, region)
    rows = [r for r in parsed.rows if r.region_code == chosen]
    gaps = [g for g in parsed.gaps if g.region_code == chosen]
    first_hour = rows[0].hour_start.astimezone(UTC)
    end_hour = rows[-1].hour_start.astimezone(UTC) + timedelta(hours=1)
    mean = sum(r.kg_co2e_per_kwh for r in rows) / len(rows)
    gap_hours = sum(
        int((g.last_missing - g.first_missing).total_seconds()) // 3600 + 1 for g in gaps
    )
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_INSERT_FACTOR, {"series_id": series_id, "region": chosen})
            cur.execute(
                "SELECT region_code, variant FROM emission_factors WHERE factor_id = %s FOR UPDATE",
                (series_id,),
            )
            found = cur.fetchone()
            if found is None or found[1] != HOURLY_VARIANT:
                raise HourlySeriesError(f"{series_id} is a factor, not an hourly series")
            if found[0] != chosen:
                raise HourlySeriesError(
                    f"{series_id} is the series of {found[0]}; this file is for {chosen}"
                )
            cur.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM emission_factor_versions"
                " WHERE factor_id = %s",
                (series_id,),
            )
            version = int(cur.fetchone()[0])  # type: ignore[index]
            params = {
                "series_id": series_id,
                "version": version,
                "region": chosen,
                "source": source.strip(),
                "file_name": file_name,
                "first_hour": first_hour,
                "end_hour": end_hour,
                "hours": len(rows),
                "gaps": Jsonb(
                    [
                        {
                            "first_missing": g.first_missing.isoformat(),
                            "last_missing": g.last_missing.isoformat(),
                        }
                        for g in gaps
                    ]
                ),
                "mean": mean,
                "first_day": first_hour.date(),
                "end_day": (end_hour - timedelta(microseconds=1)).date() + timedelta(days=1),
                "detail": f"{len(rows)} hourly values ({gap_hours} h missing)"
                + (f" from {file_name}" if file_name else ""),
                "reason": reason.strip()
                or ("hourly series loaded" if version == 1 else "hourly series reloaded"),
            }
            cur.execute(_INSERT_VERSION, params)
            cur.execute(_INSERT_SERIES, params)
            loaded_at = cur.fetchone()[0]  # type: ignore[index]
            with cur.copy(
                "COPY grid_intensity_hours (series_id, version, hour_start, kg_co2e_per_kwh,"
                " source) FROM STDIN"
            ) as copy:
                for r in rows:
                    copy.write_row((series_id, version, r.hour_start, r.kg_co2e_per_kwh, r.source))
    except psycopg.Error as exc:
        raise HourlySeriesError(f"loading series {series_id} failed: {exc}") from exc
    logger.info("loaded %s v%d: %d hours of %s", series_id, version, len(rows), chosen)
    return LoadedVersion(
        series_id=series_id,
        version=version,
        region_code=chosen,
        source=source.strip(),
        first_hour=first_hour,
        end_hour=end_hour,
        hours=len(rows),
        gap_hours=gap_hours,
        mean_kg_co2e_per_kwh=mean,
        loaded_at=loaded_at,
    )


def _region(parsed: GridIntensityFile, region: str | None) -> str:
    regions = parsed.regions()
    if not regions:
        raise HourlySeriesError("the file has no data rows")
    if region is None:
        if len(regions) > 1:
            raise HourlySeriesError(
                f"the file holds {len(regions)} regions ({', '.join(regions)}): name one with"
                " --region (each region is a series of its own)"
            )
        region = regions[0]
    elif region not in regions:
        raise HourlySeriesError(f"the file has no rows for {region} (it has {', '.join(regions)})")
    if not is_region_code(region):
        raise HourlySeriesError(
            f"{region!r} is not a region code (e.g. CN-East, CN, DE; see the factor README)"
        )
    return region
