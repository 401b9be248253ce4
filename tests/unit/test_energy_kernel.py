"""The trapezoid kernel against its naive twin, and the energy domain around it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.stream.energy import (
    DeviceWindow,
    SampleBatch,
    affected_windows,
    energy_intervals,
)
from services.stream.kernels import integrate_power_by_minute
from tests import naive

BASE_S = 1_780_000_020.0  # an arbitrary instant, deliberately not on a minute boundary


@st.composite
def device_samples(draw: st.DrawFn) -> list[tuple[float, float]]:
    steps = draw(
        st.lists(
            st.one_of(
                st.floats(min_value=0.001, max_value=30.0),
                st.floats(min_value=30.0, max_value=400.0),  # now and then a gap
            ),
            min_size=0,
            max_size=60,
        )
    )
    powers = draw(
        st.lists(
            st.floats(min_value=0.0, max_value=5e5, allow_nan=False),
            min_size=len(steps) + 1,
            max_size=len(steps) + 1,
        )
    )
    times = [BASE_S + draw(st.floats(min_value=0.0, max_value=120.0))]
    for step in steps:
        times.append(times[-1] + step)
    return list(zip(times, powers, strict=False))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    devices=st.lists(device_samples(), min_size=1, max_size=4),
    max_gap=st.floats(min_value=1.0, max_value=300.0),
)
def test_kernel_matches_naive_twin(
    devices: list[list[tuple[float, float]]], max_gap: float
) -> None:
    los = [math.floor(BASE_S / 60) - 2 + k for k in range(len(devices))]
    his = [
        max(lo, math.floor(max(t for t, _ in samples) / 60) + 1) if samples else lo
        for lo, samples in zip(los, devices, strict=True)
    ]
    starts = np.cumsum([0] + [len(d) for d in devices]).astype(np.int64)
    flat = [s for d in devices for s in d]
    result = integrate_power_by_minute(
        np.array([t for t, _ in flat], dtype=np.float64),
        np.array([p for _, p in flat], dtype=np.float64),
        starts,
        np.array(los, dtype=np.int64),
        np.array(his, dtype=np.int64),
        max_gap,
    )
    expected = [
        (g, *row)
        for g, samples in enumerate(devices)
        for row in naive.integrate_power_by_minute(samples, los[g], his[g], max_gap)
    ]
    assert len(expected) == len(result.minute)
    for k, (g, minute, energy, covered, count) in enumerate(expected):
        assert result.group[k] == g
        assert result.minute[k] == minute
        assert result.sample_count[k] == count
        assert result.energy_ws[k] == pytest.approx(energy, rel=1e-9, abs=1e-6)
        assert result.covered_s[k] == pytest.approx(covered, rel=1e-9, abs=1e-9)


def test_constant_power_over_a_full_minute_is_exact() -> None:
    minute = 29_000_000
    ts = np.arange(minute * 60.0 - 10, minute * 60.0 + 71, 10.0)
    result = integrate_power_by_minute(
        ts,
        np.full(len(ts), 6000.0),
        np.array([0, len(ts)], dtype=np.int64),
        np.array([minute], dtype=np.int64),
        np.array([minute], dtype=np.int64),
        max_gap_s=30.0,
    )
    assert result.energy_ws[0] == pytest.approx(6000.0 * 60)
    assert result.covered_s[0] == pytest.approx(60.0)
    assert result.sample_count[0] == 6


def test_gap_longer_than_limit_is_not_bridged() -> None:
    minute = 29_000_000
    ts = np.array([minute * 60.0, minute * 60.0 + 20, minute * 60.0 + 59])
    result = integrate_power_by_minute(
        ts,
        np.array([100.0, 100.0, 100.0]),
        np.array([0, 3], dtype=np.int64),
        np.array([minute], dtype=np.int64),
        np.array([minute], dtype=np.int64),
        max_gap_s=30.0,
    )
    assert result.covered_s[0] == pytest.approx(20.0)
    assert result.energy_ws[0] == pytest.approx(2000.0)


def test_rejects_inconsistent_inputs() -> None:
    with pytest.raises(ValueError, match="group_starts"):
        integrate_power_by_minute(
            np.zeros(2),
            np.zeros(2),
            np.array([0, 1], dtype=np.int64),
            np.array([0, 0], dtype=np.int64),
            np.array([1, 1], dtype=np.int64),
            60.0,
        )


def test_affected_windows_reach_one_gap_either_side() -> None:
    windows = affected_windows([("b", 600.0), ("a", 630.0), ("a", 700.0)], max_gap_s=120.0)
    assert windows == [DeviceWindow("a", 8, 13), DeviceWindow("b", 8, 12)]


def test_distant_samples_of_one_device_get_separate_windows() -> None:
    day = 86_400.0
    windows = affected_windows([("a", 600.0), ("a", 30 * day), ("a", 620.0)], max_gap_s=60.0)
    assert windows == [DeviceWindow("a", 9, 11), DeviceWindow("a", 43_199, 43_201)]


def test_energy_intervals_skip_empty_minutes_and_convert_to_kwh() -> None:
    window = DeviceWindow("m1", 100, 103)
    ts = np.array([101 * 60.0, 101 * 60.0 + 30, 102 * 60.0])
    batch = SampleBatch(ts, np.full(3, 3.6e6 / 60), np.array([0, 3], dtype=np.int64))
    intervals = energy_intervals([window], batch, max_gap_s=60.0)
    assert intervals.minute == [101, 102]
    assert intervals.kwh == pytest.approx([1.0, 0.0])
    assert intervals.sample_count == [2, 1]
    assert intervals.coverage == pytest.approx([1.0, 0.0])
