"""Scope 2, market-based (GHG Protocol Scope 2 Guidance): contractual instruments first.

Instruments: energy attribute certificates (China GECs, I-RECs, GOs, RECs), power purchase
agreements, and supplier-specific emission factors (including green tariffs). Each has a
validity period [start, end), a volume in kWh (a supplier factor may instead cover all
consumption in its period) and an emission factor (0 for renewable certificates). What no
instrument covers takes the residual-mix factor (where none is published, the grid factor
that excludes market-traded non-fossil electricity is the closest substitute, e.g. China's
"national average excluding market-traded non-fossil electricity").

Allocation rule, applied to consumption intervals in time order (earliest first):

1. An instrument can cover an interval only if the interval lies wholly inside its period.
2. Certificates and PPAs with volume left come first, the one whose period ends earliest
   first (so no volume expires unused while another instrument could have covered the same
   consumption), ties by instrument id. Each covers as much as its remaining volume allows.
3. Then supplier-specific factors: those with a volume first (same order), then the single
   supplier factor covering all consumption of its period. Two such all-consumption supplier
   factors with overlapping periods are ambiguous and refused.
4. Whatever is left takes the residual-mix factor.

The result gives, per interval, the kWh each instrument covered and the residual, and per
instrument its covered and remaining volume, so every kgCO2e traces to an instrument or to
the residual factor (by id and version).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from carbonflow.emissions.errors import AllocationError, FactorInputError
from carbonflow.emissions.factors import FactorRef, GridFactor, check_coverage
from carbonflow.emissions.results import EmissionRow, GasAmount, Method, unique_refs
from carbonflow.emissions.scope2_location import check_kwh
from carbonflow.emissions.units import Gas


class InstrumentKind(StrEnum):
    CERTIFICATE = "certificate"  # energy attribute certificate: GEC, I-REC, GO, REC
    PPA = "ppa"
    SUPPLIER = "supplier"  # supplier-specific factor or green tariff


def _check_period(start: datetime, end: datetime, what: str) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise FactorInputError(f"{what}: times must be timezone-aware")
    if end <= start:
        raise FactorInputError(f"{what}: must end after it starts")


@dataclass(frozen=True, slots=True)
class ContractualInstrument:
    """One instrument; ``ref`` is its id and version, and names its emission factor."""

    ref: FactorRef
    kind: InstrumentKind
    period_start: datetime
    period_end: datetime  # exclusive
    volume_kwh: float | None  # None: all consumption in the period (supplier factors only)
    kg_co2e_per_kwh: float

    def __post_init__(self) -> None:
        _check_period(self.period_start, self.period_end, str(self.ref))
        if self.volume_kwh is None:
            if self.kind is not InstrumentKind.SUPPLIER:
                raise FactorInputError(f"{self.ref}: a {self.kind} needs a volume in kWh")
        elif not math.isfinite(self.volume_kwh) or self.volume_kwh < 0:
            raise FactorInputError(f"{self.ref}: volume must be a finite, non-negative kWh")
        if not math.isfinite(self.kg_co2e_per_kwh) or self.kg_co2e_per_kwh < 0:
            raise FactorInputError(f"{self.ref}: emission factor must be finite and >= 0")

    def covers(self, start: datetime, end: datetime) -> bool:
        return self.period_start <= start and end <= self.period_end


@dataclass(frozen=True, slots=True)
class ConsumptionInterval:
    """Electricity used in [start, end), with the measured fraction of that interval."""

    start: datetime
    end: datetime
    kwh: float
    coverage: float

    def __post_init__(self) -> None:
        _check_period(self.start, self.end, "consumption interval")
        check_kwh(self.kwh)
        check_coverage(self.coverage)


@dataclass(frozen=True, slots=True)
class Allocation:
    """kWh of one interval covered by an instrument, or by the residual mix (kind None)."""

    ref: FactorRef
    kind: InstrumentKind | None
    kwh: float
    kg_co2e: float


@dataclass(frozen=True, slots=True)
class MarketIntervalResult:
    interval: ConsumptionInterval
    allocations: tuple[Allocation, ...]
    row: EmissionRow

    @property
    def residual_kwh(self) -> float:
        return sum(a.kwh for a in self.allocations if a.kind is None)


@dataclass(frozen=True, slots=True)
class InstrumentUse:
    """How much of an instrument was used; ``remaining_kwh`` is None for unlimited ones."""

    ref: FactorRef
    kind: InstrumentKind
    covered_kwh: float
    remaining_kwh: float | None


@dataclass(frozen=True, slots=True)
class MarketBasedResult:
    intervals: tuple[MarketIntervalResult, ...]
    instruments: tuple[InstrumentUse, ...]
    residual_factor: FactorRef
    residual_kwh: float
    kwh: float
    kg_co2e: float


def _check_suppliers(instruments: Sequence[ContractualInstrument]) -> None:
    unlimited = [
        i for i in instruments if i.kind is InstrumentKind.SUPPLIER and i.volume_kwh is None
    ]
    for a, b in itertools.combinations(unlimited, 2):
        if a.period_start < b.period_end and b.period_start < a.period_end:
            raise AllocationError(
                f"supplier factors {a.ref} and {b.ref} both cover all consumption in "
                "overlapping periods; say which one applies"
            )


def _order(instrument: ContractualInstrument) -> tuple[int, datetime, str, int]:
    """Allocation order: stage (see module docstring), then earliest period end, then id."""
    if instrument.kind is not InstrumentKind.SUPPLIER:
        stage = 0
    elif instrument.volume_kwh is not None:
        stage = 1
    else:
        stage = 2
    return (stage, instrument.period_end, instrument.ref.factor_id, instrument.ref.version)


def allocate_market_based(
    consumption: Sequence[ConsumptionInterval],
    instruments: Sequence[ContractualInstrument],
    residual: GridFactor,
) -> MarketBasedResult:
    """Allocate consumption to instruments and the residual mix (rule in module docstring)."""
    refs = [i.ref for i in instruments]
    if len(set(refs)) != len(refs):
        raise AllocationError("each instrument (id and version) may appear only once")
    _check_suppliers(instruments)
    ordered = sorted(instruments, key=_order)
    remaining: dict[FactorRef, float | None] = {i.ref: i.volume_kwh for i in ordered}
    covered: dict[FactorRef, float] = {i.ref: 0.0 for i in ordered}

    results: list[MarketIntervalResult] = []
    for interval in sorted(consumption, key=lambda c: (c.start, c.end)):
        left = interval.kwh
        allocations: list[Allocation] = []
        for instrument in ordered:
            if left <= 0.0:
                break
            volume = remaining[instrument.ref]
            if not instrument.covers(interval.start, interval.end) or volume == 0.0:
                continue
            take = left if volume is None else min(left, volume)
            if volume is not None:
                remaining[instrument.ref] = volume - take
            covered[instrument.ref] += take
            left -= take
            allocations.append(
                Allocation(instrument.ref, instrument.kind, take, take * instrument.kg_co2e_per_kwh)
            )
        if left > 0.0 or not allocations:  # a row always names the factor behind it
            allocations.append(Allocation(residual.ref, None, left, left * residual.kg_per_kwh))
        results.append(_interval_result(interval, allocations, residual))

    total_kg = sum(r.row.kg_co2e for r in results)
    return MarketBasedResult(
        intervals=tuple(results),
        instruments=tuple(
            InstrumentUse(i.ref, i.kind, covered[i.ref], remaining[i.ref]) for i in ordered
        ),
        residual_factor=residual.ref,
        residual_kwh=sum(r.residual_kwh for r in results),
        kwh=sum(c.kwh for c in consumption),
        kg_co2e=total_kg,
    )


def _interval_result(
    interval: ConsumptionInterval, allocations: list[Allocation], residual: GridFactor
) -> MarketIntervalResult:
    by_gas: dict[Gas, float] = {}
    for a in allocations:
        # Instruments state kgCO2e; the residual factor keeps its own basis (CO2 or CO2e).
        gas = residual.gas if a.kind is None else Gas.CO2E
        by_gas[gas] = by_gas.get(gas, 0.0) + a.kg_co2e
    row = EmissionRow(
        method=Method.SCOPE2_MARKET,
        kg_co2e=sum(a.kg_co2e for a in allocations),
        gases=tuple(GasAmount(g, kg, kg) for g, kg in by_gas.items()),
        factors=unique_refs(*(a.ref for a in allocations)),
        coverage=interval.coverage,
    )
    return MarketIntervalResult(interval, tuple(allocations), row)
