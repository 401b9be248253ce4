"""Scope 2 location-based emissions of energy intervals, minute by minute (pure).

Each electricity device takes its site's grid factor for the local calendar day a minute
falls in (``carbonflow.factors.selection``: grid region, then country, then global; a
proxy when nothing is published for the day yet). The factors become a piecewise-constant
series per device, one breakpoint per local midnight, and the emissions kernel multiplies.
Every row names the factor id and version it used and whether that was a proxy; minutes
no factor can price are returned as such, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo

import numpy as np

from carbonflow.factors.codes import GwpSet
from carbonflow.factors.errors import FactorError
from carbonflow.factors.selection import FactorMatch, FactorVersion, Level, region_chain, select
from services.stream.emission_kernels import NO_FACTOR, emissions_by_interval
from services.stream.energy import EnergyIntervals
from services.stream.local_days import local_days, local_midnight_minute, minutes_on

SCOPE2 = "scope2"
LOCATION_METHOD = "scope2_location_annual"
ELECTRICITY = "electricity"
#: Grid factors give CO2 (most grids) or CO2e (some); both are applied as kgCO2e per kWh.
GRID_GASES = ("CO2e", "CO2")
_LEVEL_RANK = {Level.GRID_REGION: 0, Level.COUNTRY: 1, Level.GLOBAL: 2}


@dataclass(frozen=True, slots=True)
class DeviceSite:
    """What pricing a device's energy needs to know about where it is."""

    device_id: str
    carrier: str
    timezone: str
    grid_region: str
    country: str
    # The organisation's GWP set, for Scope 1 CH4 and N2O (organisations.gwp_set).
    gwp_set: GwpSet = GwpSet.AR6


@dataclass(frozen=True, slots=True)
class EmissionRows:
    """Columns of emissions_1m rows of one scope and method."""

    scope: str
    method: str
    device_id: list[str]
    minute: list[int]
    factor_id: list[str]
    factor_version: list[int]
    proxy: list[bool]
    kwh: list[float]
    kg_co2e: list[float]
    coverage: list[float]

    def __len__(self) -> int:
        return len(self.minute)


@dataclass(frozen=True, slots=True)
class Unpriced:
    """Minutes of a device's local day that no factor could price, and why."""

    device_id: str
    day: date
    minutes: int
    reason: str


def grid_factor(candidates: Sequence[FactorVersion], site: DeviceSite, day: date) -> FactorMatch:
    """The grid factor for a device's site on a local day. Of the CO2e and the CO2 series
    the one found nearer the site wins (grid region, then country, then global); a factor in
    force beats a proxy; at a tie, CO2e (it covers more gases)."""
    chain = region_chain(site.grid_region, site.country)
    found: list[FactorMatch] = []
    problems: list[str] = []
    for gas in GRID_GASES:
        of_gas = [c for c in candidates if c.gas == gas]
        if not of_gas:
            continue
        try:
            found.append(select(of_gas, chain, day))
        except FactorError as exc:
            problems.append(f"{gas}: {exc}")
    if not found:
        regions = ", ".join(code for code, _ in chain)
        raise FactorError("; ".join(problems) or f"no grid factor for {regions}")
    return min(found, key=lambda m: (m.proxy, _LEVEL_RANK[m.level], GRID_GASES.index(m.factor.gas)))


def scope2_location(
    intervals: EnergyIntervals,
    sites: Mapping[str, DeviceSite],
    candidates: Sequence[FactorVersion],
) -> tuple[EmissionRows, list[Unpriced]]:
    """Emissions of the electricity devices' intervals; ``candidates``: every version of the
    grid electricity factors (standard variant) of the regions the sites may need."""
    order: dict[str, list[int]] = {}
    for index, device_id in enumerate(intervals.device_id):
        site = sites.get(device_id)
        if site is not None and site.carrier == ELECTRICITY:
            order.setdefault(device_id, []).append(index)
    devices = sorted(order)
    rows = np.fromiter((i for device_id in devices for i in order[device_id]), dtype=np.int64)
    minutes = np.asarray(intervals.minute, dtype=np.int64)[rows]
    kwh = np.asarray(intervals.kwh, dtype=np.float64)[rows]
    interval_starts = np.zeros(len(devices) + 1, dtype=np.int64)
    np.cumsum([len(order[d]) for d in devices], out=interval_starts[1:])

    matches: list[FactorMatch] = []
    match_index: dict[tuple[str, int], int] = {}
    bp_minute: list[int] = []
    bp_value: list[float] = []
    bp_factor: list[int] = []
    bp_starts = [0]
    unpriced: list[Unpriced] = []
    for g, device_id in enumerate(devices):
        site = sites[device_id]
        zone = ZoneInfo(site.timezone)
        own = minutes[interval_starts[g] : interval_starts[g + 1]]
        for day in local_days(own, zone):
            try:
                match = grid_factor(candidates, site, day)
                value = _kg_per_kwh(match.factor)
            except FactorError as exc:
                count = minutes_on(own, day, zone)
                unpriced.append(Unpriced(device_id, day, count, str(exc)))
                bp_minute.append(local_midnight_minute(day, zone))
                bp_value.append(float("nan"))
                bp_factor.append(NO_FACTOR)
                continue
            key = (match.factor_id, match.version)
            if key not in match_index:
                match_index[key] = len(matches)
                matches.append(match)
            bp_minute.append(local_midnight_minute(day, zone))
            bp_value.append(value)
            bp_factor.append(match_index[key])
        bp_starts.append(len(bp_minute))
    result = emissions_by_interval(
        minutes,
        kwh,
        interval_starts,
        np.asarray(bp_minute, dtype=np.int64),
        np.asarray(bp_value, dtype=np.float64),
        np.asarray(bp_factor, dtype=np.int64),
        np.asarray(bp_starts, dtype=np.int64),
    )
    priced = result.factor_index != NO_FACTOR
    group_of = np.repeat(np.arange(len(devices)), np.diff(interval_starts))
    coverage = np.asarray(intervals.coverage, dtype=np.float64)[rows]
    used = [matches[i] for i in result.factor_index[priced].tolist()]
    return (
        EmissionRows(
            scope=SCOPE2,
            method=LOCATION_METHOD,
            device_id=[devices[g] for g in group_of[priced].tolist()],
            minute=minutes[priced].tolist(),
            factor_id=[m.factor_id for m in used],
            factor_version=[m.version for m in used],
            proxy=[m.proxy for m in used],
            kwh=kwh[priced].tolist(),
            kg_co2e=result.kg_co2e[priced].tolist(),
            coverage=coverage[priced].tolist(),
        ),
        unpriced,
    )


def _kg_per_kwh(factor: FactorVersion) -> float:
    if not factor.unit.endswith("/kWh") or not factor.unit.startswith("kg"):
        raise FactorError(f"{factor.factor_id}: a grid factor in {factor.unit}, not kg per kWh")
    return float(factor.value)
