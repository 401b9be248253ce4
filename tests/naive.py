"""Slow, obviously correct twins of the Numba kernels, for tests to compare against."""

from __future__ import annotations

import itertools
import math


def integrate_power_by_minute(
    samples: list[tuple[float, float]], minute_lo: int, minute_hi: int, max_gap_s: float
) -> list[tuple[int, float, float, int]]:
    """(minute, energy_ws, covered_s, sample_count) per minute, one device, sorted samples."""
    rows = []
    for minute in range(minute_lo, minute_hi + 1):
        start, end = minute * 60.0, (minute + 1) * 60.0
        energy = covered = 0.0
        for (t0, p0), (t1, p1) in itertools.pairwise(samples):
            if not 0 < t1 - t0 <= max_gap_s:
                continue
            a, b = max(t0, start), min(t1, end)
            if b <= a:
                continue

            def at(
                t: float, t0: float = t0, p0: float = p0, t1: float = t1, p1: float = p1
            ) -> float:
                return p0 + (p1 - p0) * (t - t0) / (t1 - t0)

            energy += (at(a) + at(b)) / 2 * (b - a)
            covered += b - a
        count = sum(1 for t, _ in samples if math.floor(t / 60.0) == minute)
        rows.append((minute, energy, covered, count))
    return rows
