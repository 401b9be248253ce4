"""The emissions kernel against its naive twin, plus the cases a caller relies on."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.stream.emission_kernels import emissions_by_interval
from tests import naive

BASE_MINUTE = 28_401_120  # 2024-01-01T00:00Z in epoch minutes
I64 = np.int64


def epoch_minute(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) // 60


Group = tuple[list[tuple[int, float]], list[tuple[int, float, int]]]


@st.composite
def group(draw: st.DrawFn) -> Group:
    starts = draw(
        st.lists(st.integers(BASE_MINUTE, BASE_MINUTE + 300), unique=True, min_size=0, max_size=8)
    )
    breakpoints = []
    for start in sorted(starts):
        if draw(st.integers(0, 5)) == 0:  # now and then the factor stops (gap, series end)
            breakpoints.append((start, math.nan, -1))
        else:
            value = draw(st.floats(0.0, 2.0, allow_nan=False))
            breakpoints.append((start, value, draw(st.integers(0, 20))))
    intervals = draw(
        st.lists(
            st.tuples(
                st.integers(BASE_MINUTE - 30, BASE_MINUTE + 360),  # any order, repeats allowed
                st.floats(0.0, 1e4, allow_nan=False),
            ),
            max_size=40,
        )
    )
    return intervals, breakpoints


def run(groups: list[Group]) -> tuple[np.ndarray, np.ndarray]:
    intervals = [iv for ivs, _ in groups for iv in ivs]
    points = [bp for _, bps in groups for bp in bps]
    result = emissions_by_interval(
        np.array([m for m, _ in intervals], dtype=I64),
        np.array([k for _, k in intervals], dtype=np.float64),
        np.cumsum([0] + [len(ivs) for ivs, _ in groups]).astype(I64),
        np.array([m for m, _, _ in points], dtype=I64),
        np.array([v for _, v, _ in points], dtype=np.float64),
        np.array([i for _, _, i in points], dtype=I64),
        np.cumsum([0] + [len(bps) for _, bps in groups]).astype(I64),
    )
    return result.kg_co2e, result.factor_index


@settings(max_examples=400, deadline=None, derandomize=True)
@given(groups=st.lists(group(), min_size=0, max_size=5))
def test_kernel_matches_naive_twin(groups: list[Group]) -> None:
    kg, used = run(groups)
    expected = [row for ivs, bps in groups for row in naive.emissions_by_interval(ivs, bps)]
    assert len(kg) == len(expected)
    for k, (kg_expected, index_expected) in enumerate(expected):
        assert used[k] == index_expected
        if math.isnan(kg_expected):
            assert math.isnan(kg[k])
        else:
            assert kg[k] == kg_expected  # one multiplication: bit-identical


def test_restated_factor_applies_from_its_breakpoint() -> None:
    # Factor versions in the caller's list: 0 = CN_GRID_EAST_2022 (0.5617 kgCO2/kWh),
    # 1 = CN_GRID_EAST_2023 (0.5500). Minutes either side of 2023-01-01T00:00Z, and one
    # minute in 2021, before the series starts.
    new_year = epoch_minute(2023, 1, 1)
    kg, used = run(
        [
            (
                [(new_year - 1, 10.0), (new_year, 10.0), (epoch_minute(2021, 6, 1), 10.0)],
                [(epoch_minute(2022, 1, 1), 0.5617, 0), (new_year, 0.5500, 1)],
            )
        ]
    )
    assert kg[:2] == pytest.approx([5.617, 5.5])
    assert list(used) == [0, 1, -1]
    assert math.isnan(kg[2])


def test_groups_have_their_own_series() -> None:
    # Group 0: CN-East 0.5500; group 1: CN-Southwest 0.2472 (2023 regional averages).
    # Group 1's breakpoint is earlier than group 0's: boundaries may go back in time.
    m = epoch_minute(2023, 5, 1)
    kg, used = run(
        [
            ([(m, 2.0)], [(epoch_minute(2023, 1, 1), 0.5500, 7)]),
            ([(m, 2.0)], [(epoch_minute(2022, 1, 1), 0.2472, 3)]),
        ]
    )
    assert kg == pytest.approx([1.1, 0.4944])
    assert list(used) == [7, 3]


def test_end_of_series_marker_stops_the_factor() -> None:
    hour = epoch_minute(2024, 7, 1)
    kg, used = run(
        [([(hour + 59, 1.0), (hour + 60, 1.0)], [(hour, 0.61, 0), (hour + 60, math.nan, -1)])]
    )
    assert kg[0] == pytest.approx(0.61)
    assert math.isnan(kg[1])
    assert list(used) == [0, -1]


def test_empty_input() -> None:
    kg, used = run([])
    assert len(kg) == 0
    assert len(used) == 0


def args(**overrides: np.ndarray) -> dict[str, np.ndarray]:
    base = {
        "minute": np.array([BASE_MINUTE], dtype=I64),
        "kwh": np.array([1.0]),
        "interval_starts": np.array([0, 1], dtype=I64),
        "breakpoint_minute": np.array([BASE_MINUTE, BASE_MINUTE + 60], dtype=I64),
        "breakpoint_kg_per_kwh": np.array([0.5, 0.6]),
        "breakpoint_factor": np.array([0, 1], dtype=I64),
        "breakpoint_starts": np.array([0, 2], dtype=I64),
    }
    return base | overrides


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"breakpoint_minute": np.array([BASE_MINUTE, BASE_MINUTE], dtype=I64)}, "increasing"),
        ({"breakpoint_kg_per_kwh": np.array([0.5, -0.1])}, "non-negative"),
        ({"breakpoint_kg_per_kwh": np.array([0.5, np.inf])}, "finite"),
        ({"breakpoint_factor": np.array([0, -1], dtype=I64)}, "NaN"),
        ({"breakpoint_factor": np.array([0, -2], dtype=I64)}, "index or -1"),
        ({"breakpoint_starts": np.array([0, 1], dtype=I64)}, "from 0 to"),
        ({"interval_starts": np.array([0, 1, 1], dtype=I64)}, "same length"),
        ({"kwh": np.array([1.0, 2.0])}, "same length"),
    ],
)
def test_rejects_inconsistent_inputs(overrides: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        emissions_by_interval(**args(**overrides))
