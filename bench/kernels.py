"""Kernel benchmark: readings/s on one core through the stream processor's Numba kernels
(interval energy from power, and emissions of energy minutes under an hourly factor series),
next to a NumPy formulation and the same algorithm in pure Python, in the same run.

Data: ``--devices`` devices with ``--readings-per-device`` readings each (default 10,000 x
1,000 = 10 million), one reading a second with a few seeded gaps, a seeded random walk of
power. Every variant is checked against the Numba result before it is timed (``agree``).
Numba and NumPy are timed over the whole set, ``--repeats`` times (median); pure Python over
a ``--python-share`` of the devices, its rate scaled per reading (it is linear in readings).
The first Numba call compiles (or loads the cache) and is not timed.

    python bench/kernels.py
    python bench/kernels.py --devices 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.stream.emission_kernels import (
    IntervalEmissions,
    _emissions_kernel,
    emissions_by_interval,
)
from services.stream.kernels import (
    MinuteEnergy,
    _integrate_kernel,
    integrate_power_by_minute,
    minute_grid,
)

GOAL_NUMBA_READINGS_PER_S = 20_000_000
GOAL_NUMBA_OVER_NUMPY = 10.0
MAX_GAP_S = 10.0


class PowerSet:
    """Sorted power samples of many devices, grouped as the kernels take them."""

    def __init__(self, devices: int, per_device: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        start = 1_795_000_000.0  # a fixed epoch second, minute-aligned
        steps = np.ones((devices, per_device))
        # A few gaps longer than MAX_GAP_S, so gap handling is part of what is measured.
        gaps = rng.random((devices, per_device)) < 0.002
        steps[gaps] = 30.0
        steps[:, 0] = rng.uniform(0, 60, devices)
        ts = start + np.cumsum(steps, axis=1)
        power = np.abs(1_000.0 + np.cumsum(rng.normal(0, 25, (devices, per_device)), axis=1))
        self.ts_s = ts.ravel()
        self.power_w = power.ravel()
        self.group_starts = np.arange(devices + 1, dtype=np.int64) * per_device
        self.minute_lo = np.floor(ts[:, 0] / 60).astype(np.int64)
        self.minute_hi = np.floor(ts[:, -1] / 60).astype(np.int64)
        self.readings = devices * per_device

    def head(self, devices: int) -> PowerSet:
        """The first ``devices`` devices only."""
        part = object.__new__(PowerSet)
        end = int(self.group_starts[devices])
        part.ts_s = self.ts_s[:end]
        part.power_w = self.power_w[:end]
        part.group_starts = self.group_starts[: devices + 1]
        part.minute_lo = self.minute_lo[:devices]
        part.minute_hi = self.minute_hi[:devices]
        part.readings = end
        return part


def numba_interval(data: PowerSet) -> MinuteEnergy:
    return integrate_power_by_minute(
        data.ts_s, data.power_w, data.group_starts, data.minute_lo, data.minute_hi, MAX_GAP_S
    )


def python_interval(data: PowerSet) -> MinuteEnergy:
    """The Numba kernel's own source run by the interpreter (``py_func``)."""
    result = _empty_result(data)
    out_starts = _out_starts(data)
    # Python lists, so the interpreter does not pay NumPy's per-element indexing cost.
    kernel: Any = _integrate_kernel.py_func
    kernel(
        data.ts_s.tolist(),
        data.power_w.tolist(),
        data.group_starts.tolist(),
        data.minute_lo.tolist(),
        data.minute_hi.tolist(),
        out_starts.tolist(),
        MAX_GAP_S,
        result.energy_ws,
        result.covered_s,
        result.sample_count,
    )
    return result


