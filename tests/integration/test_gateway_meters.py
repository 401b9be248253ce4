"""The gateway process against real meters: a pymodbus TCP server holding an Eastron SDM630's
register image and an asyncua server holding a PLC's energy nodes.

``python -m carbonflow gateway run`` polls both and publishes to the shared Mosquitto as its
own gateway identity; the test subscribes as the platform and checks what arrives: each
meter's values in canonical units, a value changed on a meter in later batches, and a Modbus
meter that goes away reported offline (retained, with a reason) while the OPC UA one keeps
publishing, then online again once it is back.

The meters run in a background thread with an event loop of their own, so the test can
change their values and stop or start them while it waits on MQTT.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from paho.mqtt.client import Client, MQTTMessage

from carbonflow.config import DatabaseSettings, MqttSettings
from carbonflow.mqtt_client import new_client
from carbonflow.registry import upsert_layout
from carbonflow.supervise import ServiceProcess, free_port, wait_for
from edge.adapters.simulated import simulated_layout
from edge.config import SimulatedDevice
from edge.registermaps import load_register_map
from schemas.presence import DeviceStatus, PresenceState
from schemas.telemetry import Quality, Reading, TelemetryBatch
from tests.meters import HOST, SDM630_RAW, Meter, Plc, modbus_server, plc_server, register_image

pytestmark = pytest.mark.integration

T = TypeVar("T")

PASSWORD_VAR = "GATEWAY_MQTT_PASSWORD"
POLL_S = 0.5
SDM630_METRICS = ["active_power", "active_energy_import", "voltage", "current", "power_factor"]
# What the SDM630 image (tests.meters.SDM630_RAW) must become: kWh -> Wh, the rest as is.
SDM630_EXPECTED = {
    "active_power": (-1520.5, "W"),
    "active_energy_import": (12_345_500.0, "Wh"),
    "voltage": (231.25, "V"),
    "current": (12.5, "A"),
    "power_factor": (-0.875, "1"),
}
# The PLC's nodes, in the units the nodes hold them, and what must come out.
PLC_VALUES = {
    "Energy.ActivePower_W": 41_250.5,
    "Energy.ImportedEnergy_kWh": 18_342.125,
    "Energy.Voltage_V": 231.5,
    "Energy.Current_mA": 61_250,
}
PLC_NODES = {
    "active_power": "Energy.ActivePower_W",
    "active_energy_import": "Energy.ImportedEnergy_kWh",
    "voltage": "Energy.Voltage_V",
    "current": "Energy.Current_mA",
}
PLC_UNITS = {"active_energy_import": "kWh", "current": "mA"}
PLC_EXPECTED = {
    "active_power": (41_250.5, "W"),
    "active_energy_import": (18_342_125.0, "Wh"),
    "voltage": (231.5, "V"),
    "current": (61.25, "A"),
}


# --- the meters, in a thread of their own --------------------------------------------------


class MeterThread:
    """An event loop in a background thread, for servers the test drives from outside."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="meters", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class ModbusMeter:
    """The SDM630 server, which the test can stop and start again on the same port."""

    def __init__(self, thread: MeterThread, port: int) -> None:
        self._thread = thread
        self.port = port
        self.register_map = load_register_map("eastron_sdm630")
        self._image = register_image(self.register_map, SDM630_RAW)
        self.meter = Meter()  # holds changed values across restarts
        self._running: AsyncExitStack | None = None

    def start(self) -> None:
        running = AsyncExitStack()
        server = modbus_server(self.port, self._image, meter=self.meter)
        self._thread.call(running.enter_async_context(server))
        self._running = running

    def stop(self) -> None:
        if self._running is not None:
            self._thread.call(self._running.aclose())
            self._running = None

    def set_value(self, metric: str, raw: float) -> None:
        self.meter.set_value(self.register_map, metric, raw)


@pytest.fixture
def meter_thread() -> Iterator[MeterThread]:
    thread = MeterThread()
    yield thread
    thread.close()


