"""An OPC UA device's config: node ids, source units, and what the adapter makes of them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edge.adapters.opcua import OpcUaAdapter
from edge.config import ConfigFileError, OpcUaDevice, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "edge" / "examples" / "gateway.toml"

CONFIG = """\
gateway_id = "gw-1"

[broker]
host = "127.0.0.1"

[buffer]
path = "buffer"

[[devices]]
device_id = "plc-1"
protocol = "opcua"
endpoint = "opc.tcp://10.0.0.9:4840"
metrics = ["active_power", "active_energy_import"]
poll_interval_s = 5

[devices.nodes]
active_power = "{power_node}"
active_energy_import = "ns=3;s=Line2.E"
"""


def load(tmp_path: Path, units: str = "", power_node: str = "ns=3;s=Line2.P") -> OpcUaDevice:
    text = CONFIG.format(power_node=power_node)
    if units:
        text += "\n[devices.units]\n" + textwrap.dedent(units)
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    device = load_config(path).devices[0]
    assert isinstance(device, OpcUaDevice)
    return device


def problems(
    tmp_path: Path, units: str = "", power_node: str = "ns=3;s=Line2.P"
) -> tuple[str, ...]:
    with pytest.raises(ConfigFileError) as error:
        load(tmp_path, units, power_node)
    return error.value.problems


def test_units_default_to_the_canonical_unit(tmp_path: Path) -> None:
    device = load(tmp_path, 'active_power = "kW"\n')

    assert device.source_unit("active_power") == "kW"
    assert device.source_unit("active_energy_import") == "Wh"


def test_a_unit_that_does_not_convert_names_the_field(tmp_path: Path) -> None:
    assert problems(tmp_path, 'active_power = "kWh"\n') == (
        "devices[0].units.active_power: cannot convert 'kWh' to W (active_power); "
        "use one of 'W', 'kW', 'MW'",
    )


def test_a_unit_for_a_metric_the_device_does_not_read(tmp_path: Path) -> None:
    assert problems(tmp_path, 'voltage = "kV"\n') == (
        "devices[0].units.voltage: 'voltage' is not in this device's metrics",
    )


@pytest.mark.parametrize("node", ["i=abc", "ns=x;s=P", "ns=3;g=not-a-guid", "s="])
def test_a_malformed_node_id_names_the_field(tmp_path: Path, node: str) -> None:
    assert problems(tmp_path, power_node=node) == (
        "devices[0].nodes.active_power: must be an OPC UA node id such as 'ns=3;s=Meter1.P' "
        f"or 'i=2258' (got {node!r})",
    )


@pytest.mark.parametrize(
    "node",
    [
        "i=2258",
        "ns=3;s=Line2;Energy=P",  # a string id may hold ';' and '='
        "nsu=urn:acme:plc;s=Line2.P",
        "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a",
        "ns=1;b=TGluZTI=",
    ],
)
def test_every_node_id_form_the_config_accepts_is_understood(tmp_path: Path, node: str) -> None:
    adapter = OpcUaAdapter.from_config(load(tmp_path, power_node=node))

    assert adapter.device_id == "plc-1"


def test_the_example_reads_kilowatts() -> None:
    device = load_config(EXAMPLE).device("hall-a-im-line2")

    assert isinstance(device, OpcUaDevice)
    assert device.source_unit("active_power") == "kW"
    assert device.source_unit("active_energy_import") == "kWh"
