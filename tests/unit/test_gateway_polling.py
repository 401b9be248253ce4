"""Per-device polling: a hung, a raising and a stubborn meter never stall the healthy ones.

The misbehaving meters here are our own test doubles of broken meters (a read that never
returns, one that fails, one that even ignores cancellation); the healthy meters are the
real simulated-meter adapter. Assertions count polls in a window against what the
configured rates and backoff allow, with generous margins: they check behaviour, not speed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from edge.adapters.base import MeterReadError
from edge.adapters.simulated import SimulatedMeter
from edge.config import BackoffSettings, SimulatedDevice
from edge.gateway.polling import DevicePoller, backoff_delay, next_tick
from schemas.telemetry import Reading

INTERVAL_S = 0.1
TIMEOUT_S = 0.05
BACKOFF = BackoffSettings(initial_s=0.1, multiplier=2.0, max_s=0.4)
BROKEN_S = 2.0
HEALED_S = 1.5


class BrokenMeter:
    """Base of the test doubles: answers like a meter once ``heal()`` has been called."""

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        self.healed = asyncio.Event()
        self.reads = 0
        self.closes = 0

    @property
    def device_id(self) -> str:
        return self._device_id

    def heal(self) -> None:
        self.healed.set()

    async def read(self, now: datetime) -> list[Reading]:
        self.reads += 1
        if not self.healed.is_set():
            await self.misbehave()
        return [Reading(ts=now, metric="active_power", value=1.0, unit="W")]

    async def misbehave(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        self.closes += 1


class HungMeter(BrokenMeter):
    """Never answers (until healed): the read just waits."""

    async def misbehave(self) -> None:
        await asyncio.Event().wait()


class RaisingMeter(BrokenMeter):
    """Refuses every read at once, as an unreachable meter does."""

    async def misbehave(self) -> None:
        raise MeterReadError(self.device_id, "connection refused")


class BuggyMeter(BrokenMeter):
    """An adapter with a bug: raises something that is not a MeterReadError."""

    async def misbehave(self) -> None:
        raise ZeroDivisionError("register scale is zero")


class StubbornMeter(BrokenMeter):
    """A read that ignores cancellation and only ends when the meter heals."""

    async def misbehave(self) -> None:
        while not self.healed.is_set():
            try:
                await self.healed.wait()
            except asyncio.CancelledError:
                continue  # deliberately swallowed: this is the broken behaviour under test


@dataclass
class Recorder:
    """The poll listener: when each device answered or failed (event-loop time)."""

    answers: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))

    async def polled(self, device_id: str, readings: list[Reading]) -> None:
        assert readings
        self.answers[device_id].append(asyncio.get_running_loop().time())

    def failed(self, device_id: str, reason: str) -> None:
        self.failures[device_id].append((asyncio.get_running_loop().time(), reason))


def simulated(device_id: str) -> SimulatedMeter:
    config = SimulatedDevice(
        device_id=device_id,
        protocol="simulated",
        kind="conveyor",
        metrics=("active_power", "active_energy_import"),
        poll_interval_s=INTERVAL_S,
        timeout_s=TIMEOUT_S,
        backoff=BACKOFF,
    )
    return SimulatedMeter.from_config(config, gateway_id="gw-1", seed=11)


def most_attempts(window_s: float, fails_after_s: float) -> int:
    """Failed attempts the backoff allows in ``window_s`` if each takes ``fails_after_s``."""
    t, attempts = 0.0, 0
    while t <= window_s:
        attempts += 1
        t += fails_after_s + backoff_delay(BACKOFF, attempts)
    return attempts


def count_between(times: list[float], start: float, end: float) -> int:
    return sum(start <= t < end for t in times)


def test_backoff_grows_by_the_multiplier_up_to_the_maximum() -> None:
    settings = BackoffSettings(initial_s=1.0, multiplier=3.0, max_s=20.0)
    assert [backoff_delay(settings, n) for n in range(1, 6)] == pytest.approx([1, 3, 9, 20, 20])
    assert backoff_delay(settings, 10_000) == 20.0  # no overflow after a long outage


def test_ticks_keep_to_their_grid_and_skip_missed_ones() -> None:
    assert next_tick(10.0, 2.0, 10.0) == 12.0
    assert next_tick(10.0, 2.0, 11.9) == 12.0
    assert next_tick(10.0, 2.0, 17.3) == 18.0  # 12, 14 and 16 were missed: no burst


def test_broken_meters_back_off_and_recover_while_healthy_ones_keep_their_rate() -> None:
    healthy = [simulated(f"healthy-{i}") for i in range(3)]
    broken: list[BrokenMeter] = [
        HungMeter("hung"),
        RaisingMeter("raising"),
        BuggyMeter("buggy"),
        StubbornMeter("stubborn"),
    ]
    recorder = Recorder()

    async def scenario() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        pollers = [
            DevicePoller(
                meter,
                recorder,
                poll_interval_s=INTERVAL_S,
                timeout_s=TIMEOUT_S,
                backoff=BACKOFF,
                clock=lambda: datetime.now(UTC),
            )
            for meter in [*healthy, *broken]
        ]
        tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
        start = loop.time()
        await asyncio.sleep(BROKEN_S)
        healed_at = loop.time()
        for meter in broken:
            meter.heal()
        await asyncio.sleep(HEALED_S)
        end = loop.time()
        stop.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks)
        return start, healed_at, end

    start, healed_at, end = asyncio.run(scenario())

    # Healthy meters keep their rate through the whole run, broken neighbours or not.
    expected = (end - start) / INTERVAL_S
    for meter in healthy:
        polls = count_between(recorder.answers[meter.device_id], start, end)
        assert 0.7 * expected <= polls <= expected + 2, (meter.device_id, polls, expected)
        assert meter.device_id not in recorder.failures

    for meter in broken:
        failures = recorder.failures[meter.device_id]
        times = [t for t, _ in failures]
        # Backed off: no more attempts than the schedule allows, far fewer than polls.
        fails_after = TIMEOUT_S if isinstance(meter, HungMeter | StubbornMeter) else 0.0
        assert 3 <= len(failures) <= most_attempts(BROKEN_S, fails_after) + 1, meter.device_id
        # ...and each wait at least as long as the configured delay for its place.
        for n, (earlier, later) in enumerate(itertools.pairwise(times), start=1):
            assert later - earlier >= backoff_delay(BACKOFF, n) - 0.01, (meter.device_id, n)
        # Recovered: answering at the regular rate soon after healing.
        answers = count_between(recorder.answers[meter.device_id], healed_at, end)
        recovery_s = BACKOFF.max_s + TIMEOUT_S + INTERVAL_S
        assert answers >= 0.6 * (end - healed_at - recovery_s) / INTERVAL_S, meter.device_id

    reasons = {m.device_id: {r for _, r in recorder.failures[m.device_id]} for m in broken}
    assert reasons["hung"] == {f"no answer within {TIMEOUT_S:g} s"}
    assert reasons["raising"] == {"connection refused"}
    assert all(r.startswith("adapter error: ZeroDivisionError") for r in reasons["buggy"])
    assert f"no answer within {TIMEOUT_S:g} s" in reasons["stubborn"]
    assert any("still running" in r for r in reasons["stubborn"])

    hung, raising, _, stubborn = broken
    # A timed-out read gets its connection dropped; a refused read does not need that.
    assert hung.closes >= 3
    assert raising.closes == 0
    # The stubborn read was never doubled up: one read in flight, then none until healed.
    assert stubborn.reads <= 1 + len(recorder.answers["stubborn"]) + 1
