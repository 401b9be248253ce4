"""From a device's config to the adapter that reads it.

Protocol modules are imported only when a device needs them, so a gateway without, say,
OPC UA support installed still runs its Modbus and simulated meters; the device that cannot
be served is reported unavailable instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from edge.adapters.base import MeterAdapter
from edge.config import DeviceConfig, ModbusTcpDevice, OpcUaDevice, SimulatedDevice
from edge.errors import EdgeError

AdapterFactory = Callable[[DeviceConfig], MeterAdapter]


class AdapterUnavailableError(EdgeError):
    """No adapter could be made for a configured device (support missing or config refused)."""

    def __init__(self, device_id: str, reason: str) -> None:
        self.device_id = device_id
        self.reason = reason
        super().__init__(f"{device_id}: {reason}")


@dataclass(frozen=True, slots=True)
class SimulationSettings:
    """What simulated meters need besides their device config."""

    gateway_id: str
    seed: int
    counter_origin: datetime | None = None


def adapter_factory(simulation: SimulationSettings) -> AdapterFactory:
    """The factory the gateway uses; raises ``AdapterUnavailableError``."""

    def build(device: DeviceConfig) -> MeterAdapter:
        try:
            return _build(device, simulation)
        except AdapterUnavailableError:
            raise
        except ImportError as exc:
            raise AdapterUnavailableError(
                device.device_id, f"{device.protocol} support is not installed: {exc}"
            ) from exc
        except (EdgeError, ValueError, OSError) as exc:
            raise AdapterUnavailableError(device.device_id, str(exc)) from exc

    return build


def _build(device: DeviceConfig, simulation: SimulationSettings) -> MeterAdapter:
    if isinstance(device, SimulatedDevice):
        from edge.adapters.simulated import SimulatedMeter

        return SimulatedMeter.from_config(
            device,
            gateway_id=simulation.gateway_id,
            seed=simulation.seed,
            counter_origin=simulation.counter_origin,
        )
    if isinstance(device, ModbusTcpDevice):
        from edge.adapters.modbus import ModbusTcpAdapter

        return ModbusTcpAdapter.from_config(device)
    if isinstance(device, OpcUaDevice):
        from edge.adapters.opcua import OpcUaAdapter

        return OpcUaAdapter.from_config(device)
    raise AdapterUnavailableError(device.device_id, f"no adapter for protocol {device.protocol!r}")
