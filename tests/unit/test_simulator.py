"""The simulated factory: layout, deterministic power model, sampling, batches, run loops."""

from __future__ import annotations

import itertools
import math
import random
import re
import statistics
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.simulator.batching import BatchBuilder, new_session_id
from edge.simulator.factory import (
    FactoryLayout,
    Line,
    Machine,
    MachineKind,
    Organisation,
    PowerModel,
    Site,
    demo_factory,
    is_working,
    sample_times,
    simulate,
    small_factory,
)
from edge.simulator.runner import replay, run_live
from edge.simulator.settings import SimulatorSettings
from schemas.telemetry import METRIC_UNITS, Quality, TelemetryBatch

CONTRACT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LAYOUT = demo_factory()
MACHINES = LAYOUT.machines
ZONES = [UTC, ZoneInfo("Asia/Shanghai"), ZoneInfo("Europe/Warsaw"), ZoneInfo("America/Chicago")]

instants = st.datetimes(
    min_value=datetime(2020, 1, 1),
    max_value=datetime(2035, 12, 31),
    timezones=st.sampled_from(ZONES),
)
machines = st.sampled_from(MACHINES)


def _site(site_id: str) -> Site:
    return LAYOUT.site(site_id)


def _local(site: Site, year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    """A wall-clock time at the site (never a DST gap or fold in these tests)."""
    return datetime(year, month, day, hour, minute, tzinfo=site.zone)


def _mean_power(model: PowerModel, machine: Machine, start: datetime, hours: float) -> float:
    times = sample_times(start, start + timedelta(hours=hours), 10.0)
    return statistics.fmean(model.power_w(machine, t) for t in times)


# -- layout ------------------------------------------------------------------------------------


def test_demo_factory_has_two_sites_in_different_time_zones_and_twenty_machines() -> None:
    assert len(LAYOUT.sites) >= 2
    assert len({s.timezone for s in LAYOUT.sites}) == len(LAYOUT.sites)
    assert len(MACHINES) >= 20
    for site in LAYOUT.sites:
        assert len(LAYOUT.lines_at(site.site_id)) >= 3
        assert len({m.gateway_id for m in LAYOUT.machines_at(site.site_id)}) == 1
    assert {m.kind for m in MACHINES} == set(MachineKind)


def test_demo_factory_ids_are_valid_unique_and_consistent() -> None:
    ids = [LAYOUT.organisation.org_id]
    ids += [s.site_id for s in LAYOUT.sites] + [a.asset_id for a in LAYOUT.areas]
    ids += [line.asset_id for line in LAYOUT.lines] + [m.asset_id for m in MACHINES]
    ids += [m.device_id for m in MACHINES] + list(LAYOUT.gateways())
    for value in ids:
        assert CONTRACT_ID.match(value), value
        assert len(value) <= 64, value
    assert len(set(ids)) == len(ids)
    lines = {line.asset_id: line for line in LAYOUT.lines}
    for m in MACHINES:
        assert lines[m.line_id].site_id == m.site_id
        assert METRIC_UNITS[m.metric] == m.unit == "W"
        assert m.energy_carrier == "electricity"
        assert LAYOUT.machine(m.device_id) is m
    assert LAYOUT.devices() == tuple(m.device_id for m in MACHINES)


def test_small_factory_builds_any_number_of_devices() -> None:
    layout = small_factory(137, prefix="bench")
    assert len(layout.machines) == 137
    assert len(set(layout.devices())) == 137
    assert all(d.startswith("bench-") for d in layout.devices())
    assert len({s.timezone for s in layout.sites}) == 2
    assert not set(layout.devices()) & set(LAYOUT.devices())


def test_layout_rejects_inconsistent_trees_and_bad_ids() -> None:
    org = Organisation("o1", "Org")
    site = Site("s1", "o1", "Site", "Europe/Warsaw", "PL", "PL")
    with pytest.raises(ValueError, match="invalid site id"):
        Site("-bad", "o1", "Site", "Europe/Warsaw", "PL", "PL")
    with pytest.raises(ValueError, match="country"):
        Site("s2", "o1", "Site", "Europe/Warsaw", "pl", "PL")
    with pytest.raises(ValueError, match="unknown site"):
        FactoryLayout(org, (site,), (Line("l1", "elsewhere", "Line"),), ())
    machine = MACHINES[0]
    with pytest.raises(ValueError, match="no line"):
        FactoryLayout(org, (site,), (Line("l1", "s1", "Line"),), (machine,))
    with pytest.raises(KeyError):
        LAYOUT.machine("no-such-device")


# -- power model -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed=st.integers(min_value=0, max_value=2**63), machine=machines, t=instants)
def test_power_is_finite_and_never_negative(seed: int, machine: Machine, t: datetime) -> None:
    value = PowerModel(LAYOUT, seed).power_w(machine, t)
    assert math.isfinite(value)
    assert value >= 0.0


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    start=instants,
    offsets=st.lists(st.integers(min_value=0, max_value=7 * 86_400), min_size=2, max_size=30),
)
def test_same_seed_same_values_whatever_the_call_order(
    seed: int, start: datetime, offsets: list[int]
) -> None:
    times = [start + timedelta(seconds=s) for s in offsets]
    pairs = [(m, t) for m in MACHINES[::3] for t in times]
    forward = [PowerModel(LAYOUT, seed).power_w(m, t) for m, t in pairs]
    other = PowerModel(LAYOUT, seed)
    backward = [other.power_w(m, t) for m, t in reversed(pairs)]
    assert forward == backward[::-1]
    # The instant matters, not the zone it is written in.
    assert forward == [other.power_w(m, t.astimezone(UTC)) for m, t in pairs]


