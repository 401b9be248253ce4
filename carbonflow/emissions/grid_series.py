"""Hourly grid-intensity series: the import format, its parser, and lookups by hour.

Import format (CSV)
-------------------
UTF-8 text, comma separated, RFC 4180 quoting (quote a field that contains a comma). The
first line is exactly this header, in this order::

    region_code,hour_start,kgco2e_per_kwh,source

followed by one row per region and hour, for example::

    CN-East,2024-07-01T04:00:00Z,0.5812,"East China dispatch data, 2024 release"

=================  ==========================================================================
column             rule
=================  ==========================================================================
region_code        the grid region the value applies to, as the registry names it
                   (e.g. ``CN-East``); 1 to 64 characters, surrounding spaces ignored
hour_start         start of the hour, ISO 8601 in UTC: ``2024-07-01T04:00:00Z`` or
                   ``...+00:00``; other offsets and times off the hour are refused, so a
                   file never depends on a reader's time zone
kgco2e_per_kwh     emission intensity of the grid's electricity during that hour, in
                   kgCO2e/kWh; a decimal number from 0 to 2.5 (a larger value is almost
                   always a gCO2e/kWh figure in the wrong column)
source             where the value comes from (publisher, dataset, release); not empty
=================  ==========================================================================

Rows may come in any order and blank lines are ignored. Each (region_code, hour_start)
appears at most once. Within a region the hours run without a gap from the first to the
last; a file with gaps is refused unless the import explicitly allows gaps, in which case
the gaps are listed and an interval inside one has no factor (it is reported, never filled).
Every problem is reported with its 1-based line and column; a file with any problem is
refused as a whole, so a partly loaded series never stands in for a complete one.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from carbonflow.emissions.errors import (
    FactorInputError,
    FormatProblem,
    GridSeriesFormatError,
    MissingFactorError,
)
from carbonflow.emissions.factors import FactorRef

HEADER = ("region_code", "hour_start", "kgco2e_per_kwh", "source")
MAX_KG_CO2E_PER_KWH = 2.5
SECONDS_PER_HOUR = 3600


class _Row(BaseModel):
    """Validation of one data row; field names are the column names."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")

    region_code: Annotated[str, Field(min_length=1, max_length=64)]
    hour_start: datetime
    kgco2e_per_kwh: Annotated[float, Field(ge=0.0, le=MAX_KG_CO2E_PER_KWH, allow_inf_nan=False)]
    source: Annotated[str, Field(min_length=1)]

    @field_validator("hour_start", mode="before")
    @classmethod
    def _iso_8601(cls, value: object) -> datetime:
        # Parse ourselves: pydantic's lax mode would also take "1719806400" as a timestamp.
        if not isinstance(value, str):
            raise ValueError("expected an ISO 8601 date-time")
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an ISO 8601 date-time: {value!r}") from None

    @field_validator("hour_start")
    @classmethod
    def _utc_hour(cls, value: datetime) -> datetime:
        offset = value.utcoffset()
        if offset is None or offset != timedelta(0):
            raise ValueError("must be in UTC (end with Z or +00:00)")
        if (value.minute, value.second, value.microsecond) != (0, 0, 0):
            raise ValueError("must be the start of an hour")
        return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class HourlyIntensity:
    """One row of an imported file."""

    region_code: str
    hour_start: datetime
    kg_co2e_per_kwh: float
    source: str
    line: int


@dataclass(frozen=True, slots=True)
class HourGap:
    """Hours of a region with no row: ``first_missing`` to ``last_missing`` inclusive."""

    region_code: str
    first_missing: datetime
    last_missing: datetime


@dataclass(frozen=True, slots=True)
class GridIntensityFile:
    """A parsed, validated file: its rows sorted by region and hour, and any allowed gaps."""

    rows: tuple[HourlyIntensity, ...]
    gaps: tuple[HourGap, ...]

    def regions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.region_code for r in self.rows))

    def series(self, region_code: str, ref: FactorRef) -> HourlyGridSeries:
        """The hourly series of one region, under the id and version the registry gave it."""
        values = {
            _epoch_hour(r.hour_start): r.kg_co2e_per_kwh
            for r in self.rows
            if r.region_code == region_code
        }
        if not values:
            raise MissingFactorError(f"no hourly grid intensity for region {region_code!r}")
        return HourlyGridSeries(ref, region_code, MappingProxyType(values))


