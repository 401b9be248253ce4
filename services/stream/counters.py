"""Numba kernel: consumption per minute from cumulative counter readings.

Energy registers, gas and fuel meters report a running total. The consumption of an interval
is the difference between consecutive readings, once each pair of readings has been
classified:

* ``OK``: the value rose by no more than the meter can physically count in the time between
  the readings (``max_rate * dt + resolution``); the rise is counted.
* ``ROLLOVER``: the value fell, and adding the register's modulus gives a plausible rise; the
  register wrapped past its maximum, and the wrapped rise is counted.
* ``RESET``: the value fell to near zero (no more than the plausible limit, or below
  ``reset_fraction`` of the previous value) and rollover does not explain it: the counter
  restarted, or the meter was swapped. The new value is counted when it is plausible on its
  own (the meter counted it since restarting from zero); otherwise nothing is counted.
* ``REJECTED_JUMP``: the value rose faster than physically possible; nothing is counted.
* ``NEGATIVE``: any other fall (the counter ran backwards); nothing is counted.
* ``GAP``: the readings are further apart than ``max_gap_s``; the pair is not bridged, so it
  adds neither consumption nor coverage.

A counted pair spreads its amount over the minutes it spans in proportion to time (constant
rate between the two readings) and adds the seconds it spans to those minutes' coverage.

Pattern: a typed public function validates and converts its inputs, then calls a private
``@njit`` kernel that does the loop. The slow, obviously correct twin lives in
``tests/naive.py``.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import NamedTuple

import numpy as np
from numba import njit
from numpy.typing import NDArray

from services.stream.kernels import minute_grid

#: How intervals derived here are obtained; storage tells them from power integrals by it.
COUNTER_DELTA_METHOD = "counter_delta"

#: A fall to below this fraction of the previous value counts as a restart, not a glitch.
DEFAULT_RESET_FRACTION = 0.5

# Pair kinds as plain ints: the kernel compares against module constants it can freeze.
_NO_PAIR = -1
_OK = 0
_ROLLOVER = 1
_RESET = 2
_REJECTED_JUMP = 3
_NEGATIVE = 4
_GAP = 5


class PairKind(IntEnum):
    """How a pair of consecutive counter readings was read."""

    NO_PAIR = _NO_PAIR  # the last reading of a group starts no pair
    OK = _OK
    ROLLOVER = _ROLLOVER
    RESET = _RESET
    REJECTED_JUMP = _REJECTED_JUMP
    NEGATIVE = _NEGATIVE
    GAP = _GAP

    @property
    def label(self) -> str:
        """Machine-readable name, e.g. ``rejected_jump``."""
        return self.name.lower()


class CounterAnomalies(NamedTuple):
    """Every pair touching a requested range whose kind is not ``OK``, in input order."""

    group: NDArray[np.int64]
    ts0_s: NDArray[np.float64]
    ts1_s: NDArray[np.float64]
    kind: NDArray[np.int8]  # PairKind values
    raw_delta: NDArray[np.float64]  # later minus earlier reading, as reported
    counted_delta: NDArray[np.float64]  # what was counted; NaN for nothing

    def __len__(self) -> int:
        return len(self.group)


class CounterMinutes(NamedTuple):
    """Counted consumption per (group, minute), plus the classification of every pair.

    One row per minute in each group's requested range. ``pair_kind[i]`` and
    ``pair_delta[i]`` describe the pair of readings ``i`` and ``i + 1`` (``NO_PAIR`` at the
    last reading of a group); ``pair_delta`` is NaN where nothing was counted. ``anomalies``
    lists the pairs that need a record.
    """

    group: NDArray[np.int64]
    minute: NDArray[np.int64]  # minutes since the Unix epoch
    delta: NDArray[np.float64]  # canonical units of the register (Wh, m3, ...)
    covered_s: NDArray[np.float64]  # seconds of the minute bridged by counted pairs
    sample_count: NDArray[np.int64]
    pair_kind: NDArray[np.int8]
    pair_delta: NDArray[np.float64]
    anomalies: CounterAnomalies


def counter_deltas_by_minute(
    ts_s: NDArray[np.float64],
    value: NDArray[np.float64],
    group_starts: NDArray[np.int64],
    minute_lo: NDArray[np.int64],
    minute_hi: NDArray[np.int64],
    modulus: NDArray[np.float64],
    max_rate: NDArray[np.float64],
    resolution: NDArray[np.float64],
    max_gap_s: float,
    reset_fraction: float = DEFAULT_RESET_FRACTION,
) -> CounterMinutes:
    """Consumption per minute from cumulative counter readings.

    Readings of group ``g`` are ``ts_s[group_starts[g]:group_starts[g + 1]]`` (seconds since
    the epoch, strictly increasing) with the register's ``value`` alongside. Per group:
    ``modulus`` is the value at which the register wraps to zero (0 when it never wraps),
    ``max_rate`` the most it can count per second (``inf`` for no limit) and ``resolution``
    its smallest step, which a pair may exceed the rate limit by. Minutes ``minute_lo[g]``
    to ``minute_hi[g]`` (inclusive) are reported for each group.
    """
    n_groups = len(minute_lo)
    if len(group_starts) != n_groups + 1:
        raise ValueError("group_starts must have one entry more than minute_lo")
    for name, per_group in (
        ("minute_hi", minute_hi),
        ("modulus", modulus),
        ("max_rate", max_rate),
        ("resolution", resolution),
    ):
        if len(per_group) != n_groups:
            raise ValueError(f"{name} must have one entry per group")
    if len(ts_s) != len(value) or (n_groups and group_starts[-1] != len(ts_s)):
        raise ValueError("ts_s, value and group_starts disagree on the number of readings")
    if n_groups and (group_starts[0] != 0 or np.any(np.diff(group_starts) < 0)):
        raise ValueError("group_starts must start at 0 and never decrease")
    if not (np.all(np.isfinite(ts_s)) and np.all(np.isfinite(value))):
        raise ValueError("ts_s and value must be finite")
    if np.any(minute_hi < minute_lo):
        raise ValueError("minute_hi must not be before minute_lo")
    if not max_gap_s > 0 or not math.isfinite(max_gap_s):
        raise ValueError("max_gap_s must be positive and finite")
    if not 0.0 <= reset_fraction <= 1.0:
        raise ValueError("reset_fraction must be between 0 and 1")
    if np.any(~np.isfinite(modulus)) or np.any(modulus < 0):
        raise ValueError("modulus must be finite and not negative (0: never wraps)")
    if np.any(np.isnan(max_rate)) or np.any(max_rate <= 0):
        raise ValueError("max_rate must be positive (inf: no limit)")
    if np.any(~np.isfinite(resolution)) or np.any(resolution < 0):
        raise ValueError("resolution must be finite and not negative")
    # A register that can wrap within one bridged pair could hide a whole turn.
    wraps = modulus > 0
    if np.any(max_rate[wraps] * max_gap_s + resolution[wraps] >= modulus[wraps]):
        raise ValueError("a register can count its whole modulus within max_gap_s")
    rises = np.diff(ts_s) > 0
    last_of_group = group_starts[1:] - 1
    rises[last_of_group[(last_of_group >= 0) & (last_of_group < len(rises))]] = True
    if not np.all(rises):
        raise ValueError("ts_s must strictly increase within each group")

    out_starts, group, minute = minute_grid(minute_lo, minute_hi)
    total = len(minute)
    delta = np.zeros(total, dtype=np.float64)
    covered = np.zeros(total, dtype=np.float64)
    samples = np.zeros(total, dtype=np.int64)
    pair_kind = np.full(len(ts_s), _NO_PAIR, dtype=np.int8)
    pair_delta = np.full(len(ts_s), np.nan, dtype=np.float64)
    _counter_kernel(
        np.ascontiguousarray(ts_s, dtype=np.float64),
        np.ascontiguousarray(value, dtype=np.float64),
        np.ascontiguousarray(group_starts, dtype=np.int64),
        np.ascontiguousarray(minute_lo, dtype=np.int64),
        np.ascontiguousarray(minute_hi, dtype=np.int64),
        np.ascontiguousarray(modulus, dtype=np.float64),
        np.ascontiguousarray(max_rate, dtype=np.float64),
        np.ascontiguousarray(resolution, dtype=np.float64),
        out_starts,
        float(max_gap_s),
        float(reset_fraction),
        delta,
        covered,
        samples,
        pair_kind,
        pair_delta,
    )
    anomalies = _anomalies(pair_kind, pair_delta, ts_s, value, group_starts, minute_lo, minute_hi)
    return CounterMinutes(group, minute, delta, covered, samples, pair_kind, pair_delta, anomalies)


def _anomalies(
    kinds: NDArray[np.int8],
    pair_delta: NDArray[np.float64],
    ts_s: NDArray[np.float64],
    value: NDArray[np.float64],
    group_starts: NDArray[np.int64],
    minute_lo: NDArray[np.int64],
    minute_hi: NDArray[np.int64],
) -> CounterAnomalies:
    """The pairs that were not plainly ``OK`` and overlap their group's requested minutes.

    Pairs outside the range are left to the computation that covers them, so overlapping
    recomputations do not report one pair twice more than needed.
    """
    n_per_group = np.diff(group_starts)
    group_of = np.repeat(np.arange(len(minute_lo), dtype=np.int64), n_per_group)
    starts = np.flatnonzero((kinds != _NO_PAIR) & (kinds != _OK))
    ends = starts + 1
    g = group_of[starts]
    t0 = ts_s[starts]
    t1 = ts_s[ends]
    in_range = (t0 < (minute_hi[g] + 1) * 60.0) & (t1 > minute_lo[g] * 60.0)
    keep = starts[in_range]
    return CounterAnomalies(
        group=g[in_range],
        ts0_s=t0[in_range].astype(np.float64),
        ts1_s=t1[in_range].astype(np.float64),
        kind=kinds[keep],
        raw_delta=(value[keep + 1] - value[keep]).astype(np.float64),
        counted_delta=pair_delta[keep],
    )


@njit(cache=True, nogil=True)
def _classify(
    v0: float,
    v1: float,
    dt: float,
    modulus: float,
    max_rate: float,
    resolution: float,
    max_gap: float,
    reset_fraction: float,
) -> tuple[int, float]:
    if dt > max_gap:
        return _GAP, np.nan
    limit = max_rate * dt + resolution
    rise = v1 - v0
    if rise >= 0.0:
        if rise <= limit:
            return _OK, rise
        return _REJECTED_JUMP, np.nan
    if modulus > 0.0 and 0.0 <= rise + modulus <= limit:
        return _ROLLOVER, rise + modulus
    plausible_restart = 0.0 <= v1 <= limit
    if plausible_restart or 0.0 <= v1 < reset_fraction * v0:
        return _RESET, v1 if plausible_restart else np.nan
    return _NEGATIVE, np.nan


@njit(cache=True, nogil=True)
def _counter_kernel(
    ts: NDArray[np.float64],
    value: NDArray[np.float64],
    group_starts: NDArray[np.int64],
    minute_lo: NDArray[np.int64],
    minute_hi: NDArray[np.int64],
    modulus: NDArray[np.float64],
    max_rate: NDArray[np.float64],
    resolution: NDArray[np.float64],
    out_starts: NDArray[np.int64],
    max_gap: float,
    reset_fraction: float,
    delta: NDArray[np.float64],
    covered: NDArray[np.float64],
    samples: NDArray[np.int64],
    pair_kind: NDArray[np.int8],
    pair_delta: NDArray[np.float64],
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
            kind, counted = _classify(
                value[i],
                value[i + 1],
                dt,
                modulus[g],
                max_rate[g],
                resolution[g],
                max_gap,
                reset_fraction,
            )
            pair_kind[i] = kind
            pair_delta[i] = counted
            if np.isnan(counted):
                continue
            rate = counted / dt
            # Walk the minutes this pair overlaps, clipped to the requested range.
            m_first = max(np.int64(np.floor(t0 / 60.0)), lo)
            m_last = min(np.int64(np.floor(t1 / 60.0)), hi)
            for mm in range(m_first, m_last + 1):
                a = max(t0, mm * 60.0)
                b = min(t1, (mm + 1) * 60.0)
                if b <= a:
                    continue
                delta[base + mm - lo] += rate * (b - a)
                covered[base + mm - lo] += b - a
