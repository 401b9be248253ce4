"""Scope 2 location-based emissions from hourly grid-intensity series, minute by minute (pure).

Rule, per electricity device:

1. The series that apply are those loaded for the site's grid region; if there are none, those
   for its country. Of each series only its latest version counts (``factor_version``).
2. A minute inside a series' span (its first hour to the end of its last) is priced with
   that hour's value: method ``scope2_location_hourly``, ``factor_id`` = series id,
   ``factor_version`` = series version. The series becomes one breakpoint per hour for the
   emissions kernel.
3. A minute inside the span but in a gap of the series (an hour the file did not have) is not
   priced, and not filled from anything else: it is reported with the series and the gap.
   So is a minute that two different series of the region both span (ambiguous).
4. A minute outside every span (before the first load, or live data after the last hour) is
   handed back, to be priced from the annual factors (``services.stream.emissions``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from carbonflow.emissions.factors import FactorRef
from carbonflow.emissions.grid_series import HourlyGridSeries
from carbonflow.emissions.results import Method
from services.stream.emission_kernels import NO_FACTOR, emissions_by_interval
from services.stream.emissions import ELECTRICITY, SCOPE2, DeviceSite, EmissionRows
from services.stream.energy import EnergyIntervals

HOURLY_METHOD = Method.SCOPE2_LOCATION_HOURLY.value
MINUTES_PER_HOUR = 60


@dataclass(frozen=True, slots=True)
class LoadedSeries:
    """One loaded version of a series: its values (at least for the hours asked for) and
    its whole span [first_minute, end_minute) in epoch minutes."""

    series: HourlyGridSeries
    first_minute: int
    end_minute: int

    @property
    def ref(self) -> FactorRef:
        return self.series.ref

    @property
    def region_code(self) -> str:
        return self.series.region_code

    def spans(self, minutes: NDArray[np.int64]) -> NDArray[np.bool_]:
        return (minutes >= self.first_minute) & (minutes < self.end_minute)


@dataclass(frozen=True, slots=True)
class HourlyUnpriced:
    """Minutes of a device inside a series' span that it could not price, and why."""

    device_id: str
    series: tuple[FactorRef, ...]
    first_minute: int
    last_minute: int
    minutes: int
    reason: str


@dataclass(frozen=True, slots=True)
class HourlyPricing:
    rows: EmissionRows  # priced by a series
    rest: EnergyIntervals  # outside every span: for the annual factors
    unpriced: list[HourlyUnpriced]

    @property
    def unpriced_minutes(self) -> int:
        return sum(u.minutes for u in self.unpriced)


def applicable_series(site: DeviceSite, loaded: Sequence[LoadedSeries]) -> list[LoadedSeries]:
    """The latest version of each series for the site's grid region, else its country."""
    for region in (site.grid_region, site.country):
        latest: dict[str, LoadedSeries] = {}
        for candidate in loaded:
            if candidate.region_code.casefold() != region.casefold():
                continue
            current = latest.get(candidate.ref.factor_id)
            if current is None or candidate.ref.version > current.ref.version:
                latest[candidate.ref.factor_id] = candidate
        if latest:
            return sorted(latest.values(), key=lambda s: (s.first_minute, s.ref.factor_id))
    return []


