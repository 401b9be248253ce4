"""The OPC UA adapter against a real asyncua server that stands in for a PLC's energy data.

One server serves the whole module (starting one takes seconds); tests that stop it start
it again before they finish. Hangs are produced by a TCP relay in front of the real server
that stops passing bytes on, like a stalled network path or a frozen server would.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua.ua.status_codes import StatusCodes

from carbonflow.supervise import free_port
from edge.adapters.base import MeterReadError
from edge.adapters.opcua import OpcUaAdapter
from edge.config import OpcUaDevice
from schemas.telemetry import Quality, Reading
from tests.meters import NAMESPACE, Plc, eventually, plc_server

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NOW = datetime(2025, 6, 4, 8, 0, 0, tzinfo=UTC)
MEASURED_AT = datetime(2025, 6, 4, 7, 59, 58, 250000, tzinfo=UTC)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # asyncua runs on asyncio; one event loop for the whole module


@pytest.fixture(scope="module")
async def plc() -> AsyncIterator[Plc]:
    async with plc_server(f"opc.tcp://127.0.0.1:{free_port()}/line2") as plc:
        yield plc


def opcua_device(
    endpoint: str,
    nodes: dict[str, str],
    units: dict[str, str] | None = None,
    *,
    timeout_s: float = 1.0,
) -> OpcUaDevice:
    return OpcUaDevice.model_validate(
        {
            "device_id": "hall-a-im-line2",
            "protocol": "opcua",
            "endpoint": endpoint,
            "metrics": list(nodes),
            "nodes": nodes,
            "units": units or {},
            "poll_interval_s": 5.0,
            "timeout_s": timeout_s,
        }
    )


@asynccontextmanager
async def adapter_for(device: OpcUaDevice) -> AsyncIterator[OpcUaAdapter]:
    adapter = OpcUaAdapter.from_config(device)
    try:
        yield adapter
    finally:
        await adapter.close()


def energy_device(plc: Plc, endpoint: str | None = None, **kwargs: Any) -> OpcUaDevice:
    return opcua_device(
        endpoint or plc.endpoint,
        {
            "active_power": plc.node("Energy.ActivePower_W"),
            "active_energy_import": plc.node("Energy.ImportedEnergy_kWh"),
        },
        {"active_energy_import": "kWh"},
        **kwargs,
    )


def values(readings: list[Reading]) -> dict[str, float]:
    return {reading.metric: reading.value for reading in readings}


# --- values, units, timestamps -----------------------------------------------------------


async def test_reads_every_node_in_one_request_in_canonical_units(plc: Plc) -> None:
    await plc.set("Energy.ActivePower_W", 41250.5, source_ts=MEASURED_AT)
    await plc.set("Energy.ImportedEnergy_kWh", 18342.125)  # no source timestamp
    await plc.set("Energy.Voltage_V", 231.5, source_ts=MEASURED_AT)
    await plc.set("Energy.Current_mA", 61250, source_ts=MEASURED_AT)
    device = opcua_device(
        plc.endpoint,
        {
            "active_power": plc.node("Energy.ActivePower_W"),
            "active_energy_import": plc.node("Energy.ImportedEnergy_kWh"),
            "voltage": plc.node("Energy.Voltage_V"),
            "current": plc.node("Energy.Current_mA"),
        },
        {"active_energy_import": "kWh", "current": "mA"},
    )

    async with adapter_for(device) as adapter:
        plc.reads.clear()
        readings = await adapter.read(NOW)
        first_poll_reads = plc.reads.copy()
        plc.reads.clear()
        await adapter.read(NOW)

    assert adapter.device_id == "hall-a-im-line2"
    assert readings == [
        # The poll time, not the server's SourceTimestamp (which moves only on change).
        Reading(ts=NOW, metric="active_power", value=41250.5, unit="W"),
        Reading(ts=NOW, metric="active_energy_import", value=18342125.0, unit="Wh"),
        Reading(ts=NOW, metric="voltage", value=231.5, unit="V"),
        Reading(ts=NOW, metric="current", value=61.25, unit="A"),
    ]
    power, energy, voltage, current = (
        plc.node(f"Energy.{name}")
        for name in ("ActivePower_W", "ImportedEnergy_kWh", "Voltage_V", "Current_mA")
    )
    value_nodes = [power, energy, voltage, current]
    unit_nodes = [f"{energy}.EngineeringUnits", f"{voltage}.EngineeringUnits"]
    # Opening the session reads the EngineeringUnits once; each poll is one Read request.
    assert first_poll_reads == [unit_nodes, value_nodes]
    assert plc.reads == [value_nodes]


async def test_changed_values_are_seen_on_the_next_read(plc: Plc) -> None:
    async with adapter_for(energy_device(plc)) as adapter:
        await plc.set("Energy.ActivePower_W", 1000.0)
        await plc.set("Energy.ImportedEnergy_kWh", 10.0)
        first = await adapter.read(NOW)
        connections = plc.open_connections()

        await plc.set("Energy.ActivePower_W", 2500.0)
        await plc.set("Energy.ImportedEnergy_kWh", 10.5)
        second = await adapter.read(NOW)

        assert values(first) == {"active_power": 1000.0, "active_energy_import": 10000.0}
        assert values(second) == {"active_power": 2500.0, "active_energy_import": 10500.0}
        assert plc.open_connections() == connections, "the session is kept between reads"


async def test_namespace_uri_node_ids_are_resolved_on_the_server(plc: Plc) -> None:
    await plc.set("Energy.ActivePower_W", 777.0)
    nodes = {"active_power": f"nsu={NAMESPACE};s=Line2.Energy.ActivePower_W"}
    async with adapter_for(opcua_device(plc.endpoint, nodes)) as adapter:
        assert values(await adapter.read(NOW)) == {"active_power": 777.0}

    nodes = {"active_power": "nsu=urn:nowhere;s=Line2.Energy.ActivePower_W"}
    async with adapter_for(opcua_device(plc.endpoint, nodes)) as adapter:
        with pytest.raises(MeterReadError) as error:
            await adapter.read(NOW)
    assert "nsu=urn:nowhere;s=Line2.Energy.ActivePower_W (active_power)" in error.value.reason
    assert "no namespace 'urn:nowhere'" in error.value.reason


# --- quality ------------------------------------------------------------------------------


async def test_status_codes_become_quality_and_bad_is_never_good(plc: Plc) -> None:
    await plc.set("Energy.ActivePower_W", 5300.0, status=StatusCodes.UncertainLastUsableValue)
    await plc.set("Energy.Voltage_V", 230.0, status=StatusCodes.BadSensorFailure)
    await plc.set("Energy.Frequency_Hz", math.nan)  # "Good", but not a number
    await plc.set("Energy.ImportedEnergy_kWh", 12.0)
    device = opcua_device(
        plc.endpoint,
        {
            "active_power": plc.node("Energy.ActivePower_W"),
            "voltage": plc.node("Energy.Voltage_V"),
            "frequency": plc.node("Energy.Frequency_Hz"),
            "active_energy_import": plc.node("Energy.ImportedEnergy_kWh"),
        },
        {"active_energy_import": "kWh"},
    )
    async with adapter_for(device) as adapter:
        readings = {reading.metric: reading for reading in await adapter.read(NOW)}

    assert readings["active_power"].quality is Quality.UNCERTAIN
    assert readings["active_power"].value == 5300.0
    # A Bad value carries no number in OPC UA, and NaN is none either: no reading is made up.
    assert "voltage" not in readings
    assert "frequency" not in readings
    assert readings["active_energy_import"].quality is Quality.GOOD


# --- configuration errors -----------------------------------------------------------------


async def test_a_node_that_does_not_exist_is_named(plc: Plc) -> None:
    await plc.without_clients()
    missing = plc.node("Energy.ReactivePower_var")
    device = opcua_device(
        plc.endpoint,
        {"active_power": plc.node("Energy.ActivePower_W"), "reactive_power": missing},
    )
    async with adapter_for(device) as adapter:
        with pytest.raises(MeterReadError) as error:
            await adapter.read(NOW)

        assert error.value.reason == f"node {missing} (reactive_power) does not exist on the server"
        # The failed check does not leave a session behind on the server.
        await eventually(lambda: plc.open_connections() == 0, "session closed")


@pytest.mark.parametrize(
    ("variable", "kind"), [("Status.Mode", "String"), ("Status.Running", "Boolean")]
)
async def test_a_node_that_holds_no_number_is_named(plc: Plc, variable: str, kind: str) -> None:
    device = opcua_device(
        plc.endpoint,
        {"active_power": plc.node("Energy.ActivePower_W"), "frequency": plc.node(variable)},
    )
    async with adapter_for(device) as adapter:
        with pytest.raises(MeterReadError) as error:
            await adapter.read(NOW)

    assert error.value.reason == f"node {plc.node(variable)} (frequency) holds {kind}, not a number"


async def test_engineering_units_must_agree_with_the_config(plc: Plc) -> None:
    await plc.set("Energy.PowerFactor_pct", 87.5)
    node = plc.node("Energy.PowerFactor_pct")

    async with adapter_for(opcua_device(plc.endpoint, {"power_factor": node})) as adapter:
        with pytest.raises(MeterReadError) as error:
            await adapter.read(NOW)
    assert error.value.reason == (
        f"node {node} (power_factor) is in % by its EngineeringUnits, not 1; "
        'set units.power_factor = "%" if the server is right'
    )

    device = opcua_device(plc.endpoint, {"power_factor": node}, {"power_factor": "%"})
    async with adapter_for(device) as adapter:
        assert values(await adapter.read(NOW)) == {"power_factor": 0.875}


# --- failures and recovery ----------------------------------------------------------------


async def test_stopped_server_fails_the_read_and_a_restart_is_recovered(plc: Plc) -> None:
    async with adapter_for(energy_device(plc)) as adapter:
        await adapter.read(NOW)

        await plc.server.stop()
        try:
            with pytest.raises(MeterReadError) as stopped:
                await adapter.read(NOW)
            assert stopped.value.device_id == "hall-a-im-line2"
            assert "connection refused" in stopped.value.reason
        finally:
            await plc.server.start()

        await plc.set("Energy.ActivePower_W", 3210.0)
        assert values(await adapter.read(NOW))["active_power"] == 3210.0

        # Restarted between two polls: the lost connection is noticed, no read is lost.
        await plc.server.stop()
        await plc.server.start()
        await plc.set("Energy.ActivePower_W", 3333.0)
        assert values(await adapter.read(NOW))["active_power"] == 3333.0


async def test_unreachable_server_is_a_read_error_and_close_is_safe(plc: Plc) -> None:
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/nothing-listens-here"
    adapter = OpcUaAdapter.from_config(energy_device(plc, endpoint))

    with pytest.raises(MeterReadError) as error:
        await adapter.read(NOW)

    assert error.value.reason == (
        f"cannot open a session with {endpoint}: connection refused (is the server running?)"
    )
    await adapter.close()
    await adapter.close()


async def test_close_ends_the_session_and_can_be_repeated(plc: Plc) -> None:
    await plc.without_clients()
    adapter = OpcUaAdapter.from_config(energy_device(plc))
    await adapter.read(NOW)
    assert plc.open_connections() == 1

    await adapter.close()
    await adapter.close()

    await eventually(lambda: plc.open_connections() == 0, "connection closed")


class Relay:
    """A TCP relay to the real server that can stop passing bytes on (and hold them)."""

    def __init__(self, target: str) -> None:
        self._target_port = int(target.rsplit(":", 1)[1].split("/", 1)[0])
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.endpoint = ""

    async def __aenter__(self) -> Relay:
        port = free_port()
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", port)
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/line2"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.resume()
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._target_port
        )
        self._writers += [writer, upstream_writer]
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@pytest.mark.parametrize("phase", ["reading", "connecting"])
async def test_outer_timeout_cancels_the_read_and_the_adapter_stays_usable(
    plc: Plc, phase: str
) -> None:
    await plc.set("Energy.ActivePower_W", 4321.0)
    await plc.without_clients()
    async with (
        Relay(plc.endpoint) as relay,
        adapter_for(energy_device(plc, relay.endpoint)) as adapter,
    ):
        if phase == "reading":
            await adapter.read(NOW)
        relay.pause()

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await adapter.read(NOW)

        relay.resume()
        assert values(await adapter.read(NOW))["active_power"] == 4321.0
        await adapter.close()
        # The session given up on is closed as well, not left behind on the server.
        await eventually(lambda: plc.open_connections() == 0, "sessions closed")


async def test_a_server_that_stops_answering_fails_within_the_device_timeout(plc: Plc) -> None:
    async with Relay(plc.endpoint) as relay:
        device = energy_device(plc, relay.endpoint, timeout_s=0.3)
        async with adapter_for(device) as adapter:
            await adapter.read(NOW)
            relay.pause()

            started = time.monotonic()
            with pytest.raises(MeterReadError) as error:
                await adapter.read(NOW)
            elapsed = time.monotonic() - started

            assert error.value.reason == "read failed: no answer within 0.3 s"
            assert elapsed < 2.0
            relay.resume()
            await plc.set("Energy.ActivePower_W", 99.0)
            assert values(await adapter.read(NOW))["active_power"] == 99.0
