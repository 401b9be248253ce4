"""Real meters for tests: pymodbus TCP servers holding register images encoded per a register
map, and an asyncua server standing in for a PLC's energy data.

Both run in the caller's event loop; a test that drives a separate process (the gateway)
runs them in a background thread with a loop of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.ua.status_codes import StatusCodes
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.adapters.opcua import UNECE_NAMESPACE, unece_unit_id
from edge.registermaps import RegisterMap, encode_raw

HOST = "127.0.0.1"

# --- Modbus TCP ----------------------------------------------------------------------------

# Raw values as each meter reports them (its own units), and what must come out.
SDM630_RAW = {
    "voltage": 231.25,
    "current": 12.5,
    "active_power": -1520.5,
    "apparent_power": 2890.0,
    "reactive_power": 410.75,
    "power_factor": -0.875,
    "frequency": 49.98,
    "active_energy_import": 12345.5,
}
SDM630_EXPECTED = {
    "voltage": (231.25, "V"),
    "current": (12.5, "A"),
    "active_power": (-1520.5, "W"),
    "apparent_power": (2890.0, "VA"),
    "reactive_power": (410.75, "var"),
    "power_factor": (-0.875, "1"),
    "frequency": (49.98, "Hz"),
    "active_energy_import": (12_345_500.0, "Wh"),
}
IEM3000_RAW = {
    "current": 41.5,
    "voltage": 229.5,
    "active_power": 27.25,
    "reactive_power": -3.5,
    "apparent_power": 28.125,
    "frequency": 50.01,
    "active_energy_import": 9_876_543_210,
}
IEM3000_EXPECTED = {
    "current": (41.5, "A"),
    "voltage": (229.5, "V"),
    "active_power": (27_250.0, "W"),
    "reactive_power": (-3_500.0, "var"),
    "apparent_power": (28_125.0, "VA"),
    "frequency": (50.01, "Hz"),
    "active_energy_import": (9_876_543_210.0, "Wh"),
}

_REGISTER_TYPES = {3: "holding", 4: "input"}  # by the read's function code


def register_image(
    register_map: RegisterMap, raw: Mapping[str, float]
) -> dict[str, dict[int, list[int]]]:
    """Registers per type ("holding", "input") and address, encoded as the map says."""
    image: dict[str, dict[int, list[int]]] = {"holding": {}, "input": {}}
    for metric, value in raw.items():
        register = register_map.metrics[metric]
        image[register.register_type][register.address] = encode_raw(register, value)
    return image


@dataclass
class Meter:
    """What a test server does besides answering: count requests, stall, or change values."""

    requests: list[tuple[int, int, int]] = field(default_factory=list)
    delay_s: float = 0.0
    # Registers written since the server started, as (register type, address) -> words.
    # Kept here rather than in the server, so they survive the server being restarted.
    changes: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def set_value(self, register_map: RegisterMap, metric: str, raw: float) -> None:
        """Change a metric's registers; the next read answers with the new value."""
        register = register_map.metrics[metric]
        # One dict assignment: safe to call from another thread than the server's.
        self.changes[(register.register_type, register.address)] = encode_raw(register, raw)

    def trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append((pdu.function_code, pdu.address, pdu.count))
        return pdu

    async def action(
        self,
        function_code: int,
        start_address: int,
        _address: int,
        _count: int,
        registers: list[int],
        _values: Any,
    ) -> ExcCodes | None:
        register_type = _REGISTER_TYPES.get(function_code)
        for (kind, address), words in list(self.changes.items()):
            if kind == register_type:
                offset = address - start_address
                registers[offset : offset + len(words)] = words
        # A meter that is slow to answer, the way a busy serial gateway is.
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return None


def _sim_data(blocks: Mapping[int, list[int]]) -> list[SimData]:
    entries = [
        SimData(address, values=words, datatype=DataType.REGISTERS)
        for address, words in sorted(blocks.items())
    ]
    # pymodbus wants every register table non-empty; this register is never read.
    return entries or [SimData(65000, values=[0], datatype=DataType.REGISTERS)]


