"""Energy intervals from power samples: which minutes a batch touches, and their energy.

Pure domain code: no I/O, no clock. The stream processor recomputes every minute a batch can
have changed from the stored readings, so duplicates, redeliveries and out-of-order samples
all converge on the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.stream.kernels import integrate_power_by_minute

POWER_METRIC = "active_power"
WS_PER_KWH = 3_600_000.0


@dataclass(frozen=True, slots=True)
class DeviceWindow:
    """Minutes ``minute_lo``..``minute_hi`` (epoch minutes, inclusive) of one device."""

    device_id: str
    minute_lo: int
    minute_hi: int

    def sample_range_s(self, max_gap_s: float) -> tuple[float, float]:
        """Seconds range [start, end) of the samples needed to recompute these minutes."""
        return self.minute_lo * 60.0 - max_gap_s, (self.minute_hi + 1) * 60.0 + max_gap_s


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Power samples of several devices, sorted by time within each device.

    Device ``k`` (the k-th window) owns ``ts_s[group_starts[k]:group_starts[k + 1]]``.
    """

    ts_s: NDArray[np.float64]
    power_w: NDArray[np.float64]
    group_starts: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class EnergyIntervals:
    """Columns of energy_1m rows (only minutes that have samples or coverage)."""

    device_id: list[str]
    minute: list[int]
    kwh: list[float]
    sample_count: list[int]
    coverage: list[float]

    def __len__(self) -> int:
        return len(self.minute)


def affected_windows(points: Iterable[tuple[str, float]], max_gap_s: float) -> list[DeviceWindow]:
    """Minutes whose energy may change when samples at these (device_id, ts_s) arrive.

    A new sample at t only joins segments to neighbours at most ``max_gap_s`` away, so only
    minutes within that distance of it can change. Overlapping or touching ranges of one
    device merge; distant ones stay apart, so a late sample among live ones does not drag
    the whole span between them into the recomputation.
    """
    by_device: dict[str, list[float]] = {}
    for device_id, ts in points:
        by_device.setdefault(device_id, []).append(ts)
    windows: list[DeviceWindow] = []
    for device_id in sorted(by_device):
        lo = hi = None
        for ts in sorted(by_device[device_id]):
            first = math.floor((ts - max_gap_s) / 60.0)
            last = math.floor((ts + max_gap_s) / 60.0)
            if hi is not None and first <= hi + 1:
                hi = max(hi, last)
                continue
            if lo is not None and hi is not None:
                windows.append(DeviceWindow(device_id, lo, hi))
            lo, hi = first, last
        if lo is not None and hi is not None:
            windows.append(DeviceWindow(device_id, lo, hi))
    return windows


def energy_intervals(
    windows: Sequence[DeviceWindow], samples: SampleBatch, max_gap_s: float
) -> EnergyIntervals:
    """Energy, sample count and coverage of every minute in ``windows`` that has any data."""
    result = integrate_power_by_minute(
        samples.ts_s,
        samples.power_w,
        samples.group_starts,
        np.fromiter((w.minute_lo for w in windows), dtype=np.int64, count=len(windows)),
        np.fromiter((w.minute_hi for w in windows), dtype=np.int64, count=len(windows)),
        max_gap_s,
    )
    keep = (result.sample_count > 0) | (result.covered_s > 0)
    groups = result.group[keep]
    return EnergyIntervals(
        device_id=[windows[g].device_id for g in groups.tolist()],
        minute=result.minute[keep].tolist(),
        kwh=(result.energy_ws[keep] / WS_PER_KWH).tolist(),
        sample_count=result.sample_count[keep].tolist(),
        coverage=np.minimum(result.covered_s[keep] / 60.0, 1.0).tolist(),
    )
