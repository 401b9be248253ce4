"""The Modbus TCP adapter against real pymodbus TCP servers started in the test's event loop.

The servers hold register images encoded per the shipped maps (SDM630 input registers,
iEM3000 holding registers), so these tests check the maps, the read grouping and the
decoding end to end. Misbehaving meters (down, refusing, slow, silent) are real sockets too;
only the silent one is a bare TCP listener, since no Modbus server can be told to ignore
requests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from carbonflow.supervise import free_port
from edge.adapters.base import MeterAdapter, MeterReadError
from edge.adapters.modbus import ModbusTcpAdapter
from edge.config import ModbusTcpDevice
from edge.registermaps import load_register_map
from schemas.telemetry import Quality, Reading
from tests.meters import (
    HOST,
    IEM3000_EXPECTED,
    IEM3000_RAW,
    SDM630_EXPECTED,
    SDM630_RAW,
    Meter,
    modbus_server,
    register_image,
)

NOW = datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC)


@asynccontextmanager
async def silent_server(port: int) -> AsyncIterator[None]:
    """Accepts connections and reads requests, but never answers."""

    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(1024):
            pass

    server = await asyncio.start_server(swallow, HOST, port)
    try:
        yield
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def device(
    port: int,
    register_map: str | Path,
    metrics: list[str],
    *,
    unit_id: int = 1,
    timeout_s: float = 2.0,
) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {
            "protocol": "modbus_tcp",
            "device_id": "meter-1",
            "host": HOST,
            "port": port,
            "unit_id": unit_id,
            "register_map": str(register_map),
            "metrics": metrics,
            "poll_interval_s": 10.0,
            "timeout_s": timeout_s,
        }
    )


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    assert all(reading.ts == NOW for reading in readings)
    return {reading.metric: reading for reading in readings}


def assert_values(readings: list[Reading], expected: Mapping[str, tuple[float, str]]) -> None:
    got = by_metric(readings)
    assert set(got) == set(expected)
    for metric, (value, unit) in expected.items():
        assert got[metric].unit == unit, metric
        assert got[metric].quality is Quality.GOOD, metric
        # float32 registers carry about 7 significant digits.
        assert math.isclose(got[metric].value, value, rel_tol=1e-6), (metric, got[metric])


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(scenario())


# --- decoding the shipped maps ---------------------------------------------------------


def test_sdm630_map_is_read_in_grouped_requests_and_decoded_to_canonical_units() -> None:
    register_map = load_register_map("eastron_sdm630")
    port = free_port()

    async def scenario() -> None:
        adapter: MeterAdapter = ModbusTcpAdapter.from_config(
            device(port, "eastron_sdm630", list(SDM630_RAW), unit_id=7)
        )
        async with modbus_server(
            port, register_image(register_map, SDM630_RAW), unit_id=7
        ) as meter:
            try:
                assert_values(await adapter.read(NOW), SDM630_EXPECTED)
            finally:
                await adapter.close()
        # Reactive power + power factor (60-63) and frequency + import (70-73) are
        # adjacent, so 8 metrics take 6 reads, all of input registers (function 4).
        assert meter.requests == [
            (4, 0, 2),
            (4, 46, 2),
            (4, 52, 2),
            (4, 56, 2),
            (4, 60, 4),
            (4, 70, 4),
        ]

    run(scenario)


def test_iem3000_map_reads_holding_registers_and_converts_kw_and_int64_wh() -> None:
    register_map = load_register_map("schneider_iem3000")
    port = free_port()

    async def scenario() -> None:
        adapter = ModbusTcpAdapter.from_config(device(port, "schneider_iem3000", list(IEM3000_RAW)))
        async with modbus_server(port, register_image(register_map, IEM3000_RAW)) as meter:
            try:
                assert_values(await adapter.read(NOW), IEM3000_EXPECTED)
            finally:
                await adapter.close()
        assert {code for code, _, _ in meter.requests} == {3}
        assert (3, 3203, 4) in meter.requests  # the int64 energy counter in one read

    run(scenario)


def test_only_the_configured_metrics_are_read() -> None:
    register_map = load_register_map("eastron_sdm630")
    port = free_port()

    async def scenario() -> None:
        adapter = ModbusTcpAdapter.from_config(
            device(port, "eastron_sdm630", ["active_power", "active_energy_import"])
        )
        async with modbus_server(port, register_image(register_map, SDM630_RAW)) as meter:
            try:
                readings = await adapter.read(NOW)
            finally:
                await adapter.close()
        assert sorted(r.metric for r in readings) == ["active_energy_import", "active_power"]
        assert meter.requests == [(4, 52, 2), (4, 72, 2)]

    run(scenario)


def test_non_finite_values_are_dropped_and_implausible_ones_marked_bad(
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_map = load_register_map("eastron_sdm630")
    raw = {**SDM630_RAW, "frequency": math.nan, "voltage": math.inf, "power_factor": 1.75}
    port = free_port()

    async def scenario() -> list[Reading]:
        adapter = ModbusTcpAdapter.from_config(device(port, "eastron_sdm630", list(raw)))
        async with modbus_server(port, register_image(register_map, raw)):
            try:
                return await adapter.read(NOW)
            finally:
                await adapter.close()

    with caplog.at_level("WARNING", logger="edge.adapters.modbus"):
        readings = asyncio.run(scenario())
    got = by_metric(readings)
    assert "frequency" not in got
    assert "voltage" not in got
    assert got["power_factor"].quality is Quality.BAD
    assert got["power_factor"].value == 1.75
    assert got["active_power"].quality is Quality.GOOD
    logged = caplog.text
    assert "frequency dropped" in logged
    assert "voltage dropped" in logged
    assert "power_factor quality bad" in logged


# --- failures and recovery -------------------------------------------------------------


def test_a_meter_that_is_down_fails_the_read_and_is_read_once_it_is_up() -> None:
    register_map = load_register_map("eastron_sdm630")
    port = free_port()

    async def scenario() -> None:
        adapter = ModbusTcpAdapter.from_config(device(port, "eastron_sdm630", list(SDM630_RAW)))
        try:
            with pytest.raises(MeterReadError, match="cannot connect"):
                await adapter.read(NOW)
            async with modbus_server(port, register_image(register_map, SDM630_RAW)):
                assert_values(await adapter.read(NOW), SDM630_EXPECTED)
            # The meter goes away mid-life: the open connection is lost, then re-made.
            with pytest.raises(MeterReadError):
                await adapter.read(NOW)
            async with modbus_server(port, register_image(register_map, SDM630_RAW)):
                assert_values(await adapter.read(NOW), SDM630_EXPECTED)
        finally:
            await adapter.close()
            await adapter.close()  # closing twice is allowed

    run(scenario)


def test_exception_responses_keep_what_was_read_and_fail_when_nothing_was(
    tmp_path: Path,
) -> None:
    register_map = load_register_map("eastron_sdm630")
    # Only active power and the import counter exist on this meter.
    image = register_image(
        register_map,
        {
            "active_power": SDM630_RAW["active_power"],
            "active_energy_import": SDM630_RAW["active_energy_import"],
        },
    )
    port = free_port()

    async def scenario() -> None:
        partial = ModbusTcpAdapter.from_config(
            device(port, "eastron_sdm630", ["voltage", "active_power", "active_energy_import"])
        )
        refused = ModbusTcpAdapter.from_config(device(port, "eastron_sdm630", ["voltage"]))
        async with modbus_server(port, image) as meter:
            try:
                got = by_metric(await partial.read(NOW))
                assert sorted(got) == ["active_energy_import", "active_power"]
                with pytest.raises(MeterReadError, match=r"illegal address.*code 2"):
                    await refused.read(NOW)
                # The refusal left the connection usable: the next read just works.
                assert sorted(by_metric(await partial.read(NOW))) == sorted(got)
            finally:
                await partial.close()
                await refused.close()
        assert meter.requests.count((4, 0, 2)) == 3

    run(scenario)


def test_a_silent_meter_times_out_within_the_adapters_own_timeout() -> None:
    port = free_port()

    async def scenario() -> None:
        adapter = ModbusTcpAdapter.from_config(
            device(port, "eastron_sdm630", ["active_power"], timeout_s=0.3)
        )
        async with silent_server(port):
            started = time.monotonic()
            with pytest.raises(MeterReadError, match="connection dropped"):
                await adapter.read(NOW)
            assert time.monotonic() - started < 2.0
        await adapter.close()

    run(scenario)


def test_the_callers_timeout_cancels_a_read_and_leaves_the_adapter_usable() -> None:
    register_map = load_register_map("eastron_sdm630")
    port = free_port()

    async def scenario() -> None:
        # The adapter's own timeout is long; the poller's is short, and must win.
        adapter = ModbusTcpAdapter.from_config(
            device(port, "eastron_sdm630", list(SDM630_RAW), timeout_s=5.0)
        )
        try:
            async with silent_server(port):
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await adapter.read(NOW)
                assert time.monotonic() - started < 2.0

            # A slow meter whose late answer arrives after the poller gave up: the next
            # read must get its own answer, never the stale one.
            meter = Meter(delay_s=1.0)
            changed = {**SDM630_RAW, "active_power": 777.0}
            async with modbus_server(port, register_image(register_map, changed), meter=meter):
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await adapter.read(NOW)
                meter.delay_s = 0.0
                expected = {**SDM630_EXPECTED, "active_power": (777.0, "W")}
                assert_values(await adapter.read(NOW), expected)
        finally:
            await adapter.close()

    run(scenario)


def test_word_order_byte_order_and_scale_of_a_users_own_map(tmp_path: Path) -> None:
    # A meter with int32 low word first, a byte-swapped uint16 in tenths of a hertz and a
    # SunSpec-style power-of-ten exponent register for power.
    map_file = tmp_path / "custom.toml"
    map_file.write_text(
        """