def test_a_fresh_model_reproduces_a_single_sample_out_of_sequence() -> None:
    start = datetime(2025, 6, 2, 6, 0, tzinfo=UTC)
    machine = LAYOUT.machine("sz-imm-01")
    series = [
        PowerModel(LAYOUT, 7).power_w(machine, t)
        for t in sample_times(start, start + timedelta(hours=1), 1.0)
    ]
    late = start + timedelta(seconds=2345)
    assert PowerModel(LAYOUT, 7).power_w(machine, late) == series[2345]


def test_different_seeds_give_different_series() -> None:
    start = datetime(2025, 6, 2, 2, 0, tzinfo=UTC)
    times = list(sample_times(start, start + timedelta(hours=2), 10.0))
    for machine in MACHINES:
        a = [PowerModel(LAYOUT, 1).power_w(machine, t) for t in times]
        b = [PowerModel(LAYOUT, 2).power_w(machine, t) for t in times]
        assert a != b, machine.device_id


def test_power_model_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        PowerModel(LAYOUT, 1).power_w(MACHINES[0], datetime(2025, 1, 1))


@pytest.mark.parametrize("site_id", [s.site_id for s in LAYOUT.sites])
def test_production_runs_in_weekday_shifts_and_rests_on_sunday_night(site_id: str) -> None:
    site = _site(site_id)
    model = PowerModel(LAYOUT, 42)
    wednesday_shift = _local(site, 2025, 6, 4, 6, 0)
    sunday_night = _local(site, 2025, 6, 8, 0, 0)
    for machine in LAYOUT.machines_at(site_id):
        shift = _mean_power(model, machine, wednesday_shift, 16)
        night = _mean_power(model, machine, sunday_night, 5)
        if machine.is_production:
            assert shift > 3 * night, machine.device_id
            assert night <= machine.standby_w * 1.2, machine.device_id
        else:  # utilities keep a base load at night, leaks and all
            assert shift > night > machine.idle_w * 0.9, machine.device_id


