"""Scope 2 market-based per site and local month (pure): instruments in the site's calendar,
the residual factor, and the month's figure from ``carbonflow.emissions.allocate_market_based``.

Rules (the allocation order itself is in ``carbonflow.emissions.scope2_market``):

* Consumption: the site's electricity devices' energy_1m, summed per local hour of the
  local month; each hour is one consumption interval (coverage: measured share of it).
* Instruments: those held by the site, and those held by its organisation. An instrument's
  period (calendar dates) starts and ends at local midnight of the site. Its volume is what
  is left after the current figures of earlier months used it, and, within the month, after
  the organisation's sites before this one in site-id order used it: a kWh of an instrument
  is never counted twice, and earlier consumption is covered first.
* Residual factor, for what no instrument covers, searched in the site's grid region, then
  country, then globally, for the month's first day:

  1. a published residual mix (factor variant ``residual_mix``);
  2. else a grid factor that excludes market-traded non-fossil electricity (variant
     ``excl_market_non_fossil``; China publishes one nationally instead of a residual mix);
  3. else the location-based grid factor (variant ``standard``), as the GHG Protocol Scope 2
     Guidance permits where no residual mix exists; the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from carbonflow.emissions import (
    ConsumptionInterval,
    ContractualInstrument,
    FactorRef,
    GridFactor,
    IntensityUnit,
    MarketBasedResult,
    allocate_market_based,
)
from carbonflow.factors.errors import FactorError
from carbonflow.factors.selection import FactorMatch, FactorVersion
from carbonflow.instruments import InstrumentVersion
from services.stream.emissions import ELECTRICITY, DeviceSite, grid_factor

#: Residual bases in the order they are tried (factor variants).
RESIDUAL_BASES = ("residual_mix", "excl_market_non_fossil", "standard")
#: Remaining volume below this (a milliwatt-hour) counts as used up.
USED_UP_KWH = 1e-6
BASIS_NAMES = {
    "residual_mix": "residual_mix",
    "excl_market_non_fossil": "excl_market_non_fossil",
    "standard": "location_grid",
}


@dataclass(frozen=True, slots=True)
class MarketSite:
    site_id: str
    org_id: str
    timezone: str
    grid_region: str
    country: str

    def for_grid_lookup(self) -> DeviceSite:
        """The shape the grid factor search takes (it reads region, country and zone)."""
        return DeviceSite(self.site_id, ELECTRICITY, self.timezone, self.grid_region, self.country)


@dataclass(frozen=True, slots=True)
class Residual:
    factor: GridFactor
    basis: str  # residual_mix | excl_market_non_fossil | location_grid
    proxy: bool
    note: str


@dataclass(frozen=True, slots=True)
class InstrumentShare:
    ref: FactorRef
    kind: str
    kwh: float
    kg_co2e: float


@dataclass(frozen=True, slots=True)
class MarketMonth:
    """A site's market-based Scope 2 for one local month."""

    site_id: str
    month: date
    kwh: float
    kg_co2e: float
    coverage: float
    instruments: tuple[InstrumentShare, ...]
    residual: Residual
    residual_kwh: float
    residual_kg_co2e: float

    @property
    def instrument_kwh(self) -> float:
        return sum(s.kwh for s in self.instruments)


def parse_month(text: str) -> date:
    """``YYYY-MM`` -> the month's first day."""
    try:
        return datetime.strptime(text.strip(), "%Y-%m").date()
    except ValueError:
        raise ValueError(f"not a month (YYYY-MM): {text!r}") from None


def next_month(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1)


def local_midnight(day: date, zone: str) -> datetime:
    return datetime.combine(day, time.min, ZoneInfo(zone))


def month_bounds(month: date, zone: str) -> tuple[datetime, datetime]:
    """[start, end) of a calendar month in a time zone (DST-safe: real local midnights)."""
    return local_midnight(month, zone), local_midnight(next_month(month), zone)


def month_minutes(month: date, zone: str) -> float:
    start, end = month_bounds(month, zone)
    return (end - start).total_seconds() / 60.0


