"""Numba kernels of the stream processor.

Pattern: a typed public function validates and converts its inputs, then calls a private
``@njit`` kernel that does the loop. Every kernel has a slow, obviously correct twin in
``tests/naive.py`` that the tests compare it against.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit
from numpy.typing import NDArray

SECONDS_PER_MINUTE = 60.0


class MinuteEnergy(NamedTuple):
    """Energy per (group, minute); one row per minute in each group's requested range."""

    group: NDArray[np.int64]
    minute: NDArray[np.int64]  # minutes since the Unix epoch
    energy_ws: NDArray[np.float64]  # watt-seconds (joules)
    covered_s: NDArray[np.float64]  # seconds of the minute bridged by samples
    sample_count: NDArray[np.int64]


def integrate_power_by_minute(
    ts_s: NDArray[np.float64],
    power_w: NDArray[np.float64],
    group_starts: NDArray[np.int64],
    minute_lo: NDArray[np.int64],
    minute_hi: NDArray[np.int64],
    max_gap_s: float,
) -> MinuteEnergy:
    """Integrate power samples into energy per minute with the trapezoid rule.

    Samples of group ``g`` are ``ts_s[group_starts[g]:group_starts[g + 1]]`` (seconds since
    the epoch, strictly increasing) with ``power_w`` alongside. Power is taken as linear
    between neighbouring samples; a pair further apart than ``max_gap_s`` is a gap and is
    not bridged, so it adds neither energy nor coverage. Minutes ``minute_lo[g]`` to
    ``minute_hi[g]`` (inclusive) are reported for each group.
    """
    n_groups = len(minute_lo)
    if len(group_starts) != n_groups + 1:
        raise ValueError("group_starts must have one entry more than minute_lo")
    if len(minute_hi) != n_groups:
        raise ValueError("minute_lo and minute_hi must have the same length")
    if len(ts_s) != len(power_w) or (n_groups and group_starts[-1] != len(ts_s)):
        raise ValueError("ts_s, power_w and group_starts disagree on the number of samples")
    if np.any(minute_hi < minute_lo):
        raise ValueError("minute_hi must not be before minute_lo")
    if max_gap_s <= 0:
        raise ValueError("max_gap_s must be positive")
    out_starts, group, minute = minute_grid(minute_lo, minute_hi)
    total = len(minute)
    energy = np.zeros(total, dtype=np.float64)
    covered = np.zeros(total, dtype=np.float64)
    samples = np.zeros(total, dtype=np.int64)
    _integrate_kernel(
        np.ascontiguousarray(ts_s, dtype=np.float64),
        np.ascontiguousarray(power_w, dtype=np.float64),
        np.ascontiguousarray(group_starts, dtype=np.int64),
        np.ascontiguousarray(minute_lo, dtype=np.int64),
        np.ascontiguousarray(minute_hi, dtype=np.int64),
        out_starts,
        float(max_gap_s),
        energy,
        covered,
        samples,
    )
    return MinuteEnergy(group, minute, energy, covered, samples)


def minute_grid(
    minute_lo: NDArray[np.int64], minute_hi: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """The rows of a per-minute result: every minute ``minute_lo[g]``..``minute_hi[g]`` of
    each group in turn. Returns where each group's rows start (one more entry than groups),
    and each row's group and epoch minute."""
    counts = (minute_hi - minute_lo + 1).astype(np.int64)
    starts = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    group = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    minute = np.arange(int(starts[-1]), dtype=np.int64) - np.repeat(starts[:-1], counts)
    minute += np.repeat(minute_lo.astype(np.int64), counts)
    return starts, group, minute


@njit(cache=True, nogil=True)
def _integrate_kernel(
    ts: NDArray[np.float64],
    power: NDArray[np.float64],
    group_starts: NDArray[np.int64],
    minute_lo: NDArray[np.int64],
    minute_hi: NDArray[np.int64],
    out_starts: NDArray[np.int64],
    max_gap: float,
    energy: NDArray[np.float64],
    covered: NDArray[np.float64],
    samples: NDArray[np.int64],
) -> None:
    for g in range(len(minute_lo)):
        lo = minute_lo[g]
        hi = minute_hi[g]
        base = out_starts[g]
        first = group_starts[g]
        last = group_starts[g + 1]
        for i in range(first, last):
            m = np.int64(np.floor(ts[i] / 60.0))
            if lo <= m <= hi:
                samples[base + m - lo] += 1
            if i + 1 == last:
                continue
            t0 = ts[i]
            t1 = ts[i + 1]
            dt = t1 - t0
            if dt <= 0.0 or dt > max_gap:
                continue
            p0 = power[i]
            slope = (power[i + 1] - p0) / dt
            # Walk the minutes this segment overlaps, clipped to the requested range.
            m_first = max(np.int64(np.floor(t0 / 60.0)), lo)
            m_last = min(np.int64(np.floor(t1 / 60.0)), hi)
            for mm in range(m_first, m_last + 1):
                a = max(t0, mm * 60.0)
                b = min(t1, (mm + 1) * 60.0)
                if b <= a:
                    continue
                pa = p0 + slope * (a - t0)
                pb = p0 + slope * (b - t0)
                energy[base + mm - lo] += 0.5 * (pa + pb) * (b - a)
                covered[base + mm - lo] += b - a