@pytest.fixture
def modbus_meter(meter_thread: MeterThread) -> Iterator[ModbusMeter]:
    meter = ModbusMeter(meter_thread, free_port())
    meter.start()
    yield meter
    meter.stop()


@pytest.fixture
def plc(meter_thread: MeterThread) -> Iterator[Plc]:
    running = AsyncExitStack()
    endpoint = f"opc.tcp://{HOST}:{free_port()}/line2"
    plc = meter_thread.call(running.enter_async_context(plc_server(endpoint)))
    for name, value in PLC_VALUES.items():
        meter_thread.call(plc.set(name, value))
    yield plc
    meter_thread.call(running.aclose())


# --- the gateway process and what it publishes ---------------------------------------------


class Received:
    """Telemetry batches and device statuses of one gateway, as the platform receives them."""

    def __init__(self, settings: MqttSettings, gateway_id: str, client_id: str) -> None:
        self._settings = settings
        self._gateway_id = gateway_id
        self._lock = threading.Lock()
        self._batches: list[TelemetryBatch] = []
        self._statuses: list[DeviceStatus] = []
        subscribed: queue.Queue[bool] = queue.Queue()
        topics = [
            (settings.telemetry_topic(gateway_id, "+"), 1),
            (settings.device_status_topic(gateway_id, "+"), 1),
        ]
        self._client = new_client(settings, client_id=client_id)
        self._client.on_connect = lambda c, *_: c.subscribe(topics)
        self._client.on_subscribe = lambda *_: subscribed.put(True)
        self._client.on_message = self._on_message
        self._client.connect(settings.host, settings.port)
        self._client.loop_start()
        assert subscribed.get(timeout=10), "no SUBACK"

    def _on_message(self, _client: Client, _userdata: Any, message: MQTTMessage) -> None:
        with self._lock:
            if "/telemetry/" in message.topic:
                self._batches.append(TelemetryBatch.model_validate_json(message.payload))
            else:
                self._statuses.append(DeviceStatus.model_validate_json(message.payload))

    def batches(self, device_id: str) -> list[TelemetryBatch]:
        with self._lock:
            return [b for b in self._batches if b.device_id == device_id]

    def statuses(self, device_id: str) -> list[DeviceStatus]:
        with self._lock:
            return [s for s in self._statuses if s.device_id == device_id]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def retained_status(settings: MqttSettings, gateway_id: str, device_id: str) -> DeviceStatus:
    """The status the broker keeps for a device, as a subscriber arriving now gets it."""
    got: queue.Queue[MQTTMessage] = queue.Queue()
    client = new_client(settings, client_id=f"{gateway_id}-retained")
    topic = settings.device_status_topic(gateway_id, device_id)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = lambda _c, _u, message: got.put(message)
    client.connect(settings.host, settings.port)
    client.loop_start()
    try:
        message = got.get(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()
    assert message.retain, "the device status is not retained"
    return DeviceStatus.model_validate_json(message.payload)


def latest(batches: list[TelemetryBatch]) -> dict[str, Reading]:
    """The newest reading of each metric in these batches."""
    readings = sorted((r for b in batches for r in b.readings), key=lambda r: r.ts)
    return {reading.metric: reading for reading in readings}


def matches(readings: dict[str, Reading], expected: dict[str, tuple[float, str]]) -> bool:
    return all(
        metric in readings
        # float32 registers carry about 7 significant digits.
        and math.isclose(readings[metric].value, value, rel_tol=1e-6)
        for metric, (value, _unit) in expected.items()
    )


def assert_canonical(readings: dict[str, Reading], expected: dict[str, tuple[float, str]]) -> None:
    assert set(readings) == set(expected)
    for metric, (value, unit) in expected.items():
        assert readings[metric].unit == unit, metric
        assert readings[metric].quality is Quality.GOOD, metric
        assert math.isclose(readings[metric].value, value, rel_tol=1e-6), readings[metric]


def write_config(
    path: Path,
    *,
    gateway_id: str,
    mqtt: MqttSettings,
    modbus: tuple[str, int],
    opcua: tuple[str, Plc],
) -> None:
    modbus_id, modbus_port = modbus
    opcua_id, plc = opcua
    backoff = ["[devices.backoff]", "initial_s = 0.5", "max_s = 1.0", "multiplier = 2.0"]
    lines = [
        f'gateway_id = "{gateway_id}"',
        f'topic_root = "{mqtt.topic_root}"',
        "[broker]",
        f'host = "{mqtt.host}"',
        f"port = {mqtt.port}",
        "keepalive_s = 5",
        f'username = "{gateway_id}"',
        f'password_env = "{PASSWORD_VAR}"',
        "[buffer]",
        'path = "buffer/gateway.sqlite"',
        "[publish]",
        "batch_interval_s = 0.5",
        "[[devices]]",
        f'device_id = "{modbus_id}"',
        'protocol = "modbus_tcp"',
        f'host = "{HOST}"',
        f"port = {modbus_port}",
        "unit_id = 1",
        'register_map = "eastron_sdm630"',
        f"metrics = {json.dumps(SDM630_METRICS)}",
        f"poll_interval_s = {POLL_S}",
        "timeout_s = 0.4",
        *backoff,
        "[[devices]]",
        f'device_id = "{opcua_id}"',
        'protocol = "opcua"',
        f'endpoint = "{plc.endpoint}"',
        f"metrics = {json.dumps(list(PLC_NODES))}",
        f"poll_interval_s = {POLL_S}",
        "timeout_s = 0.4",
        *backoff,
        "[devices.nodes]",
        *(f'{metric} = "{plc.node(node)}"' for metric, node in PLC_NODES.items()),
        "[devices.units]",
        *(f'{metric} = "{unit}"' for metric, unit in PLC_UNITS.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def register_devices(db: DatabaseSettings, gateway_id: str, device_ids: list[str]) -> None:
    """Register the meters under the gateway, so the broker lets it publish for them.

    The registry takes a factory layout; the simulated one places each device on a
    machine of its own, which is all the broker's access rules need.
    """
    placeholders = [
        SimulatedDevice(
            device_id=device_id,
            protocol="simulated",
            kind="air_compressor",
            metrics=("active_power",),
            poll_interval_s=5.0,
        )
        for device_id in device_ids
    ]
    with psycopg.connect(db.conninfo()) as conn:
        upsert_layout(conn, simulated_layout(gateway_id, placeholders))


# --- the test ------------------------------------------------------------------------------


def test_gateway_publishes_real_meters_in_canonical_units_and_reports_an_outage(
    db_settings: DatabaseSettings,
    mqtt_settings: MqttSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
    tmp_path: Path,
    meter_thread: MeterThread,
    modbus_meter: ModbusMeter,
    plc: Plc,
) -> None:
    gateway_id = f"gw-meters-{run_id}"
    sdm630, line2 = f"{gateway_id}-sdm630", f"{gateway_id}-line2"
    register_devices(db_settings, gateway_id, [sdm630, line2])
    identity = edge_mqtt_settings(gateway_id)
    assert identity.password is not None
    platform = mqtt_settings.model_copy(update={"topic_root": f"cf-gwmeters-{run_id}/v1"})

    config = tmp_path / "gateway.toml"
    write_config(
        config,
        gateway_id=gateway_id,
        mqtt=platform,
        modbus=(sdm630, modbus_meter.port),
        opcua=(line2, plc),
    )
    received = Received(platform, gateway_id, client_id=f"{gateway_id}-platform")
    gateway = ServiceProcess(
        ["gateway", "run", "--config", str(config)],
        tmp_path,
        {
            PASSWORD_VAR: identity.password.get_secret_value(),
            "CARBONFLOW_GATEWAY_METRICS_PORT": "0",
            "CARBONFLOW_GATEWAY_RECONNECT_MAX_S": "2",
            "CARBONFLOW_GATEWAY_SHUTDOWN_TIMEOUT_S": "5",
        },
        log_level="DEBUG",
    )
    try:

        def readings_of(device_id: str, expected: dict[str, tuple[float, str]]) -> Any:
            readings = latest(received.batches(device_id))
            return readings if matches(readings, expected) else None

        def wait_readings(
            device_id: str, expected: dict[str, tuple[float, str]], what: str
        ) -> dict[str, Reading]:
            found: dict[str, Reading] = wait_for(
                lambda: readings_of(device_id, expected),
                timeout_s=15,
                what=what,
                services=(gateway,),
            )
            return found

        def wait_status(
            device_id: str, state: PresenceState, what: str, *, since: int = 0
        ) -> DeviceStatus:
            """The first status in ``state`` among those received after the first ``since``."""
            found: DeviceStatus = wait_for(
                lambda: next(
                    (s for s in received.statuses(device_id)[since:] if s.state is state), None
                ),
                timeout_s=15,
                what=what,
                services=(gateway,),
            )
            return found

        # 1. Both meters' values arrive, converted from the meters' units.
        first_sdm630 = wait_readings(sdm630, SDM630_EXPECTED, "the SDM630's values")
        first_line2 = wait_readings(line2, PLC_EXPECTED, "the PLC's values")
        assert_canonical(first_sdm630, SDM630_EXPECTED)
        assert_canonical(first_line2, PLC_EXPECTED)
        session_id = received.batches(sdm630)[0].session_id
        assert {b.gateway_id for b in received.batches(line2)} == {gateway_id}
        online = wait_status(sdm630, PresenceState.ONLINE, "the SDM630 online")
        assert online.session_id == session_id

        # 2. Values changed on the meters show up in later batches.
        modbus_meter.set_value("active_power", 2750.25)
        modbus_meter.set_value("active_energy_import", 12_346.75)
        meter_thread.call(plc.set("Energy.ActivePower_W", 38_000.0))
        meter_thread.call(plc.set("Energy.ImportedEnergy_kWh", 18_343.5))
        changed_sdm630 = {
            **SDM630_EXPECTED,
            "active_power": (2750.25, "W"),
            "active_energy_import": (12_346_750.0, "Wh"),
        }
        changed_line2 = {
            **PLC_EXPECTED,
            "active_power": (38_000.0, "W"),
            "active_energy_import": (18_343_500.0, "Wh"),
        }
        after = wait_readings(sdm630, changed_sdm630, "the SDM630's changed values")
        assert after["active_power"].ts > first_sdm630["active_power"].ts
        assert_canonical(after, changed_sdm630)
        assert_canonical(wait_readings(line2, changed_line2, "the PLC's new values"), changed_line2)

        # 3. The Modbus meter goes away: offline with a reason, retained; the PLC goes on.
        modbus_meter.stop()
        offline = wait_status(sdm630, PresenceState.OFFLINE, "the SDM630 offline")
        assert offline.reason, offline
        assert offline.session_id == session_id
        assert retained_status(platform, gateway_id, sdm630) == offline
        line2_batches = len(received.batches(line2))
        wait_for(
            lambda: True if len(received.batches(line2)) >= line2_batches + 2 else None,
            timeout_s=10,
            what="the PLC's batches while the SDM630 is away",
            services=(gateway,),
        )
        assert not any(s.state is PresenceState.OFFLINE for s in received.statuses(line2))

        # 4. It comes back: online again, and its readings flow (with the changed values).
        sdm630_batches = len(received.batches(sdm630))
        sdm630_statuses = len(received.statuses(sdm630))
        modbus_meter.start()
        back = wait_status(
            sdm630, PresenceState.ONLINE, "the SDM630 online again", since=sdm630_statuses
        )
        assert back.ts > offline.ts
        assert received.statuses(sdm630)[-1].state is PresenceState.ONLINE
        wait_for(
            lambda: (
                True
                if matches(latest(received.batches(sdm630)[sdm630_batches:]), changed_sdm630)
                else None
            ),
            timeout_s=10,
            what="the SDM630's readings after it came back",
            services=(gateway,),
        )
        assert retained_status(platform, gateway_id, sdm630).state is PresenceState.ONLINE

        assert gateway.stop() == 0, gateway.log_tail()
    finally:
        gateway.stop()
        received.close()