def scope2_location_hourly(
    intervals: EnergyIntervals,
    sites: Mapping[str, DeviceSite],
    loaded: Sequence[LoadedSeries],
) -> HourlyPricing:
    """Price the electricity devices' minutes with the hourly series (rule in the module
    docstring); ``loaded``: series of the sites' regions covering the minutes' hours."""
    minute_all = np.asarray(intervals.minute, dtype=np.int64)
    kwh_all = np.asarray(intervals.kwh, dtype=np.float64)
    by_device: dict[str, list[int]] = {}
    for index, device_id in enumerate(intervals.device_id):
        site = sites.get(device_id)
        if site is not None and site.carrier == ELECTRICITY:
            by_device.setdefault(device_id, []).append(index)

    outside = np.ones(len(minute_all), dtype=bool)  # not in any span: for the annual path
    groups: list[tuple[str, NDArray[np.int64]]] = []
    refs: list[FactorRef] = []
    bp_minute: list[int] = []
    bp_value: list[float] = []
    bp_factor: list[int] = []
    bp_starts = [0]
    unpriced: list[HourlyUnpriced] = []
    for device_id in sorted(by_device):
        rows = np.asarray(by_device[device_id], dtype=np.int64)
        minutes = minute_all[rows]
        chosen = applicable_series(sites[device_id], loaded)
        spanned = np.zeros(len(rows), dtype=bool)
        for s in chosen:
            spanned |= s.spans(minutes)
        if not spanned.any():
            continue
        outside[rows[spanned]] = False
        overlap = _overlapping(chosen)
        if overlap:
            ids = tuple(s.ref for s in overlap)
            unpriced.extend(
                _runs(
                    device_id,
                    ids,
                    minutes[spanned],
                    "series " + ", ".join(map(str, ids)) + " all cover these hours of "
                    f"{overlap[0].region_code}; keep one",
                )
            )
            continue
        groups.append((device_id, rows[spanned]))
        for s in chosen:
            points = s.series.breakpoints()
            # The previous series ends where this one starts: its end marker goes.
            if len(bp_minute) > bp_starts[-1] and points and bp_minute[-1] >= points[0][0]:
                del bp_minute[-1], bp_value[-1], bp_factor[-1]
            refs.append(s.ref)
            for minute, value in points:
                bp_minute.append(minute)
                bp_value.append(float("nan") if value is None else value)
                bp_factor.append(NO_FACTOR if value is None else len(refs) - 1)
        bp_starts.append(len(bp_minute))

    rows_priced = np.concatenate([r for _, r in groups]) if groups else np.zeros(0, dtype=np.int64)
    interval_starts = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum([len(r) for _, r in groups], out=interval_starts[1:])
    result = emissions_by_interval(
        minute_all[rows_priced],
        kwh_all[rows_priced],
        interval_starts,
        np.asarray(bp_minute, dtype=np.int64),
        np.asarray(bp_value, dtype=np.float64),
        np.asarray(bp_factor, dtype=np.int64),
        np.asarray(bp_starts, dtype=np.int64),
    )
    device_of = np.repeat(np.arange(len(groups)), np.diff(interval_starts))
    priced = result.factor_index != NO_FACTOR
    for g, (device_id, _) in enumerate(groups):
        missing = (device_of == g) & ~priced
        if missing.any():
            spanning = tuple(s.ref for s in applicable_series(sites[device_id], loaded))
            unpriced.extend(
                _runs(
                    device_id,
                    spanning,
                    minute_all[rows_priced[missing]],
                    "gap in the hourly series: no value for these hours (not filled)",
                )
            )
    chosen_rows = rows_priced[priced]
    used = [refs[i] for i in result.factor_index[priced].tolist()]
    coverage = np.asarray(intervals.coverage, dtype=np.float64)
    emission_rows = EmissionRows(
        scope=SCOPE2,
        method=HOURLY_METHOD,
        device_id=[groups[g][0] for g in device_of[priced].tolist()],
        minute=minute_all[chosen_rows].tolist(),
        factor_id=[r.factor_id for r in used],
        factor_version=[r.version for r in used],
        proxy=[False] * len(used),
        kwh=kwh_all[chosen_rows].tolist(),
        kg_co2e=result.kg_co2e[priced].tolist(),
        coverage=coverage[chosen_rows].tolist(),
    )
    keep = np.flatnonzero(outside).tolist()
    rest = EnergyIntervals(
        device_id=[intervals.device_id[i] for i in keep],
        minute=[intervals.minute[i] for i in keep],
        kwh=[intervals.kwh[i] for i in keep],
        sample_count=[intervals.sample_count[i] for i in keep],
        coverage=[intervals.coverage[i] for i in keep],
    )
    return HourlyPricing(emission_rows, rest, unpriced)


def _overlapping(chosen: Sequence[LoadedSeries]) -> list[LoadedSeries]:
    """Series (sorted by start) whose spans overlap another's; empty when none do."""
    clash: dict[FactorRef, LoadedSeries] = {}
    for before, after in itertools.pairwise(chosen):
        if after.first_minute < before.end_minute:
            clash[before.ref] = before
            clash[after.ref] = after
    return list(clash.values())


def _runs(
    device_id: str, series: tuple[FactorRef, ...], minutes: NDArray[np.int64], reason: str
) -> list[HourlyUnpriced]:
    """One report per run of consecutive hours, so a gap reads as the hours it is."""
    if not len(minutes):
        return []
    ordered = np.sort(minutes)
    hours = ordered // MINUTES_PER_HOUR
    breaks = np.flatnonzero(np.diff(hours) > 1) + 1
    return [
        HourlyUnpriced(device_id, series, int(run[0]), int(run[-1]), len(run), reason)
        for run in np.split(ordered, breaks)
    ]
