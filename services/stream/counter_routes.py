"""Which readings make which intervals, by each device's registered metric (pure).

A device registered with ``active_power`` gets its energy by integrating power (trapezoid); one
registered with a cumulative metric gets its intervals from the deltas of that register
(``services.stream.counter_intervals``): ``active_energy_import`` (Wh) makes energy_1m rows,
``gas_volume`` (m3) and ``fuel_mass`` (kg) make fuel_1m rows. Other metrics a device reports
alongside (a power reading from an energy meter, say) are stored but make no intervals, so one
device never has two sources for one minute.

Register parameters: a device's own (table device_counters) where set, else its metric's
default (table counter_defaults), else none: no rollover, no rate limit, resolution 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from schemas import ReadingsRecord
from services.stream.counter_intervals import COUNTER_METRICS, CounterIntervals, CounterRegister
from services.stream.counters import COUNTER_DELTA_METHOD
from services.stream.energy import POWER_METRIC, EnergyIntervals

ENERGY_COUNTER_METRIC = "active_energy_import"
FUEL_COUNTER_METRICS = frozenset({"gas_volume", "fuel_mass"})
WH_PER_KWH = 1000.0

#: How much below the wrap-around limit a rate is capped when a register's rate limit and its
#: modulus disagree (see ``register_for``).
_WRAP_MARGIN = 0.999


@dataclass(frozen=True, slots=True)
class RegisterSettings:
    """A device's counter parameters as stored; None: not set (the default applies)."""

    metric: str
    modulus: float | None
    max_rate_per_s: float | None
    resolution: float | None
    default_max_rate_per_s: float | None
    default_resolution: float | None


@dataclass(frozen=True, slots=True)
class FuelIntervals:
    """Columns of fuel_1m rows: fuel per minute in the register's ``unit``."""

    device_id: list[str]
    minute: list[int]
    quantity: list[float]
    unit: list[str]
    sample_count: list[int]
    coverage: list[float]
    method: str = COUNTER_DELTA_METHOD

    def __len__(self) -> int:
        return len(self.minute)


def power_points(
    records: Sequence[ReadingsRecord], registered: Mapping[str, str]
) -> Iterator[tuple[str, float]]:
    """(device, ts) of the power readings that make energy: devices not metered by a counter."""
    for record in records:
        if registered.get(record.device_id) in COUNTER_METRICS:
            continue
        for reading in record.readings:
            if reading.metric == POWER_METRIC:
                yield record.device_id, reading.ts.timestamp()


def counter_points(
    records: Sequence[ReadingsRecord], registered: Mapping[str, str]
) -> Iterator[tuple[str, float]]:
    """(device, ts) of the readings of each counter device's registered cumulative metric."""
    for record in records:
        metric = registered.get(record.device_id)
        if metric not in COUNTER_METRICS:
            continue
        for reading in record.readings:
            if reading.metric == metric:
                yield record.device_id, reading.ts.timestamp()


def register_for(settings: RegisterSettings, max_gap_s: float) -> tuple[CounterRegister, str]:
    """The register to read a device's counter with, and a warning ('' if none).

    A rate limit that would let the register count its whole modulus within one bridged
    pair (``max_gap_s``) could hide a complete turn; the rate is then capped just below that,
    and the warning says so: the device's parameters should be corrected.
    """
    rate = settings.max_rate_per_s or settings.default_max_rate_per_s or math.inf
    resolution = (
        settings.resolution
        if settings.resolution is not None
        else (settings.default_resolution or 0.0)
    )
    modulus = settings.modulus
    warning = ""
    if modulus is not None and rate * max_gap_s + resolution >= modulus:
        capped = max((modulus - resolution) / max_gap_s * _WRAP_MARGIN, 0.0)
        if capped <= 0:
            return CounterRegister(rate, None, resolution), (
                f"resolution {resolution:g} is not below the modulus {modulus:g}: rollover ignored"
            )
        warning = (
            f"a rate of {rate:g}/s could count the whole modulus {modulus:g} within "
            f"{max_gap_s:g} s: capped at {capped:g}/s"
        )
        rate = capped
    return CounterRegister(rate, modulus, resolution), warning


def split_counter_intervals(
    intervals: CounterIntervals, registered: Mapping[str, str]
) -> tuple[EnergyIntervals, FuelIntervals]:
    """Energy registers' deltas as kWh energy intervals, fuel meters' as fuel intervals."""
    energy = EnergyIntervals([], [], [], [], [])
    fuel = FuelIntervals([], [], [], [], [], [])
    for device_id, minute, delta, samples, coverage in zip(
        intervals.device_id,
        intervals.minute,
        intervals.delta,
        intervals.sample_count,
        intervals.coverage,
        strict=True,
    ):
        metric = registered[device_id]
        if metric == ENERGY_COUNTER_METRIC:
            energy.device_id.append(device_id)
            energy.minute.append(minute)
            energy.kwh.append(delta / WH_PER_KWH)
            energy.sample_count.append(samples)
            energy.coverage.append(coverage)
        elif metric in FUEL_COUNTER_METRICS:
            fuel.device_id.append(device_id)
            fuel.minute.append(minute)
            fuel.quantity.append(delta)
            fuel.unit.append(COUNTER_METRICS[metric])
            fuel.sample_count.append(samples)
            fuel.coverage.append(coverage)
    return energy, fuel
