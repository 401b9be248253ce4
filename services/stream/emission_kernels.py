"""Numba kernel of the emissions step: interval energy times a piecewise-constant factor.

Same pattern as ``services/stream/kernels.py``: a typed public function validates and
converts its inputs, then calls a private ``@njit`` kernel that does the loop; its slow,
obviously correct twin lives in ``tests/naive.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit
from numpy.typing import NDArray

NO_FACTOR = -1


class IntervalEmissions(NamedTuple):
    """Per input interval: kgCO2e, and which factor version produced it (-1: none)."""

    kg_co2e: NDArray[np.float64]
    factor_index: NDArray[np.int64]


def _check_group_starts(starts: NDArray[np.int64], n_items: int, name: str) -> None:
    if len(starts) == 0 or starts[0] != 0 or starts[-1] != n_items:
        raise ValueError(f"{name} must run from 0 to the number of items")
    if np.any(np.diff(starts) < 0):
        raise ValueError(f"{name} must not decrease")


def emissions_by_interval(
    minute: NDArray[np.int64],
    kwh: NDArray[np.float64],
    interval_starts: NDArray[np.int64],
    breakpoint_minute: NDArray[np.int64],
    breakpoint_kg_per_kwh: NDArray[np.float64],
    breakpoint_factor: NDArray[np.int64],
    breakpoint_starts: NDArray[np.int64],
) -> IntervalEmissions:
    """kgCO2e of each (group, minute) interval under its group's factor series.

    Intervals of group ``g`` are ``minute[interval_starts[g]:interval_starts[g + 1]]`` (epoch
    minutes, any order) with ``kwh`` alongside. The group's factor series is
    ``breakpoint_minute[breakpoint_starts[g]:breakpoint_starts[g + 1]]``, strictly increasing:
    from each breakpoint on, up to the next, the factor is ``breakpoint_kg_per_kwh``
    (kgCO2e/kWh) and ``breakpoint_factor`` identifies the factor version (an index into the
    caller's list of factor ids and versions). A breakpoint with factor ``-1`` (and value
    NaN) ends coverage, e.g. at a gap in an hourly series or where the series stops.

    An interval before its group's first breakpoint, or under a ``-1`` breakpoint, has no
    factor: kgCO2e NaN and factor ``-1``, for the caller to report.
    """
    n_groups = len(interval_starts) - 1
    if len(breakpoint_starts) != n_groups + 1:
        raise ValueError("interval_starts and breakpoint_starts must have the same length")
    if len(minute) != len(kwh):
        raise ValueError("minute and kwh must have the same length")
    n_points = len(breakpoint_minute)
    if len(breakpoint_kg_per_kwh) != n_points or len(breakpoint_factor) != n_points:
        raise ValueError("breakpoint arrays must have the same length")
    _check_group_starts(interval_starts, len(minute), "interval_starts")
    _check_group_starts(breakpoint_starts, n_points, "breakpoint_starts")
    if n_points > 1:
        increasing = np.diff(breakpoint_minute) > 0
        inner = breakpoint_starts[1:-1]
        # A group boundary may go back in time; only steps within one group must increase.
        increasing[inner[(inner > 0) & (inner < n_points)] - 1] = True
        if not np.all(increasing):
            raise ValueError("breakpoints must be strictly increasing within each group")
    if np.any(breakpoint_factor < NO_FACTOR):
        raise ValueError("breakpoint_factor must be a factor index or -1")
    has_factor = breakpoint_factor != NO_FACTOR
    values = breakpoint_kg_per_kwh[has_factor]
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("factor values must be finite and non-negative")
    if not np.all(np.isnan(breakpoint_kg_per_kwh[~has_factor])):
        raise ValueError("a breakpoint without a factor (-1) must have the value NaN")

    kg = np.empty(len(minute), dtype=np.float64)
    used = np.empty(len(minute), dtype=np.int64)
    _emissions_kernel(
        np.ascontiguousarray(minute, dtype=np.int64),
        np.ascontiguousarray(kwh, dtype=np.float64),
        np.ascontiguousarray(interval_starts, dtype=np.int64),
        np.ascontiguousarray(breakpoint_minute, dtype=np.int64),
        np.ascontiguousarray(breakpoint_kg_per_kwh, dtype=np.float64),
        np.ascontiguousarray(breakpoint_factor, dtype=np.int64),
        np.ascontiguousarray(breakpoint_starts, dtype=np.int64),
        kg,
        used,
    )
    return IntervalEmissions(kg, used)


@njit(cache=True, nogil=True)
def _emissions_kernel(
    minute: NDArray[np.int64],
    kwh: NDArray[np.float64],
    interval_starts: NDArray[np.int64],
    bp_minute: NDArray[np.int64],
    bp_value: NDArray[np.float64],
    bp_factor: NDArray[np.int64],
    bp_starts: NDArray[np.int64],
    kg: NDArray[np.float64],
    used: NDArray[np.int64],
) -> None:
    for g in range(len(interval_starts) - 1):
        first = bp_starts[g]
        last = bp_starts[g + 1]
        # lo: how many of the group's breakpoints are at or before the current minute.
        # Minutes usually come in order: walk forward from the previous one's place, and
        # fall back to a binary search when a minute goes back in time.
        lo = first
        previous = np.iinfo(np.int64).min
        for i in range(interval_starts[g], interval_starts[g + 1]):
            m = minute[i]
            if m >= previous:
                while lo < last and bp_minute[lo] <= m:
                    lo += 1
            else:
                lo = first
                hi = last
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if bp_minute[mid] <= m:
                        lo = mid + 1
                    else:
                        hi = mid
            previous = m
            if lo == first:
                kg[i] = np.nan
                used[i] = -1
            else:
                kg[i] = kwh[i] * bp_value[lo - 1]
                used[i] = bp_factor[lo - 1]