def numpy_interval(data: PowerSet) -> MinuteEnergy:
    """The same integration as whole-array operations: every pair of neighbouring samples
    is a segment, split at minute boundaries by repetition, summed per minute by bincount."""
    result = _empty_result(data)
    out_starts = _out_starts(data)
    ts, power, starts = data.ts_s, data.power_w, data.group_starts
    group = np.repeat(np.arange(len(data.minute_lo)), np.diff(starts))
    base = out_starts[:-1][group] - data.minute_lo[group]
    minute = np.floor(ts / 60.0).astype(np.int64)
    inside = (minute >= data.minute_lo[group]) & (minute <= data.minute_hi[group])
    result.sample_count[:] = np.bincount(
        (base + minute)[inside], minlength=len(result.sample_count)
    )
    last = np.zeros(len(ts), dtype=bool)
    last[starts[1:] - 1] = True
    seg = np.flatnonzero(~last)
    t0, t1 = ts[seg], ts[seg + 1]
    dt = t1 - t0
    ok = (dt > 0) & (dt <= MAX_GAP_S)
    seg, t0, t1, dt = seg[ok], t0[ok], t1[ok], dt[ok]
    p0 = power[seg]
    slope = (power[seg + 1] - p0) / dt
    g = group[seg]
    m_first = np.maximum(np.floor(t0 / 60.0).astype(np.int64), data.minute_lo[g])
    m_last = np.minimum(np.floor(t1 / 60.0).astype(np.int64), data.minute_hi[g])
    pieces = np.maximum(m_last - m_first + 1, 0)
    owner = np.repeat(np.arange(len(seg)), pieces)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    mm = m_first[owner] + offset
    a = np.maximum(t0[owner], mm * 60.0)
    b = np.minimum(t1[owner], (mm + 1) * 60.0)
    keep = b > a
    owner, mm, a, b = owner[keep], mm[keep], a[keep], b[keep]
    pa = p0[owner] + slope[owner] * (a - t0[owner])
    pb = p0[owner] + slope[owner] * (b - t0[owner])
    index = base[seg][owner] + mm
    size = len(result.energy_ws)
    result.energy_ws[:] = np.bincount(index, weights=0.5 * (pa + pb) * (b - a), minlength=size)
    result.covered_s[:] = np.bincount(index, weights=b - a, minlength=size)
    return result


def _out_starts(data: PowerSet) -> NDArray[np.int64]:
    return minute_grid(data.minute_lo, data.minute_hi)[0]


def _empty_result(data: PowerSet) -> MinuteEnergy:
    _, group, minute = minute_grid(data.minute_lo, data.minute_hi)
    total = len(minute)
    return MinuteEnergy(
        group,
        minute,
        np.zeros(total),
        np.zeros(total),
        np.zeros(total, dtype=np.int64),
    )


def _agree(expected: MinuteEnergy, got: MinuteEnergy) -> bool:
    return bool(
        np.array_equal(expected.sample_count, got.sample_count)
        and np.allclose(expected.energy_ws, got.energy_ws, rtol=1e-9, atol=1e-6)
        and np.allclose(expected.covered_s, got.covered_s, rtol=1e-9, atol=1e-9)
    )