def test_shift_start_follows_the_local_clock_across_dst_changes() -> None:
    wroclaw, suzhou = _site("pl-wroclaw"), _site("cn-suzhou")
    # Europe/Warsaw moves to CEST on Sunday 30 March 2025 and back on Sunday 26 October.
    friday_before = datetime(2025, 3, 28, tzinfo=UTC)
    monday_after = datetime(2025, 3, 31, tzinfo=UTC)
    assert not is_working(wroclaw, friday_before.replace(hour=4, minute=30))  # 05:30 CET
    assert is_working(wroclaw, friday_before.replace(hour=5, minute=0))  # 06:00 CET
    assert is_working(wroclaw, monday_after.replace(hour=4, minute=0))  # 06:00 CEST
    assert not is_working(wroclaw, monday_after.replace(hour=3, minute=59))
    assert is_working(wroclaw, datetime(2025, 10, 24, 4, 0, tzinfo=UTC))  # 06:00 CEST
    assert not is_working(wroclaw, datetime(2025, 10, 27, 4, 30, tzinfo=UTC))  # 05:30 CET
    assert is_working(wroclaw, datetime(2025, 10, 27, 5, 0, tzinfo=UTC))
    # Suzhou has no DST: its shift starts at 22:00 UTC the evening before, all year.
    for day in (datetime(2025, 3, 30, tzinfo=UTC), datetime(2025, 10, 26, tzinfo=UTC)):
        assert not is_working(suzhou, day.replace(hour=21, minute=59))
        assert is_working(suzhou, day.replace(hour=22))

    # The same UTC hour is before the shift on the Friday and inside it on the Monday.
    model = PowerModel(LAYOUT, 42)
    production = [m for m in LAYOUT.machines_at("pl-wroclaw") if m.kind != MachineKind.CURING_OVEN]
    production = [m for m in production if m.is_production]

    def fleet_mean(day: datetime) -> float:
        window = day.replace(hour=4, minute=15)
        return statistics.fmean(_mean_power(model, m, window, 0.5) for m in production)

    assert fleet_mean(monday_after) > 5 * fleet_mean(friday_before)


def test_oven_preheats_before_the_shift_then_cycles_its_heaters() -> None:
    oven = LAYOUT.machine("wro-oven-01")
    site = _site(oven.site_id)
    model = PowerModel(LAYOUT, 42)
    preheat = _local(site, 2025, 6, 4, 5, 30)
    assert all(
        model.power_w(oven, t) > 0.9 * oven.rated_w
        for t in sample_times(preheat, preheat + timedelta(minutes=20), 30.0)
    )
    shift = [
        model.power_w(oven, t)
        for t in sample_times(_local(site, 2025, 6, 4, 9, 0), _local(site, 2025, 6, 4, 13, 0), 5.0)
    ]
    high = sum(v > (oven.rated_w + oven.idle_w) / 2 for v in shift) / len(shift)
    assert 0.3 < high < 0.6  # thermostat duty around 45 %
    switches = sum(
        (a > oven.rated_w / 2) != (b > oven.rated_w / 2) for a, b in itertools.pairwise(shift)
    )
    assert switches > 40  # a 7-minute thermostat period over 4 hours


def test_motor_starts_show_a_short_inrush_peak_above_rated_power() -> None:
    conveyor = LAYOUT.machine("sz-conv-01")
    site = _site(conveyor.site_id)
    model = PowerModel(LAYOUT, 42)
    start = _local(site, 2025, 6, 3, 6, 0)
    times = list(sample_times(start, start + timedelta(hours=16), 1.0))
    values = [model.power_w(conveyor, t) for t in times]
    peaks = [i for i, v in enumerate(values) if v > conveyor.rated_w]
    assert peaks, "no start-up peak in a whole day"
    for i in peaks:  # every value above rated power comes within seconds of an idle sample
        assert min(values[max(0, i - 3) : i]) < 1.2 * conveyor.idle_w
    assert len(peaks) < 0.01 * len(values)


# -- sampling and batches ----------------------------------------------------------------------


def test_sample_times_form_a_regular_utc_grid_excluding_the_end() -> None:
    start = datetime(2025, 3, 30, 3, 0, tzinfo=ZoneInfo("Europe/Warsaw"))
    times = list(sample_times(start, start + timedelta(seconds=10), 2.5))
    assert len(times) == 4
    assert all(t.tzinfo is UTC for t in times)
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [2.5] * 3
    assert list(sample_times(start, start, 1.0)) == []