@dataclass(frozen=True, slots=True)
class HourlyGridSeries:
    """kgCO2e/kWh per UTC hour of one region; ``ref`` names the loaded series version."""

    ref: FactorRef
    region_code: str
    by_epoch_hour: Mapping[int, float]

    def intensity_at(self, when: datetime) -> float:
        """kgCO2e/kWh during the hour containing ``when`` (an aware datetime)."""
        hour = _epoch_hour(when)
        try:
            return self.by_epoch_hour[hour]
        except KeyError:
            raise MissingFactorError(
                f"{self.ref}: no grid intensity for {self.region_code} in the hour starting "
                f"{datetime.fromtimestamp(hour * SECONDS_PER_HOUR, UTC).isoformat()}"
            ) from None

    def breakpoints(self) -> list[tuple[int, float | None]]:
        """(epoch minute, kgCO2e/kWh) where the value changes; None from a gap or the end on.

        This is the piecewise-constant form the stream's emissions kernel takes.
        """
        points: list[tuple[int, float | None]] = []
        previous: int | None = None
        for hour in sorted(self.by_epoch_hour):
            if previous is not None and hour != previous + 1:
                points.append(((previous + 1) * 60, None))
            points.append((hour * 60, self.by_epoch_hour[hour]))
            previous = hour
        if previous is not None:
            points.append(((previous + 1) * 60, None))
        return points


def _epoch_hour(when: datetime) -> int:
    if when.tzinfo is None:
        raise FactorInputError("time must be timezone-aware (UTC)")
    return int(when.timestamp()) // SECONDS_PER_HOUR


class _Problems:
    """Collects problems up to a limit, so one broken file gives one readable error."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[FormatProblem] = []
        self.truncated = False

    def add(self, line: int, column: str | None, message: str) -> None:
        if len(self.items) >= self.limit:
            self.truncated = True
            return
        number = HEADER.index(column) + 1 if column in HEADER else None
        self.items.append(FormatProblem(line, number, column, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise GridSeriesFormatError(self.items, self.truncated)


def _is_blank(fields: list[str]) -> bool:
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _read_rows(text: str, problems: _Problems) -> list[tuple[int, _Row]]:
    """(line, validated row) of every well-formed data row; problems for the others."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    rows: list[tuple[int, _Row]] = []
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            problems.add(1, None, f"header must be exactly {','.join(HEADER)}")
            return rows
        for fields in reader:
            line = reader.line_num
            if _is_blank(fields):
                continue
            if len(fields) != len(HEADER):
                problems.add(line, None, f"expected {len(HEADER)} fields, found {len(fields)}")
                continue
            try:
                rows.append((line, _Row.model_validate(dict(zip(HEADER, fields, strict=True)))))
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    column = str(error["loc"][0]) if error["loc"] else None
                    problems.add(line, column, error["msg"])
    except csv.Error as exc:
        # Unbalanced quotes and the like: the rest of the file cannot be split reliably.
        problems.add(reader.line_num, None, f"malformed CSV: {exc}")
    return rows


def parse_grid_intensity_csv(
    text: str, *, allow_gaps: bool = False, max_problems: int = 50
) -> GridIntensityFile:
    """Validate an hourly grid-intensity file (see the module docstring for the format).

    Raises ``GridSeriesFormatError`` listing every problem (up to ``max_problems``) with its
    line and column: malformed header or rows, bad values, duplicate hours, and gaps unless
    ``allow_gaps`` is set (then the gaps are returned with the rows).
    """
    problems = _Problems(max_problems)
    rows = _read_rows(text, problems)

    first_line: dict[tuple[str, int], int] = {}
    parsed: list[HourlyIntensity] = []
    for line, row in rows:
        key = (row.region_code, _epoch_hour(row.hour_start))
        if key in first_line:
            problems.add(
                line,
                "hour_start",
                f"duplicate: {row.region_code} {row.hour_start.isoformat()} already on line "
                f"{first_line[key]}",
            )
            continue
        first_line[key] = line
        parsed.append(
            HourlyIntensity(row.region_code, row.hour_start, row.kgco2e_per_kwh, row.source, line)
        )

    parsed.sort(key=lambda r: (r.region_code, r.hour_start))
    gaps: list[HourGap] = []
    for before, after in itertools.pairwise(parsed):
        if before.region_code != after.region_code:
            continue
        missing = int((after.hour_start - before.hour_start).total_seconds()) // 3600 - 1
        if missing <= 0:
            continue
        gap = HourGap(
            after.region_code,
            before.hour_start + timedelta(hours=1),
            after.hour_start - timedelta(hours=1),
        )
        if allow_gaps:
            gaps.append(gap)
        else:
            problems.add(
                after.line,
                "hour_start",
                f"gap: no rows for {gap.region_code} from {gap.first_missing.isoformat()} to "
                f"{gap.last_missing.isoformat()} ({missing} h) before this row",
            )
    problems.raise_if_any()
    return GridIntensityFile(tuple(parsed), tuple(gaps))
