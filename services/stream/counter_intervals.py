"""Consumption intervals from cumulative counters, and the pairs the stream must record.

Pure domain code: no I/O, no clock. Like the power intervals, the stream recomputes every
minute a batch can have changed from the stored readings (``energy.affected_windows`` finds
them: a reading only pairs with neighbours at most ``max_gap_s`` away), so redeliveries and
out-of-order readings converge on the same rows.

Meter swaps: a replaced meter shows as a fall to a new, unrelated value and is read like a
reset (see ``services.stream.counters``): its new value is counted when it is plausible as a
fresh count, otherwise nothing is, and the pair is reported either way. Later pairs continue
from the new meter's values, so a swap costs at most the one interval. Swap events that
state the old meter's final and the new meter's first value are not used yet.

Pairs are judged on their own: one spurious reading costs the two pairs around it (both
reported) rather than being bridged against the last good reading, and the consumption
across a gap is reported with the gap, not spread over the minutes it spans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from services.stream.counters import (
    COUNTER_DELTA_METHOD,
    DEFAULT_RESET_FRACTION,
    PairKind,
    counter_deltas_by_minute,
)
from services.stream.energy import DeviceWindow

#: Cumulative metrics and their canonical units (schemas.telemetry.METRIC_UNITS).
COUNTER_METRICS: Final[dict[str, str]] = {
    "active_energy_import": "Wh",
    "gas_volume": "m3",
    "fuel_mass": "kg",
}

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class CounterRegister:
    """How one device's cumulative register behaves, in its canonical unit.

    ``modulus`` is the value at which it wraps to zero (the register's maximum + 1; None when
    it never wraps), ``max_rate_per_s`` the most it can count per second (``math.inf``: no
    limit) and ``resolution`` its smallest step: a pair may exceed the rate limit by one step,
    since a coarse register counts in jumps.
    """

    max_rate_per_s: float = math.inf
    modulus: float | None = None
    resolution: float = 0.0

    @classmethod
    def for_energy_meter(
        cls,
        rated_power_w: float,
        *,
        headroom: float = 1.5,
        modulus_wh: float | None = None,
        resolution_wh: float = 0.0,
    ) -> CounterRegister:
        """An energy register (Wh) that cannot count faster than ``headroom`` x rated power."""
        if not rated_power_w > 0 or not headroom >= 1:
            raise ValueError("rated power must be positive and headroom at least 1")
        return cls(rated_power_w * headroom / SECONDS_PER_HOUR, modulus_wh, resolution_wh)


@dataclass(frozen=True, slots=True)
class CounterBatch:
    """Counter readings of several devices, sorted by time within each device.

    Device ``k`` (the k-th window) owns ``ts_s[group_starts[k]:group_starts[k + 1]]``.
    """

    ts_s: NDArray[np.float64]
    value: NDArray[np.float64]
    group_starts: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class CounterIntervals:
    """Columns of interval rows (only minutes with readings or coverage).

    ``delta`` is in the register's canonical unit; ``method`` says how every row was derived.
    """

    device_id: list[str]
    minute: list[int]
    delta: list[float]
    sample_count: list[int]
    coverage: list[float]
    method: str = field(default=COUNTER_DELTA_METHOD)

    def __len__(self) -> int:
        return len(self.minute)


@dataclass(frozen=True, slots=True)
class CounterAnomaly:
    """A pair of readings that was not plainly counted; the stream records it with ``reason``.

    ``counted`` is what the pair contributed (None: nothing).
    """

    device_id: str
    ts0_s: float
    ts1_s: float
    kind: PairKind
    raw_delta: float
    counted: float | None
    reason: str


def counter_intervals(
    windows: Sequence[DeviceWindow],
    readings: CounterBatch,
    registers: Sequence[CounterRegister],
    max_gap_s: float,
    reset_fraction: float = DEFAULT_RESET_FRACTION,
) -> tuple[CounterIntervals, list[CounterAnomaly]]:
    """Consumption, readings and coverage of every minute in ``windows`` that has any data,
    and every pair in them that was not plainly counted. ``registers[k]`` describes the
    device of ``windows[k]``.
    """
    if len(registers) != len(windows):
        raise ValueError("one register description per window is needed")
    n = len(windows)
    result = counter_deltas_by_minute(
        readings.ts_s,
        readings.value,
        readings.group_starts,
        np.fromiter((w.minute_lo for w in windows), dtype=np.int64, count=n),
        np.fromiter((w.minute_hi for w in windows), dtype=np.int64, count=n),
        np.fromiter((r.modulus or 0.0 for r in registers), dtype=np.float64, count=n),
        np.fromiter((r.max_rate_per_s for r in registers), dtype=np.float64, count=n),
        np.fromiter((r.resolution for r in registers), dtype=np.float64, count=n),
        max_gap_s,
        reset_fraction,
    )
    keep = (result.sample_count > 0) | (result.covered_s > 0)
    intervals = CounterIntervals(
        device_id=[windows[g].device_id for g in result.group[keep].tolist()],
        minute=result.minute[keep].tolist(),
        delta=result.delta[keep].tolist(),
        sample_count=result.sample_count[keep].tolist(),
        coverage=np.minimum(result.covered_s[keep] / 60.0, 1.0).tolist(),
    )
    found = result.anomalies
    anomalies = []
    for g, t0, t1, code, raw, counted in zip(
        found.group.tolist(),
        found.ts0_s.tolist(),
        found.ts1_s.tolist(),
        found.kind.tolist(),
        found.raw_delta.tolist(),
        found.counted_delta.tolist(),
        strict=True,
    ):
        kind = PairKind(code)
        counted_or_none = None if math.isnan(counted) else counted
        anomalies.append(
            CounterAnomaly(
                device_id=windows[g].device_id,
                ts0_s=t0,
                ts1_s=t1,
                kind=kind,
                raw_delta=raw,
                counted=counted_or_none,
                reason=_reason(kind, raw, counted_or_none, t1 - t0, registers[g], max_gap_s),
            )
        )
    return intervals, anomalies


def _reason(
    kind: PairKind,
    raw: float,
    counted: float | None,
    dt: float,
    register: CounterRegister,
    max_gap_s: float,
) -> str:
    """One line a person can act on, starting with the machine-readable kind."""
    limit = register.max_rate_per_s * dt + register.resolution
    change = f"changed by {raw:+.6g} in {dt:.6g} s"
    if kind is PairKind.GAP:
        detail = f"{change}; readings more than {max_gap_s:g} s apart are not bridged"
    elif kind is PairKind.REJECTED_JUMP:
        detail = f"{change}; more than the {limit:.6g} the meter can count in that time"
    elif kind is PairKind.ROLLOVER:
        detail = f"{change}; wrapped at {register.modulus:g}, counted {counted:.6g}"
    elif kind is PairKind.RESET and counted is not None:
        detail = f"{change}; counter restarted (or meter swapped), counted its new value"
    elif kind is PairKind.RESET:
        detail = (
            f"{change}; counter restarted or meter swapped, and its new value is more than "
            f"the {limit:.6g} it can have counted since: nothing counted"
        )
    else:
        detail = f"{change}; the counter ran backwards: nothing counted"
    return f"{kind.label}: {detail}"