def test_simulate_batches_validate_and_number_each_device_from_zero() -> None:
    layout = small_factory(5)
    model = PowerModel(layout, 3)
    builder = BatchBuilder(new_session_id(random.Random(3)))
    start = datetime(2025, 6, 4, 8, 0, tzinfo=UTC)
    sent_at = start + timedelta(hours=1)
    batches = [
        builder.build(machine, chunk, sent_at)
        for machine, chunk in simulate(layout, model, start, start + timedelta(seconds=25), 1.0, 10)
    ]
    assert len(batches) == 3 * 5
    seqs: dict[str, list[int]] = {}
    for batch in batches:
        again = TelemetryBatch.model_validate_json(batch.model_dump_json())
        assert again == batch
        machine = layout.machine(batch.device_id)
        assert batch.gateway_id == machine.gateway_id
        assert all(
            r.unit == "W"
            and r.metric == "active_power"
            and r.quality is Quality.GOOD
            and r.ts.utcoffset() == timedelta(0)
            for r in batch.readings
        )
        seqs.setdefault(batch.device_id, []).append(batch.seq)
    assert seqs == {d: [0, 1, 2] for d in layout.devices()}
    assert [len(b.readings) for b in batches[:5]] == [10] * 5
    assert [len(b.readings) for b in batches[-5:]] == [5] * 5


def test_session_ids_are_reproducible_from_a_seed_and_valid() -> None:
    rng = random.Random
    assert new_session_id(rng(1)) == new_session_id(rng(1)) != new_session_id(rng(2))
    assert CONTRACT_ID.match(new_session_id(rng(1)))


# -- run loops (a collecting sink and a fake clock stand in for MQTT and time) -------------------


class CollectingSink:
    def __init__(self) -> None:
        self.batches: list[TelemetryBatch] = []
        self.flushes = 0

    def publish_batch(self, batch: TelemetryBatch) -> None:
        self.batches.append(batch)

    def flush(self, timeout: float) -> None:
        self.flushes += 1


class FakeClock:
    def __init__(self, now: float, until: float, stop: threading.Event) -> None:
        self.now, self.until, self.stop = now, until, stop

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        if self.now + seconds >= self.until:
            self.stop.set()
            return True
        self.now += seconds
        return False


def test_live_mode_samples_on_the_grid_and_publishes_every_batch_interval() -> None:
    layout = small_factory(3)
    sink, stop = CollectingSink(), threading.Event()
    clock = FakeClock(1_750_000_000.3, 1_750_000_013.0, stop)
    summary = run_live(
        sink,
        PowerModel(layout, 1),
        BatchBuilder("live-test"),
        stop,
        interval_s=1.0,
        batch_interval_s=5.0,
        flush_timeout_s=1.0,
        clock=clock,
        wait=clock.wait,
    )
    assert sink.flushes == 1
    assert summary.batches == len(sink.batches) == 9
    assert summary.readings == 3 * 12
    for device in layout.devices():
        mine = [b for b in sink.batches if b.device_id == device]
        assert [b.seq for b in mine] == [0, 1, 2]
        assert [len(b.readings) for b in mine] == [5, 5, 2]
        stamps = [r.ts.timestamp() for b in mine for r in b.readings]
        assert stamps == [1_750_000_001.0 + i for i in range(12)]


def test_replay_publishes_the_range_once_and_flushes() -> None:
    layout = small_factory(4)
    sink = CollectingSink()
    start = datetime(2025, 6, 4, 8, 0, tzinfo=UTC)
    summary = replay(
        sink,
        PowerModel(layout, 1),
        BatchBuilder("replay-test"),
        start,
        start + timedelta(minutes=10),
        interval_s=1.0,
        batch_size=120,
        flush_timeout_s=1.0,
        now=lambda: start,
    )
    assert sink.flushes == 1
    assert (summary.batches, summary.readings) == (4 * 5, 4 * 600)
    stamps = {(b.device_id, r.ts) for b in sink.batches for r in b.readings}
    assert len(stamps) == 4 * 600


def test_simulator_settings_defaults_and_validation() -> None:
    sim = SimulatorSettings()
    assert (sim.seed, sim.interval_s, sim.batch_interval_s) == (42, 1.0, 5.0)
    with pytest.raises(ValueError, match="batch_interval_s"):
        SimulatorSettings(interval_s=10.0, batch_interval_s=5.0)
