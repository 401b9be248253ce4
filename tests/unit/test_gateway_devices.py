"""From a device's config to its adapter; a device that cannot be served is reported, not fatal."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge.adapters.modbus import ModbusTcpAdapter
from edge.adapters.opcua import OpcUaAdapter
from edge.adapters.simulated import SimulatedMeter
from edge.config import GatewayConfig, SimulatedDevice, load_config
from edge.gateway.devices import AdapterUnavailableError, SimulationSettings, adapter_factory

EXAMPLE = Path(__file__).resolve().parents[2] / "edge" / "examples" / "gateway.toml"


@pytest.fixture
def example() -> GatewayConfig:
    return load_config(EXAMPLE)


def test_each_protocol_gets_its_adapter(example: GatewayConfig) -> None:
    build = adapter_factory(SimulationSettings(gateway_id=example.gateway_id, seed=1))
    adapters = {device.protocol: build(device) for device in example.devices}
    assert isinstance(adapters["modbus_tcp"], ModbusTcpAdapter)
    assert isinstance(adapters["opcua"], OpcUaAdapter)
    assert isinstance(adapters["simulated"], SimulatedMeter)
    assert {a.device_id for a in adapters.values()} == {d.device_id for d in example.devices}


def test_missing_protocol_support_makes_only_that_device_unavailable(
    example: GatewayConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a gateway installed without OPC UA support: the module cannot be imported.
    monkeypatch.setitem(sys.modules, "edge.adapters.opcua", None)
    build = adapter_factory(SimulationSettings(gateway_id=example.gateway_id, seed=1))
    opcua = next(d for d in example.devices if d.protocol == "opcua")
    with pytest.raises(AdapterUnavailableError) as caught:
        build(opcua)
    assert caught.value.device_id == opcua.device_id
    assert caught.value.reason.startswith("opcua support is not installed")
    others = [d for d in example.devices if d.protocol != "opcua"]
    assert [build(d).device_id for d in others] == [d.device_id for d in others]


def test_a_config_the_adapter_refuses_is_reported_with_the_reason() -> None:
    device = SimulatedDevice(
        device_id="volts-1",
        protocol="simulated",
        kind="chiller",
        metrics=("voltage",),
        poll_interval_s=1.0,
        timeout_s=0.5,
    )
    build = adapter_factory(SimulationSettings(gateway_id="gw-1", seed=1))
    with pytest.raises(AdapterUnavailableError, match="cannot measure voltage"):
        build(device)