def _timed(run: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_interval(data: PowerSet, args: argparse.Namespace) -> dict[str, Any]:
    reference = numba_interval(data)  # compiles, or loads the cache
    sample = data.head(max(1, int(len(data.minute_lo) * args.python_share)))
    numba_s = _timed(lambda: numba_interval(data), args.repeats)
    numpy_s = _timed(lambda: numpy_interval(data), args.repeats)
    python_s = _timed(lambda: python_interval(sample), 1)
    rates = {
        "numba": data.readings / numba_s,
        "numpy": data.readings / numpy_s,
        "python": sample.readings / python_s,
    }
    return _report(
        "interval (power -> energy per minute, trapezoid)",
        data.readings,
        sample.readings,
        {
            "numpy": _agree(reference, numpy_interval(data)),
            "python": _agree(numba_interval(sample), python_interval(sample)),
        },
        rates,
    )


class IntervalSet:
    """Energy minutes of many devices and an hourly factor series per device: the emissions
    kernel's input (one interval stands for the readings of its minute)."""

    def __init__(self, devices: int, per_device: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        first = 29_916_000  # an epoch minute on the hour
        minute = first + np.tile(np.arange(per_device, dtype=np.int64), devices)
        self.minute = minute
        self.kwh = rng.uniform(0, 0.2, devices * per_device)
        self.interval_starts = np.arange(devices + 1, dtype=np.int64) * per_device
        hours = per_device // 60 + 1
        self.bp_minute = first + np.tile(np.arange(hours, dtype=np.int64) * 60, devices)
        self.bp_value = rng.uniform(0.3, 0.9, devices * hours)
        self.bp_factor = np.tile(np.arange(hours, dtype=np.int64), devices)
        self.bp_starts = np.arange(devices + 1, dtype=np.int64) * hours
        self.readings = devices * per_device

    def head(self, devices: int) -> IntervalSet:
        part = object.__new__(IntervalSet)
        n = int(self.interval_starts[devices])
        b = int(self.bp_starts[devices])
        part.minute, part.kwh = self.minute[:n], self.kwh[:n]
        part.interval_starts = self.interval_starts[: devices + 1]
        part.bp_minute, part.bp_value = self.bp_minute[:b], self.bp_value[:b]
        part.bp_factor, part.bp_starts = self.bp_factor[:b], self.bp_starts[: devices + 1]
        part.readings = n
        return part


def numba_emissions(data: IntervalSet) -> IntervalEmissions:
    return emissions_by_interval(
        data.minute,
        data.kwh,
        data.interval_starts,
        data.bp_minute,
        data.bp_value,
        data.bp_factor,
        data.bp_starts,
    )


def numpy_emissions(data: IntervalSet) -> IntervalEmissions:
    """One searchsorted over (group, minute) keys of every group at once."""
    groups = len(data.interval_starts) - 1
    shift = np.int64(1) << np.int64(32)
    group = np.repeat(np.arange(groups, dtype=np.int64), np.diff(data.interval_starts))
    bp_group = np.repeat(np.arange(groups, dtype=np.int64), np.diff(data.bp_starts))
    keys = group * shift + data.minute
    bp_keys = bp_group * shift + data.bp_minute
    at = np.searchsorted(bp_keys, keys, side="right") - 1
    found = (at >= 0) & (bp_group[np.maximum(at, 0)] == group)
    safe = np.maximum(at, 0)
    kg = np.where(found, data.kwh * data.bp_value[safe], np.nan)
    used = np.where(found, data.bp_factor[safe], -1)
    return IntervalEmissions(kg, used)


def python_emissions(data: IntervalSet) -> IntervalEmissions:
    kg = np.empty(len(data.minute))
    used = np.empty(len(data.minute), dtype=np.int64)
    kernel: Any = _emissions_kernel.py_func
    kernel(
        data.minute.tolist(),
        data.kwh.tolist(),
        data.interval_starts.tolist(),
        data.bp_minute.tolist(),
        data.bp_value.tolist(),
        data.bp_factor.tolist(),
        data.bp_starts.tolist(),
        kg,
        used,
    )
    return IntervalEmissions(kg, used)


def _same_emissions(expected: IntervalEmissions, got: IntervalEmissions) -> bool:
    return bool(
        np.array_equal(expected.factor_index, got.factor_index)
        and np.allclose(expected.kg_co2e, got.kg_co2e, rtol=1e-12, equal_nan=True)
    )


def bench_emissions(data: IntervalSet, args: argparse.Namespace) -> dict[str, Any]:
    reference = numba_emissions(data)
    sample = data.head(max(1, int((len(data.interval_starts) - 1) * args.python_share)))
    rates = {
        "numba": data.readings / _timed(lambda: numba_emissions(data), args.repeats),
        "numpy": data.readings / _timed(lambda: numpy_emissions(data), args.repeats),
        "python": sample.readings / _timed(lambda: python_emissions(sample), 1),
    }
    return _report(
        "emissions (energy minute x hourly factor series)",
        data.readings,
        sample.readings,
        {
            "numpy": _same_emissions(reference, numpy_emissions(data)),
            "python": _same_emissions(numba_emissions(sample), python_emissions(sample)),
        },
        rates,
    )


def _priced(data: PowerSet, energy: MinuteEnergy, seed: int) -> IntervalSet:
    """The energy minutes of ``energy`` with an hourly factor series per device."""
    priced = object.__new__(IntervalSet)
    devices = len(data.minute_lo)
    counts = data.minute_hi - data.minute_lo + 1
    priced.minute = energy.minute
    priced.kwh = energy.energy_ws / 3.6e6
    priced.interval_starts = _out_starts(data)
    first_hour = (data.minute_lo // 60) * 60
    hours = (counts + 59) // 60 + 1
    priced.bp_starts = np.zeros(devices + 1, dtype=np.int64)
    np.cumsum(hours, out=priced.bp_starts[1:])
    offsets = np.arange(int(hours.sum())) - np.repeat(priced.bp_starts[:-1], hours)
    priced.bp_minute = np.repeat(first_hour, hours) + offsets * 60
    priced.bp_value = np.random.default_rng(seed).uniform(0.3, 0.9, int(hours.sum()))
    priced.bp_factor = offsets
    priced.readings = data.readings
    return priced


def bench_path(data: PowerSet, args: argparse.Namespace) -> dict[str, Any]:
    """Readings through both kernels, as the stream runs them: power -> energy minutes ->
    kgCO2e under an hourly series; the rate counts readings in."""

    def numba_path(part: PowerSet) -> IntervalEmissions:
        return numba_emissions(_priced(part, numba_interval(part), args.seed))

    def numpy_path(part: PowerSet) -> IntervalEmissions:
        return numpy_emissions(_priced(part, numpy_interval(part), args.seed))

    def python_path(part: PowerSet) -> IntervalEmissions:
        return python_emissions(_priced(part, python_interval(part), args.seed))

    reference = numba_path(data)
    sample = data.head(max(1, int(len(data.minute_lo) * args.python_share)))
    rates = {
        "numba": data.readings / _timed(lambda: numba_path(data), args.repeats),
        "numpy": data.readings / _timed(lambda: numpy_path(data), args.repeats),
        "python": sample.readings / _timed(lambda: python_path(sample), 1),
    }
    return _report(
        "readings -> energy minutes -> emissions (both kernels)",
        data.readings,
        sample.readings,
        {
            "numpy": _same_emissions(reference, numpy_path(data)),
            "python": _same_emissions(numba_path(sample), python_path(sample)),
        },
        rates,
    )


def _report(
    kernel: str,
    readings: int,
    python_readings: int,
    agree: dict[str, bool],
    rates: dict[str, float],
) -> dict[str, Any]:
    return {
        "kernel": kernel,
        "readings": readings,
        "python_readings": python_readings,
        "agree": agree,
        "readings_per_s": {k: round(v) for k, v in rates.items()},
        "numba_over_numpy": round(rates["numba"] / rates["numpy"], 2),
        "numba_over_python": round(rates["numba"] / rates["python"], 1),
        "goal": {
            "numba_readings_per_s": GOAL_NUMBA_READINGS_PER_S,
            "numba_over_numpy": GOAL_NUMBA_OVER_NUMPY,
            "met": rates["numba"] >= GOAL_NUMBA_READINGS_PER_S
            and rates["numba"] / rates["numpy"] >= GOAL_NUMBA_OVER_NUMPY,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--readings-per-device", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--python-share", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args()
    data = PowerSet(args.devices, args.readings_per_device, args.seed)
    report = {
        "benchmark": "kernels",
        "cores_used": 1,
        "machine_cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "results": [
            bench_interval(data, args),
            bench_emissions(IntervalSet(args.devices, args.readings_per_device, args.seed), args),
            bench_path(data, args),
        ],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
