"""A simulated meter: the adapter of ``protocol = "simulated"`` devices.

Active power comes from the simulator's :class:`~edge.simulator.factory.PowerModel`. The
energy register (``active_energy_import``, Wh) integrates that power on a fixed grid that
starts at ``counter_origin``: a left Riemann sum with one step per ``step_s``, so the
register never runs backwards, and its value at any time is a pure function of (seed,
device, machine kind, origin, time). Two meters built alike therefore read the same values
at the same instants, whichever instants each was asked about before; a test can recompute
every reading a gateway took.

Without an origin the register starts at zero at the first read, as a newly installed meter
does. Catching up from an origin far in the past costs one power sample per step; the catch
up yields to the event loop regularly so it never stalls other meters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Final

from edge.config import SimulatedDevice
from edge.errors import EdgeError
from edge.simulator.factory import (
    PROFILES,
    FactoryLayout,
    Line,
    Machine,
    MachineKind,
    Organisation,
    PowerModel,
    Site,
)
from schemas.telemetry import METRIC_UNITS, Reading

__all__ = [
    "SIMULATED_METRICS",
    "SimulatedMeter",
    "SimulatedMeterError",
    "simulated_layout",
]

#: What a simulated meter measures.
SIMULATED_METRICS: Final = ("active_power", "active_energy_import")

# Typical ratings of one machine of each kind: (rated, idle, standby) in W.
_RATINGS_W: Final[dict[MachineKind, tuple[float, float, float]]] = {
    MachineKind.CNC_MILL: (22_000.0, 2_500.0, 400.0),
    MachineKind.CNC_LATHE: (18_000.0, 1_500.0, 300.0),
    MachineKind.INJECTION_MOULDING: (45_000.0, 9_000.0, 600.0),
    MachineKind.WELDING_ROBOT: (18_000.0, 1_200.0, 200.0),
    MachineKind.CONVEYOR: (7_500.0, 600.0, 50.0),
    MachineKind.PAINT_BOOTH: (30_000.0, 3_000.0, 200.0),
    MachineKind.CURING_OVEN: (120_000.0, 9_000.0, 500.0),
    MachineKind.AIR_COMPRESSOR: (55_000.0, 15_000.0, 0.0),
    MachineKind.CHILLER: (45_000.0, 6_000.0, 0.0),
}

_ONE_US: Final = timedelta(microseconds=1)
# Grid steps integrated between two yields to the event loop while catching up.
_STEPS_PER_YIELD: Final = 2_000
_WH_PER_WS: Final = 1.0 / 3600.0


class SimulatedMeterError(EdgeError):
    """A simulated device asks for something the simulation cannot provide."""


def simulated_layout(gateway_id: str, devices: Sequence[SimulatedDevice]) -> FactoryLayout:
    """The simulated machines behind one gateway, as a layout the registry can take.

    Their site works around the clock in UTC, so production machines are never parked in
    standby by a shift plan the gateway's config cannot express.
    """
    org = Organisation(gateway_id, f"Simulated meters of {gateway_id}")
    site = Site(
        gateway_id,
        org.org_id,
        f"Simulated site of {gateway_id}",
        "UTC",
        "ZZ",
        "simulated",
        shift_start=time(0, 0),
        shift_end=time(0, 0),
        working_days=frozenset(range(7)),
    )
    line = Line(f"{gateway_id}-line", site.site_id, "Simulated machines")
    machines = []
    for device in devices:
        rated, idle, standby = _RATINGS_W[device.kind]
        machines.append(
            Machine(
                asset_id=f"{device.device_id}-machine",
                line_id=line.asset_id,
                site_id=site.site_id,
                device_id=device.device_id,
                gateway_id=gateway_id,
                kind=device.kind,
                name=f"Simulated {device.kind.value.replace('_', ' ')} {device.device_id}",
                rated_w=rated,
                idle_w=idle,
                standby_w=standby,
                profile=PROFILES[device.kind],
            )
        )
    return FactoryLayout(org, (site,), (line,), tuple(machines))


class SimulatedMeter:
    """One simulated machine's power meter (a :class:`~edge.adapters.base.MeterAdapter`)."""

    def __init__(
        self,
        model: PowerModel,
        machine: Machine,
        metrics: Sequence[str],
        *,
        counter_origin: datetime | None = None,
        step_s: float = 1.0,
    ) -> None:
        unsupported = [metric for metric in metrics if metric not in SIMULATED_METRICS]
        if unsupported:
            raise SimulatedMeterError(
                f"{machine.device_id}: a simulated meter cannot measure {', '.join(unsupported)};"
                f" it provides {', '.join(SIMULATED_METRICS)}"
            )
        if counter_origin is not None and counter_origin.utcoffset() is None:
            raise SimulatedMeterError("counter_origin must be timezone-aware")
        self._step_us = round(step_s * 1e6)
        if self._step_us < 1:
            raise SimulatedMeterError("step_s must be at least one microsecond")
        self._model = model
        self._machine = machine
        self._metrics = tuple(metrics)
        self._origin = counter_origin.astimezone(UTC) if counter_origin is not None else None
        # The register's running sum up to grid point number _steps (a left Riemann sum).
        self._steps = 0
        self._sum_wh = 0.0

    @classmethod
    def from_config(
        cls,
        device: SimulatedDevice,
        *,
        gateway_id: str,
        seed: int,
        counter_origin: datetime | None = None,
    ) -> SimulatedMeter:
        layout = simulated_layout(gateway_id, [device])
        return cls(
            PowerModel(layout, seed),
            layout.machine(device.device_id),
            device.metrics,
            counter_origin=counter_origin,
        )

    @property
    def device_id(self) -> str:
        return self._machine.device_id

    async def read(self, now: datetime) -> list[Reading]:
        await self._catch_up(now)
        return self.sample(now)

    async def close(self) -> None:
        """Nothing to release: there is no connection."""

    def sample(self, t: datetime) -> list[Reading]:
        """Every configured metric at ``t`` (timezone-aware), stamped ``t`` in UTC."""
        ts = t.astimezone(UTC)
        values = {
            "active_power": lambda: self.power_w(ts),
            "active_energy_import": lambda: self.energy_wh(ts),
        }
        return [
            Reading(ts=ts, metric=metric, value=values[metric](), unit=METRIC_UNITS[metric])
            for metric in self._metrics
        ]

    def power_w(self, t: datetime) -> float:
        return self._model.power_w(self._machine, t)

    def energy_wh(self, t: datetime) -> float:
        """The register at ``t``: 0 before the origin, never decreasing after it."""
        origin = self._origin_for(t)
        offset_us = (t - origin) // _ONE_US
        if offset_us <= 0:
            return 0.0
        step = offset_us // self._step_us
        self._integrate_to(step)
        last = origin + timedelta(microseconds=step * self._step_us)
        partial_s = (offset_us - step * self._step_us) / 1e6
        return self._sum_wh + self.power_w(last) * partial_s * _WH_PER_WS

    def _origin_for(self, t: datetime) -> datetime:
        if self._origin is None:
            self._origin = t.astimezone(UTC)
        return self._origin

    def _integrate_to(self, step: int) -> None:
        if step < self._steps:
            # Asked about an earlier time than before: sum again from the origin, in the
            # same order, so the value is the same as a fresh meter's.
            self._steps, self._sum_wh = 0, 0.0
        origin = self._origin
        assert origin is not None
        step_s = self._step_us / 1e6
        while self._steps < step:
            grid_point = origin + timedelta(microseconds=self._steps * self._step_us)
            self._sum_wh += self.power_w(grid_point) * step_s * _WH_PER_WS
            self._steps += 1

    async def _catch_up(self, now: datetime) -> None:
        """Integrate up to ``now`` in slices, letting other meters' polls run between them."""
        origin = self._origin_for(now)
        target = max(0, ((now - origin) // _ONE_US) // self._step_us)
        while target - self._steps > _STEPS_PER_YIELD:
            self._integrate_to(self._steps + _STEPS_PER_YIELD)
            await asyncio.sleep(0)
