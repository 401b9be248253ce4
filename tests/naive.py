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


def counter_deltas_by_minute(
    readings: list[tuple[float, float]],
    minute_lo: int,
    minute_hi: int,
    *,
    modulus: float,
    max_rate: float,
    resolution: float,
    max_gap_s: float,
    reset_fraction: float,
) -> tuple[list[tuple[int, float, float, int]], list[tuple[float, float, str, float | None]]]:
    """(minute, delta, covered_s, sample_count) per minute, and (ts0, ts1, kind, counted) per
    pair, for one device's sorted counter readings. ``counted`` None means nothing counted.
    """
    pairs: list[tuple[float, float, str, float | None]] = []
    for (t0, v0), (t1, v1) in itertools.pairwise(readings):
        limit = max_rate * (t1 - t0) + resolution
        kind: str
        counted: float | None = None
        if t1 - t0 > max_gap_s:
            kind = "gap"
        elif v1 >= v0:
            kind = "ok" if v1 - v0 <= limit else "rejected_jump"
            counted = v1 - v0 if kind == "ok" else None
        elif modulus > 0 and 0 <= (v1 - v0) + modulus <= limit:
            kind, counted = "rollover", (v1 - v0) + modulus
        elif 0 <= v1 <= limit:
            kind, counted = "reset", v1
        elif 0 <= v1 < reset_fraction * v0:
            kind = "reset"
        else:
            kind = "negative"
        pairs.append((t0, t1, kind, counted))
    rows = []
    for minute in range(minute_lo, minute_hi + 1):
        start, end = minute * 60.0, (minute + 1) * 60.0
        delta = covered = 0.0
        for t0, t1, _, counted in pairs:
            overlap = min(t1, end) - max(t0, start)
            if counted is None or overlap <= 0:
                continue
            delta += counted * overlap / (t1 - t0)
            covered += overlap
        count = sum(1 for t, _ in readings if math.floor(t / 60.0) == minute)
        rows.append((minute, delta, covered, count))
    return rows, pairs


def emissions_by_interval(
    intervals: list[tuple[int, float]], breakpoints: list[tuple[int, float, int]]
) -> list[tuple[float, int]]:
    """(kgCO2e, factor index) per (minute, kWh) of one group under (minute, value, index)."""
    rows = []
    for minute, kwh in intervals:
        applicable = [(value, index) for start, value, index in breakpoints if start <= minute]
        if not applicable:
            rows.append((math.nan, -1))
            continue
        value, index = applicable[-1]  # breakpoints are sorted: the latest one applies
        rows.append((kwh * value if index != -1 else math.nan, index))
    return rows