def applies(instrument: InstrumentVersion, site: MarketSite, month: date) -> bool:
    """Held by the site or its organisation, with a period that meets the month."""
    held = instrument.site_id == site.site_id or instrument.org_id == site.org_id
    return held and instrument.first_day < next_month(month) and month < instrument.until_day


def contractual(instrument: InstrumentVersion, zone: str, used_kwh: float) -> ContractualInstrument:
    """The instrument in the site's calendar, with the volume others have not used yet."""
    volume = None
    if instrument.volume_kwh is not None:
        volume = float(instrument.volume_kwh) - used_kwh
        # What float sums of many intervals leave over is not a volume still to allocate.
        volume = 0.0 if volume < USED_UP_KWH else volume
    return ContractualInstrument(
        ref=FactorRef(instrument.instrument_id, instrument.version),
        kind=instrument.kind,
        period_start=local_midnight(instrument.first_day, zone),
        period_end=local_midnight(instrument.until_day, zone),
        volume_kwh=volume,
        kg_co2e_per_kwh=float(instrument.kg_co2e_per_kwh),
    )


def residual_factor(
    candidates: Mapping[str, Sequence[FactorVersion]], site: MarketSite, day: date
) -> Residual:
    """The residual factor by the order in the module docstring; ``candidates``: grid
    electricity factor versions per variant."""
    problems: list[str] = []
    for variant in RESIDUAL_BASES:
        try:
            match = grid_factor(candidates.get(variant, ()), site.for_grid_lookup(), day)
        except FactorError as exc:
            problems.append(f"{variant}: {exc}")
            continue
        return Residual(
            factor=_grid(match),
            basis=BASIS_NAMES[variant],
            proxy=match.proxy,
            note=_note(variant, match),
        )
    raise FactorError("no residual factor: " + "; ".join(problems))


def _grid(match: FactorMatch) -> GridFactor:
    factor = match.factor
    try:
        unit = IntensityUnit(factor.unit)
    except ValueError as exc:
        raise FactorError(f"{factor.factor_id}: {factor.unit} is not a grid intensity") from exc
    return GridFactor(FactorRef(factor.factor_id, factor.version), float(factor.value), unit)


def _note(variant: str, match: FactorMatch) -> str:
    if variant == "residual_mix":
        lead = "residual mix"
    elif variant == "excl_market_non_fossil":
        lead = (
            "no residual mix published: grid factor excluding market-traded non-fossil "
            "electricity used instead"
        )
    else:
        lead = (
            "no residual mix published: location-based grid factor used instead "
            "(GHG Protocol Scope 2 Guidance)"
        )
    return f"{lead}; {match.note}"


def market_month(
    site: MarketSite,
    month: date,
    consumption: Sequence[ConsumptionInterval],
    instruments: Sequence[ContractualInstrument],
    residual: Residual,
    covered_minutes: float,
    devices: int,
) -> tuple[MarketMonth, MarketBasedResult]:
    """Allocate the month and sum it up."""
    result = allocate_market_based(consumption, instruments, residual.factor)
    shares: dict[FactorRef, list[float]] = {}
    kinds: dict[FactorRef, str] = {}
    residual_kwh = residual_kg = 0.0
    for interval in result.intervals:
        for allocation in interval.allocations:
            if allocation.kind is None:
                residual_kwh += allocation.kwh
                residual_kg += allocation.kg_co2e
                continue
            share = shares.setdefault(allocation.ref, [0.0, 0.0])
            share[0] += allocation.kwh
            share[1] += allocation.kg_co2e
            kinds[allocation.ref] = allocation.kind.value
    expected = devices * month_minutes(month, site.timezone)
    coverage = min(covered_minutes / expected, 1.0) if expected > 0 else 0.0
    figure = MarketMonth(
        site_id=site.site_id,
        month=month,
        kwh=result.kwh,
        kg_co2e=result.kg_co2e,
        coverage=coverage if math.isfinite(coverage) else 0.0,
        instruments=tuple(
            InstrumentShare(ref, kinds[ref], kwh, kg) for ref, (kwh, kg) in sorted(shares.items())
        ),
        residual=residual,
        residual_kwh=residual_kwh,
        residual_kg_co2e=residual_kg,
    )
    return figure, result
