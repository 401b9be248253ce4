"""The simulated meter adapter: values are a pure function of time, the register only rises."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from edge.adapters.simulated import SimulatedMeter, SimulatedMeterError, simulated_layout
from edge.config import SimulatedDevice
from edge.simulator.factory import MachineKind, PowerModel

ORIGIN = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SEED = 7


def device(kind: MachineKind = MachineKind.AIR_COMPRESSOR, **fields: object) -> SimulatedDevice:
    return SimulatedDevice.model_validate(
        {
            "device_id": "sim-comp-1",
            "protocol": "simulated",
            "kind": kind,
            "metrics": ["active_power", "active_energy_import"],
            "poll_interval_s": 1.0,
            "timeout_s": 0.5,
            **fields,
        }
    )


def meter(seed: int = SEED, origin: datetime | None = ORIGIN, **fields: object) -> SimulatedMeter:
    return SimulatedMeter.from_config(
        device(**fields), gateway_id="gw-1", seed=seed, counter_origin=origin
    )


def values(readings: list) -> dict[str, float]:  # type: ignore[type-arg]
    return {r.metric: r.value for r in readings}


def test_power_is_the_power_models() -> None:
    sim = meter()
    config = device()
    layout = simulated_layout("gw-1", [config])
    model = PowerModel(layout, SEED)
    t = ORIGIN + timedelta(minutes=5, microseconds=1234)
    readings = sim.sample(t)
    assert values(readings)["active_power"] == model.power_w(layout.machine("sim-comp-1"), t)
    assert {r.unit for r in readings} == {"W", "Wh"}
    assert {r.ts for r in readings} == {t}


def test_readings_do_not_depend_on_what_was_read_before() -> None:
    rng = random.Random(3)
    times = sorted(ORIGIN + timedelta(seconds=rng.uniform(0, 900)) for _ in range(40))
    steady = meter()
    history = [values(steady.sample(t)) for t in times]
    # Another meter asked about the same instants in another order, one at a time, fresh.
    shuffled = list(enumerate(times))
    rng.shuffle(shuffled)
    for index, t in shuffled:
        assert values(meter().sample(t)) == history[index]


def test_the_energy_register_rises_by_the_integral_of_power() -> None:
    sim = meter()
    times = [ORIGIN + timedelta(seconds=0.37 * k) for k in range(3000)]
    energy = [values(sim.sample(t))["active_energy_import"] for t in times]
    assert energy[0] == 0.0
    assert all(later >= earlier for earlier, later in itertools.pairwise(energy))
    # Over the whole span the register agrees with a fine sum of the same power.
    span_s = times[-1].timestamp() - ORIGIN.timestamp()
    fine = sum(
        sim.power_w(ORIGIN + timedelta(seconds=0.05 * k)) * 0.05 / 3600
        for k in range(round(span_s * 20))
    )
    assert energy[-1] == pytest.approx(fine, rel=0.02)
    assert energy[-1] > 0


def test_without_an_origin_the_register_starts_at_zero_at_the_first_read() -> None:
    sim = meter(origin=None)
    first = ORIGIN + timedelta(hours=3)
    assert values(sim.sample(first))["active_energy_import"] == 0.0
    assert values(sim.sample(first + timedelta(seconds=30)))["active_energy_import"] > 0.0


def test_a_seed_gives_its_own_values() -> None:
    t = ORIGIN + timedelta(minutes=3)
    assert values(meter(seed=1).sample(t)) != values(meter(seed=2).sample(t))


def test_read_catches_up_from_a_distant_origin() -> None:
    sim = meter(origin=ORIGIN - timedelta(hours=2))

    async def read() -> list:  # type: ignore[type-arg]
        return await sim.read(ORIGIN)

    assert values(asyncio.run(read())) == values(
        meter(origin=ORIGIN - timedelta(hours=2)).sample(ORIGIN)
    )


def test_unsupported_metrics_are_refused_with_their_names() -> None:
    with pytest.raises(SimulatedMeterError, match="voltage"):
        meter(metrics=["active_power", "voltage"])
