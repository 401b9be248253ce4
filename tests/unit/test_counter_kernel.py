"""The counter-delta kernel against its naive twin, hand-computed cases, and its domain."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.stream.counter_intervals import (
    CounterBatch,
    CounterRegister,
    counter_intervals,
)
from services.stream.counters import (
    COUNTER_DELTA_METHOD,
    DEFAULT_RESET_FRACTION,
    CounterMinutes,
    PairKind,
    counter_deltas_by_minute,
)
from services.stream.energy import DeviceWindow
from tests import naive

BASE_S = 1_780_000_020.0  # an arbitrary instant, deliberately not on a minute boundary
MINUTE = 29_000_000  # an epoch minute for hand-computed cases
T = MINUTE * 60.0
MODULUS = 10_000.0  # larger than any generated max_rate x max_gap + resolution


@dataclass
class Meter:
    readings: list[tuple[float, float]]
    modulus: float
    max_rate: float
    resolution: float
    rollovers: int  # how many times the generator wrapped the register


@st.composite
def meters(draw: st.DrawFn, max_gap: float, *, anomalies: bool) -> Meter:
    """Counter readings that count, wrap, and (with ``anomalies``) reset, get swapped,
    jump, run backwards and fall silent for longer than ``max_gap``."""
    modulus = draw(st.sampled_from([0.0, MODULUS]))
    max_rate = draw(st.floats(min_value=0.5, max_value=20.0))
    resolution = draw(st.sampled_from([0.0, 1.0]))
    top = MODULUS if modulus else 1e6
    t = BASE_S + draw(st.floats(min_value=0.0, max_value=120.0))
    # Starting close to the top makes rollovers common.
    v = draw(
        st.one_of(
            st.floats(min_value=0.0, max_value=top, exclude_max=True),
            st.floats(min_value=top - 2000.0, max_value=top, exclude_max=True),
        )
    )
    readings = [(t, v)]
    rollovers = 0
    events = ["count"]
    if anomalies:
        events += ["reset", "swap", "jump", "backwards", "gap"]
    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        event = draw(st.sampled_from(events))
        # Margins keep float rounding of t1 - t0 off the max_gap boundary.
        dt = draw(st.floats(min_value=0.5, max_value=0.999 * max_gap))
        # In the sum property the margin keeps rounding off the rate limit.
        share = draw(st.floats(min_value=0.0, max_value=1.0 if anomalies else 0.9))
        if event == "gap":
            dt = draw(st.floats(min_value=1.001 * max_gap, max_value=3 * max_gap))
            v = v + share * max_rate * dt
        elif event == "count":
            v = v + share * max_rate * dt
        elif event == "reset":
            v = share * max_rate * dt
        elif event == "swap":
            v = draw(st.floats(min_value=0.0, max_value=v))
        elif event == "jump":
            v = v + max_rate * dt + resolution + draw(st.floats(min_value=0.01, max_value=1e4))
        else:
            v = max(0.0, v - draw(st.floats(min_value=0.001, max_value=50.0)))
        if modulus and v >= modulus:
            v = math.fmod(v, modulus)
            rollovers += 1
        t += dt
        readings.append((t, v))
    return Meter(readings, modulus, max_rate, resolution, rollovers)


def run_kernel(
    devices: list[Meter], los: list[int], his: list[int], max_gap: float
) -> CounterMinutes:
    starts = np.cumsum([0] + [len(d.readings) for d in devices]).astype(np.int64)
    flat = [r for d in devices for r in d.readings]
    return counter_deltas_by_minute(
        np.array([t for t, _ in flat], dtype=np.float64),
        np.array([v for _, v in flat], dtype=np.float64),
        starts,
        np.array(los, dtype=np.int64),
        np.array(his, dtype=np.int64),
        np.array([d.modulus for d in devices], dtype=np.float64),
        np.array([d.max_rate for d in devices], dtype=np.float64),
        np.array([d.resolution for d in devices], dtype=np.float64),
        max_gap,
    )


@st.composite
def fleets(draw: st.DrawFn, *, anomalies: bool) -> tuple[list[Meter], float]:
    max_gap = draw(st.floats(min_value=5.0, max_value=300.0))
    devices = draw(st.lists(meters(max_gap, anomalies=anomalies), min_size=1, max_size=4))
    return devices, max_gap


@settings(derandomize=True, max_examples=300, deadline=None)
@given(fleet=fleets(anomalies=True))
def test_kernel_matches_naive_twin(fleet: tuple[list[Meter], float]) -> None:
    devices, max_gap = fleet
    # Later devices start their range after their first readings, so some pairs fall outside.
    los = [math.floor(BASE_S / 60) - 2 + k for k in range(len(devices))]
    his = [
        max(lo, math.floor(d.readings[-1][0] / 60) + 1) for lo, d in zip(los, devices, strict=True)
    ]
    result = run_kernel(devices, los, his, max_gap)

    expected_rows = []
    expected_pairs = []
    expected_anomalies = []
    for g, d in enumerate(devices):
        rows, pairs = naive.counter_deltas_by_minute(
            d.readings,
            los[g],
            his[g],
            modulus=d.modulus,
            max_rate=d.max_rate,
            resolution=d.resolution,
            max_gap_s=max_gap,
            reset_fraction=DEFAULT_RESET_FRACTION,
        )
        expected_rows += [(g, *row) for row in rows]
        expected_pairs += [(kind, counted) for _, _, kind, counted in pairs] + [("no_pair", None)]
        expected_anomalies += [
            (g, t0, t1, kind, counted)
            for t0, t1, kind, counted in pairs
            if kind != "ok" and t0 < (his[g] + 1) * 60.0 and t1 > los[g] * 60.0
        ]

    assert len(expected_rows) == len(result.minute)
    for k, (g, minute, delta, covered, count) in enumerate(expected_rows):
        assert result.group[k] == g
        assert result.minute[k] == minute
        assert result.sample_count[k] == count
        assert result.delta[k] == pytest.approx(delta, rel=1e-9, abs=1e-6)
        assert result.covered_s[k] == pytest.approx(covered, rel=1e-9, abs=1e-9)
        assert 0.0 <= result.covered_s[k] <= 60.0 + 1e-9
    kinds = [
        (PairKind(k).label, None if math.isnan(c) else c)
        for k, c in zip(result.pair_kind.tolist(), result.pair_delta.tolist(), strict=True)
    ]
    assert kinds == expected_pairs
    found = result.anomalies
    assert [
        (g, t0, t1, PairKind(kind).label, None if math.isnan(c) else c)
        for g, t0, t1, kind, c in zip(
            found.group.tolist(),
            found.ts0_s.tolist(),
            found.ts1_s.tolist(),
            found.kind.tolist(),
            found.counted_delta.tolist(),
            strict=True,
        )
    ] == expected_anomalies


@settings(derandomize=True, max_examples=200, deadline=None)
@given(fleet=fleets(anomalies=False))
def test_total_is_last_minus_first_plus_wrapped_turns(fleet: tuple[list[Meter], float]) -> None:
    devices, max_gap = fleet
    los = [math.floor(d.readings[0][0] / 60) for d in devices]
    his = [math.floor(d.readings[-1][0] / 60) for d in devices]
    result = run_kernel(devices, los, his, max_gap)
    for g, d in enumerate(devices):
        rows = result.group == g
        first, last = d.readings[0][1], d.readings[-1][1]
        assert result.delta[rows].sum() == pytest.approx(
            last - first + d.modulus * d.rollovers, rel=1e-9, abs=1e-6
        )
        assert result.covered_s[rows].sum() == pytest.approx(
            d.readings[-1][0] - d.readings[0][0], rel=1e-9, abs=1e-6
        )
        assert result.sample_count[rows].sum() == len(d.readings)
    kinds = result.pair_kind[result.pair_kind != PairKind.NO_PAIR]
    assert set(kinds.tolist()) <= {PairKind.OK, PairKind.ROLLOVER}
    assert np.count_nonzero(kinds == PairKind.ROLLOVER) == sum(d.rollovers for d in devices)
    assert len(result.anomalies) == np.count_nonzero(kinds == PairKind.ROLLOVER)


def one_meter(
    readings: list[tuple[float, float]],
    minutes: int,
    *,
    modulus: float = 0.0,
    max_rate: float = 10.0,
    resolution: float = 0.0,
    max_gap: float = 120.0,
    first_minute: int = MINUTE,
) -> CounterMinutes:
    return counter_deltas_by_minute(
        np.array([t for t, _ in readings], dtype=np.float64),
        np.array([v for _, v in readings], dtype=np.float64),
        np.array([0, len(readings)], dtype=np.int64),
        np.array([first_minute], dtype=np.int64),
        np.array([first_minute + minutes - 1], dtype=np.int64),
        np.array([modulus]),
        np.array([max_rate]),
        np.array([resolution]),
        max_gap,
    )


def labels(result: CounterMinutes) -> list[str]:
    return [PairKind(k).label for k in result.pair_kind.tolist()]


def test_rollover_at_the_modulus_counts_the_wrapped_rise() -> None:
    result = one_meter(
        [(T, 999_990.0), (T + 30, 999_998.0), (T + 60, 6.0), (T + 90, 10.0)],
        2,
        modulus=1_000_000.0,
    )
    assert labels(result) == ["ok", "rollover", "ok", "no_pair"]
    assert result.delta.tolist() == pytest.approx([8.0 + 8.0, 4.0])
    assert result.covered_s.tolist() == pytest.approx([60.0, 30.0])
    assert result.sample_count.tolist() == [2, 2]
    (counted,) = result.anomalies.counted_delta.tolist()
    assert counted == pytest.approx(8.0)
    assert result.anomalies.raw_delta.tolist() == pytest.approx([-999_992.0])


def test_fall_without_a_modulus_is_not_a_rollover() -> None:
    result = one_meter([(T, 999_990.0), (T + 30, 999_998.0), (T + 60, 6.0)], 1)
    assert labels(result) == ["ok", "reset", "no_pair"]
    assert result.pair_delta[1] == 6.0  # restarted from zero and counted 6 in 30 s


def test_reset_counts_the_new_value_when_plausible_and_nothing_when_not() -> None:
    # 5010 -> 3 in 30 s: a restart that has counted 3 (limit 300). 3 -> 5 ok.
    plausible = one_meter([(T, 5000.0), (T + 10, 5010.0), (T + 40, 3.0), (T + 50, 5.0)], 1)
    assert labels(plausible) == ["ok", "reset", "ok", "no_pair"]
    assert plausible.delta[0] == pytest.approx(10.0 + 3.0 + 2.0)
    assert plausible.covered_s[0] == pytest.approx(50.0)
    # A swapped meter reading 2000 after 5010: more than 300 could have been counted since,
    # so nothing is counted and the pair adds no coverage, but it is reported.
    swapped = one_meter([(T, 5000.0), (T + 10, 5010.0), (T + 40, 2000.0), (T + 50, 2020.0)], 1)
    assert labels(swapped) == ["ok", "reset", "ok", "no_pair"]
    assert swapped.delta[0] == pytest.approx(10.0 + 20.0)
    assert swapped.covered_s[0] == pytest.approx(20.0)
    assert swapped.anomalies.kind.tolist() == [PairKind.RESET]
    assert swapped.anomalies.raw_delta.tolist() == [-3010.0]
    assert np.isnan(swapped.anomalies.counted_delta).all()


def test_small_fall_is_negative_and_not_counted() -> None:
    result = one_meter([(T, 5000.0), (T + 10, 4999.0), (T + 20, 5009.0)], 1)
    assert labels(result) == ["negative", "ok", "no_pair"]
    assert result.delta[0] == pytest.approx(10.0)
    assert result.covered_s[0] == pytest.approx(10.0)
    assert result.anomalies.kind.tolist() == [PairKind.NEGATIVE]
    assert result.anomalies.raw_delta.tolist() == [-1.0]


def test_impossible_jump_is_rejected_and_the_next_pair_counts() -> None:
    # 10/s for 10 s allows 100 (+ resolution 1); 101 is fine, 102 is not.
    result = one_meter(
        [(T, 100.0), (T + 10, 201.0), (T + 20, 303.0), (T + 30, 313.0)], 1, resolution=1.0
    )
    assert labels(result) == ["ok", "rejected_jump", "ok", "no_pair"]
    assert result.delta[0] == pytest.approx(101.0 + 10.0)
    assert result.covered_s[0] == pytest.approx(20.0)
    assert result.anomalies.ts0_s.tolist() == [T + 10]
    assert result.anomalies.ts1_s.tolist() == [T + 20]
    assert result.anomalies.raw_delta.tolist() == [102.0]


def test_gap_longer_than_limit_is_not_bridged() -> None:
    result = one_meter([(T, 0.0), (T + 20, 40.0), (T + 200, 400.0)], 4, max_gap=60.0)
    assert labels(result) == ["ok", "gap", "no_pair"]
    assert result.delta.tolist() == pytest.approx([40.0, 0.0, 0.0, 0.0])
    assert result.covered_s.tolist() == pytest.approx([20.0, 0.0, 0.0, 0.0])
    assert result.sample_count.tolist() == [2, 0, 0, 1]
    assert result.anomalies.kind.tolist() == [PairKind.GAP]
    assert result.anomalies.raw_delta.tolist() == [360.0]


def test_pair_is_spread_over_the_minutes_it_spans_by_time() -> None:
    # 240 counted over 120 s from half past: 60 | 120 | 60 across three minutes.
    result = one_meter([(T + 30, 1000.0), (T + 150, 1240.0)], 4)
    assert result.delta.tolist() == pytest.approx([60.0, 120.0, 60.0, 0.0])
    assert result.covered_s.tolist() == pytest.approx([30.0, 60.0, 30.0, 0.0])
    assert result.sample_count.tolist() == [1, 0, 1, 0]


def test_reading_on_a_minute_boundary_belongs_to_the_minute_it_starts() -> None:
    result = one_meter([(T, 0.0), (T + 60, 60.0), (T + 120, 180.0)], 2)
    assert result.delta.tolist() == pytest.approx([60.0, 120.0])
    assert result.sample_count.tolist() == [1, 1]  # the third reading opens the next minute


def test_range_clips_pairs_and_their_anomalies() -> None:
    # Only the middle minute is asked for: the jump before it is not reported here.
    readings = [(T - 30, 0.0), (T - 20, 1e6), (T + 30, 1e6 + 50), (T + 90, 1e6 + 100)]
    result = one_meter(readings, 1)
    assert result.delta.tolist() == pytest.approx([30.0 + 25.0])
    assert result.covered_s.tolist() == pytest.approx([60.0])
    assert len(result.anomalies) == 0


def test_empty_and_single_reading_groups_report_their_minutes() -> None:
    result = counter_deltas_by_minute(
        np.array([T + 5], dtype=np.float64),
        np.array([42.0]),
        np.array([0, 0, 1, 1], dtype=np.int64),
        np.array([MINUTE, MINUTE, MINUTE], dtype=np.int64),
        np.array([MINUTE + 1, MINUTE, MINUTE], dtype=np.int64),
        np.zeros(3),
        np.full(3, 1.0),
        np.zeros(3),
        60.0,
    )
    assert result.group.tolist() == [0, 0, 1, 2]
    assert result.delta.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert result.sample_count.tolist() == [0, 0, 1, 0]
    assert labels(result) == ["no_pair"]
    assert len(result.anomalies) == 0


def test_no_groups_at_all() -> None:
    empty_f = np.zeros(0, dtype=np.float64)
    empty_i = np.zeros(0, dtype=np.int64)
    result = counter_deltas_by_minute(
        empty_f, empty_f, np.zeros(1, dtype=np.int64), empty_i, empty_i,
        empty_f, empty_f, empty_f, 60.0,
    )  # fmt: skip
    assert len(result.minute) == 0
    assert len(result.anomalies) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ts": [T, T]}, "strictly increase"),
        ({"value": [0.0, math.nan]}, "finite"),
        ({"modulus": 1000.0}, "whole modulus"),  # 10/s x 120 s can wrap 1000 unseen
        ({"max_rate": 0.0}, "max_rate"),
        ({"max_gap": 0.0}, "max_gap_s"),
    ],
)
def test_rejects_inconsistent_inputs(change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "ts": [T, T + 10],
        "value": [0.0, 1.0],
        "modulus": 0.0,
        "max_rate": 10.0,
        "max_gap": 120.0,
    } | change
    with pytest.raises(ValueError, match=message):
        counter_deltas_by_minute(
            np.array(args["ts"], dtype=np.float64),
            np.array(args["value"], dtype=np.float64),
            np.array([0, 2], dtype=np.int64),
            np.array([MINUTE], dtype=np.int64),
            np.array([MINUTE], dtype=np.int64),
            np.array([args["modulus"]], dtype=np.float64),
            np.array([args["max_rate"]], dtype=np.float64),
            np.zeros(1),
            args["max_gap"],
        )


def test_timestamps_may_restart_between_groups() -> None:
    result = counter_deltas_by_minute(
        np.array([T, T + 10, T, T + 10]),
        np.array([0.0, 5.0, 0.0, 7.0]),
        np.array([0, 2, 4], dtype=np.int64),
        np.array([MINUTE, MINUTE], dtype=np.int64),
        np.array([MINUTE, MINUTE], dtype=np.int64),
        np.zeros(2),
        np.full(2, 1.0),
        np.zeros(2),
        60.0,
    )
    assert result.delta.tolist() == pytest.approx([5.0, 7.0])


def test_counter_intervals_name_devices_method_and_reasons() -> None:
    windows = [DeviceWindow("em-1", MINUTE, MINUTE + 2), DeviceWindow("gas-1", MINUTE, MINUTE)]
    readings = CounterBatch(
        ts_s=np.array([T, T + 30, T + 60, T + 20, T + 40]),
        value=np.array([65_500.0, 65_530.0, 24.0, 10.0, 9_999.0]),
        group_starts=np.array([0, 3, 5], dtype=np.int64),
    )
    energy_meter = CounterRegister.for_energy_meter(3600.0, headroom=2.0, modulus_wh=65_536.0)
    gas_meter = CounterRegister(max_rate_per_s=0.01)
    intervals, anomalies = counter_intervals(
        windows, readings, [energy_meter, gas_meter], max_gap_s=120.0
    )
    assert intervals.method == COUNTER_DELTA_METHOD == "counter_delta"
    # The empty minute MINUTE + 2 of em-1 is left out; gas-1 counted nothing.
    assert intervals.device_id == ["em-1", "em-1", "gas-1"]
    assert intervals.minute == [MINUTE, MINUTE + 1, MINUTE]
    assert intervals.delta == pytest.approx([30.0 + 30.0, 0.0, 0.0])
    assert intervals.coverage == pytest.approx([1.0, 0.0, 0.0])
    assert intervals.sample_count == [2, 1, 2]
    assert [(a.device_id, a.kind, a.counted) for a in anomalies] == [
        ("em-1", PairKind.ROLLOVER, pytest.approx(30.0)),
        ("gas-1", PairKind.REJECTED_JUMP, None),
    ]
    assert anomalies[0].reason.startswith("rollover: changed by -65506 in 30 s")
    assert anomalies[1].reason == (
        "rejected_jump: changed by +9989 in 20 s; "
        "more than the 0.2 the meter can count in that time"
    )
    assert (anomalies[1].ts0_s, anomalies[1].ts1_s, anomalies[1].raw_delta) == (
        T + 20,
        T + 40,
        9989.0,
    )


def test_counter_intervals_need_one_register_per_window() -> None:
    batch = CounterBatch(np.zeros(0), np.zeros(0), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="one register"):
        counter_intervals([DeviceWindow("em-1", 0, 0)], batch, [], max_gap_s=60.0)


def test_energy_meter_rate_comes_from_rated_power() -> None:
    register = CounterRegister.for_energy_meter(7200.0, headroom=1.5)
    assert register.max_rate_per_s == pytest.approx(3.0)  # 7.2 kW x 1.5 = 3 Wh/s
    with pytest.raises(ValueError, match="rated power"):
        CounterRegister.for_energy_meter(0.0)
