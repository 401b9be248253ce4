"""Scope 2, location-based: electricity used times the intensity of the grid it came from.

Two sources of grid intensity:

* an annual (or other period) regional/national average, e.g. China's MEE/NBS regional
  factors -> method ``scope2_location_annual``;
* an hourly series for the site's grid region, where one is loaded (format in
  ``carbonflow.emissions.grid_series``) -> method ``scope2_location_hourly``. The series
  version is the factor reference; the interval's hour picks the value within it.

Choosing which factor applies to a site and a time is the factor registry's job; these
functions only compute, and say which factor they used.
"""

from __future__ import annotations

import math
from datetime import datetime

from carbonflow.emissions.errors import FactorInputError
from carbonflow.emissions.factors import GridFactor, check_coverage
from carbonflow.emissions.grid_series import SECONDS_PER_HOUR, HourlyGridSeries
from carbonflow.emissions.results import EmissionRow, GasAmount, Method
from carbonflow.emissions.units import Gas


def check_kwh(kwh: float) -> float:
    """An energy figure in kWh: finite and not negative."""
    if not math.isfinite(kwh) or kwh < 0.0:
        raise FactorInputError(f"energy must be a finite, non-negative kWh figure, got {kwh!r}")
    return kwh


def scope2_location_annual(kwh: float, factor: GridFactor, *, coverage: float) -> EmissionRow:
    """Emissions of ``kwh`` of grid electricity under a period-average grid factor."""
    check_kwh(kwh)
    check_coverage(coverage)
    kg = kwh * factor.kg_per_kwh
    return EmissionRow(
        method=Method.SCOPE2_LOCATION_ANNUAL,
        kg_co2e=kg,
        gases=(GasAmount(factor.gas, kg, kg),),
        factors=(factor.ref,),
        coverage=coverage,
    )


def scope2_location_hourly(
    kwh: float,
    interval_start: datetime,
    interval_end: datetime,
    series: HourlyGridSeries,
    *,
    coverage: float,
) -> EmissionRow:
    """Emissions of ``kwh`` used in [interval_start, interval_end) under an hourly series.

    The interval must lie within one UTC hour (energy intervals are minutes or hours);
    split longer ones first, since one value per hour is the series' resolution.
    """
    check_kwh(kwh)
    check_coverage(coverage)
    if interval_start.tzinfo is None or interval_end.tzinfo is None:
        # A naive time would be read in the machine's zone: refuse rather than guess.
        raise FactorInputError("interval times must be timezone-aware")
    start_s, end_s = interval_start.timestamp(), interval_end.timestamp()
    if end_s <= start_s:
        raise FactorInputError("interval must end after it starts")
    hour_end_s = (start_s // SECONDS_PER_HOUR + 1) * SECONDS_PER_HOUR
    if end_s > hour_end_s:
        raise FactorInputError("interval crosses an hour boundary; split it by hour first")
    kg = kwh * series.intensity_at(interval_start)
    return EmissionRow(
        method=Method.SCOPE2_LOCATION_HOURLY,
        kg_co2e=kg,
        gases=(GasAmount(Gas.CO2E, kg, kg),),
        factors=(series.ref,),
        coverage=coverage,
    )