[meter]
manufacturer = "Example"
model = "Custom"
source = "test fixture"

[reads]
max_gap = 2

[metrics.active_power]
address = 100
register_type = "holding"
data_type = "int32"
word_order = "little"
unit = "W"
kind = "instantaneous"
scale_exponent = { address = 104, register_type = "holding" }

[metrics.frequency]
address = 105
register_type = "holding"
data_type = "uint16"
byte_order = "little"
scale = 0.1
unit = "Hz"
kind = "instantaneous"

[metrics.active_energy_import]
address = 0
register_type = "input"
data_type = "uint64"
unit = "kWh"
scale = 0.01
kind = "cumulative"
""",
        encoding="utf-8",
    )
    register_map = load_register_map(map_file)
    image = register_image(
        register_map,
        {"active_power": -123456, "frequency": 500, "active_energy_import": 1_234_567},
    )
    image["holding"][104] = [0xFFFE]  # exponent -2 (int16)
    image["holding"][102] = [0, 0]  # the gap the map allows reading across
    port = free_port()

    async def scenario() -> None:
        adapter = ModbusTcpAdapter.from_config(
            device(port, map_file, ["active_power", "frequency", "active_energy_import"])
        )
        async with modbus_server(port, image) as meter:
            try:
                got = by_metric(await adapter.read(NOW))
            finally:
                await adapter.close()
        assert got["active_power"].value == pytest.approx(-1234.56)
        assert got["frequency"].value == pytest.approx(50.0)
        assert got["active_energy_import"].value == pytest.approx(12_345_670.0)
        # 100-105 in one read across the allowed gap, and the input counter.
        assert sorted(meter.requests) == [(3, 100, 6), (4, 0, 4)]

    run(scenario)