@asynccontextmanager
async def modbus_server(
    port: int,
    image: Mapping[str, Mapping[int, list[int]]],
    *,
    unit_id: int = 1,
    meter: Meter | None = None,
) -> AsyncIterator[Meter]:
    """A Modbus TCP server listening on ``port`` until the block ends."""
    meter = meter or Meter()
    bits = [SimData(0, values=False, datatype=DataType.BITS)]
    device = SimDevice(
        id=unit_id,
        simdata=(bits, list(bits), _sim_data(image["holding"]), _sim_data(image["input"])),
        action=meter.action,
    )
    server = ModbusTcpServer(device, address=(HOST, port), trace_pdu=meter.trace)
    await server.serve_forever(background=True)  # returns once the socket listens
    try:
        yield meter
    finally:
        await server.shutdown()


# --- OPC UA --------------------------------------------------------------------------------

NAMESPACE = "urn:carbonflow-test:line2-plc"

# The PLC's variables: name -> (initial value, variant type, EngineeringUnits code or None).
VARIABLES: dict[str, tuple[Any, ua.VariantType, str | None]] = {
    "Energy.ActivePower_W": (0.0, ua.VariantType.Double, None),
    "Energy.ImportedEnergy_kWh": (0.0, ua.VariantType.Double, "KWH"),
    "Energy.Voltage_V": (0.0, ua.VariantType.Float, "VLT"),
    "Energy.Current_mA": (0, ua.VariantType.Int32, None),
    "Energy.Frequency_Hz": (50.0, ua.VariantType.Double, None),
    "Energy.PowerFactor_pct": (0.0, ua.VariantType.Double, "P1"),
    "Status.Mode": ("AUTO", ua.VariantType.String, None),
    "Status.Running": (True, ua.VariantType.Boolean, None),
}


async def eventually(probe: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll a condition of the running loop's own state until it holds."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.02)


@dataclass
class Plc:
    server: Server
    endpoint: str
    ns: int
    nodes: dict[str, Node]
    # NodesToRead of every Read request the server handled that touched the PLC's variables.
    reads: list[list[str]] = field(default_factory=list)

    def node(self, name: str) -> str:
        return f"ns={self.ns};s=Line2.{name}"

    async def set(
        self,
        name: str,
        value: Any,
        *,
        status: int = StatusCodes.Good,
        source_ts: datetime | None = None,
    ) -> None:
        variant_type = VARIABLES[name][1]
        await self.nodes[name].write_value(
            ua.DataValue(
                ua.Variant(value, variant_type),
                StatusCode=ua.StatusCode(status),
                SourceTimestamp=source_ts,
            )
        )

    def open_connections(self) -> int:
        """Client connections the server holds open (one per session here)."""
        return len(self.server.iserver.asyncio_transports)

    async def without_clients(self) -> None:
        """Wait until connections of earlier reads are gone on the server side too."""
        await eventually(lambda: self.open_connections() == 0, "no client connected")


@asynccontextmanager
async def plc_server(endpoint: str) -> AsyncIterator[Plc]:
    """An asyncua server at ``endpoint`` (no security) with the PLC's VARIABLES."""
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NAMESPACE)
    line = await server.nodes.objects.add_object(ua.NodeId("Line2", ns), "Line2")
    nodes: dict[str, Node] = {}
    for name, (initial, variant_type, unit_code) in VARIABLES.items():
        node = await line.add_variable(ua.NodeId(f"Line2.{name}", ns), name, initial, variant_type)
        if unit_code is not None:
            units = ua.EUInformation(
                NamespaceUri=UNECE_NAMESPACE,
                UnitId=unece_unit_id(unit_code),
                DisplayName=ua.LocalizedText(unit_code),
            )
            await node.add_property(
                ua.NodeId(f"Line2.{name}.EngineeringUnits", ns),
                ua.QualifiedName("EngineeringUnits", 0),
                units,
            )
        nodes[name] = node
    plc = Plc(server, endpoint, ns, nodes)

    # Observe (not alter) the server's Read service, to see how clients ask.
    service = server.iserver.attribute_service
    read = service.read

    def observed_read(params: ua.ReadParameters) -> list[ua.DataValue]:
        ids = [item.NodeId.to_string() for item in params.NodesToRead]
        if any("Line2." in node_id for node_id in ids):
            plc.reads.append(ids)
        return read(params)

    service.read = observed_read
    async with server:
        yield plc
