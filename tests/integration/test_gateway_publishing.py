"""The gateway against real Mosquitto: what it polls arrives, once; what the broker has not
acknowledged stays on disk; meters that hang or fail are announced and do not hold up others.

The hung and the raising meter are our own test doubles of broken meters; every other meter
is the real simulated-meter adapter, wrapped to remember what it answered. The broker-outage
test runs a Mosquitto of its own (the shared one is never stopped).
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt_client
import psycopg
import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from carbonflow.config import DatabaseSettings, MqttSettings
from carbonflow.mqtt_client import new_client
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from carbonflow.stack.mosquitto import MosquittoService
from carbonflow.supervise import free_port, wait_for
from edge.adapters.base import MeterAdapter, MeterReadError
from edge.adapters.simulated import simulated_layout
from edge.buffer import BatchBuffer, OverflowPolicy
from edge.config import DeviceConfig, GatewayConfig, SimulatedDevice
from edge.gateway.app import Gateway
from edge.gateway.devices import SimulationSettings, adapter_factory
from edge.gateway.link import NO_MATCHING_SUBSCRIBERS
from edge.gateway.settings import GatewaySettings
from schemas.presence import DeviceStatus, GatewayStatus, PresenceState
from schemas.telemetry import Reading, TelemetryBatch

pytestmark = pytest.mark.integration

POLL_S = 0.2
TIMEOUT_S = 0.1
SEED = 5
Key = tuple[str, str, datetime]


# --- meters ------------------------------------------------------------------------------


class Remembering:
    """A real adapter whose answers are remembered: the readings the gateway took."""

    def __init__(self, adapter: MeterAdapter, taken: list[Reading]) -> None:
        self._adapter = adapter
        self._taken = taken

    @property
    def device_id(self) -> str:
        return self._adapter.device_id

    async def read(self, now: datetime) -> list[Reading]:
        readings = await self._adapter.read(now)
        self._taken.extend(readings)
        return readings

    async def close(self) -> None:
        await self._adapter.close()


class BrokenUntilHealed:
    """Test double of a broken meter: hangs (or refuses) until ``healed`` is set."""

    def __init__(self, device_id: str, *, hang: bool, healed: threading.Event) -> None:
        self._device_id = device_id
        self._hang = hang
        self._healed = healed

    @property
    def device_id(self) -> str:
        return self._device_id

    async def read(self, now: datetime) -> list[Reading]:
        if not self._healed.is_set():
            if self._hang:
                await asyncio.Event().wait()
            raise MeterReadError(self._device_id, "connection refused")
        return [Reading(ts=now, metric="active_power", value=1.0, unit="W")]

    async def close(self) -> None:
        pass


# --- set-up helpers ----------------------------------------------------------------------


def device(device_id: str, kind: str = "conveyor") -> dict[str, Any]:
    return {
        "device_id": device_id,
        "protocol": "simulated",
        "kind": kind,
        "metrics": ["active_power", "active_energy_import"],
        "poll_interval_s": POLL_S,
        "timeout_s": TIMEOUT_S,
        "backoff": {"initial_s": 0.2, "multiplier": 2.0, "max_s": 0.4},
    }


def gateway_config(
    gateway_id: str, topic_root: str, port: int, buffer: Path, devices: list[dict[str, Any]]
) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "gateway_id": gateway_id,
            "topic_root": topic_root,
            "broker": {"host": "127.0.0.1", "port": port, "username": gateway_id},
            "buffer": {"path": str(buffer)},
            "publish": {"batch_interval_s": 0.5, "max_batch_readings": 1000},
            "devices": devices,
        }
    )


def register(db: DatabaseSettings, config: GatewayConfig, device_ids: list[str]) -> None:
    """Register the gateway's devices, so the broker lets it publish for them."""
    devices = [d for d in config.devices if d.device_id in device_ids]
    assert all(isinstance(d, SimulatedDevice) for d in devices)
    layout = simulated_layout(config.gateway_id, devices)  # type: ignore[arg-type]
    with psycopg.connect(db.conninfo()) as conn:
        upsert_layout(conn, layout)


def remembering_factory(
    config: GatewayConfig, taken: dict[str, list[Reading]], broken: dict[str, MeterAdapter]
) -> Callable[[DeviceConfig], MeterAdapter]:
    """The gateway's own factory, with its meters remembered and ``broken`` ones swapped in."""
    real = adapter_factory(SimulationSettings(gateway_id=config.gateway_id, seed=SEED))

    def build(device: DeviceConfig) -> MeterAdapter:
        if device.device_id in broken:
            return broken[device.device_id]
        return Remembering(real(device), taken.setdefault(device.device_id, []))

    return build


class RunningGateway:
    """A gateway on an event loop of its own, in a thread, until ``stop``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="gateway")
        self._thread.start()

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self.gateway.run(self._stop))
        except BaseException as exc:
            self._error = exc
        finally:
            self._loop.close()

    def metric(self, name: str, **labels: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def wait_for_metric(
        self, name: str, at_least: float, what: str, timeout_s: float = 20, **labels: str
    ) -> None:
        wait_for(
            lambda: True if self.metric(name, **labels) >= at_least else None,
            timeout_s=timeout_s,
            what=what,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the gateway did not stop"
        if self._error is not None:
            raise self._error


class Subscriber:
    """Collects telemetry and presence under a topic root, at QoS 1."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        persistent: bool = False,
        share: str | None = None,
    ):
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._subscribed = threading.Event()
        self._settings = settings
        self._persistent = persistent
        self._share = share
        self._client = new_client(
            settings, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message

    def __enter__(self) -> Subscriber:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._persistent:
            properties.SessionExpiryInterval = 3600
        self._client.connect(
            self._settings.host,
            self._settings.port,
            clean_start=not self._persistent,
            properties=properties,
        )
        self._client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK"
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt_client.Client, *args: Any) -> None:
        telemetry = self._settings.telemetry_filter
        if self._share is not None:
            telemetry = f"$share/{self._share}/{telemetry}"
        filters = [telemetry, *self._settings.presence_filters]
        client.subscribe([(topic_filter, 1) for topic_filter in filters])

    def _on_message(self, _c: Any, _u: Any, message: mqtt_client.MQTTMessage) -> None:
        self.messages.put((message.topic, bytes(message.payload), bool(message.retain)))

    def drain(self) -> list[tuple[str, bytes, bool]]:
        got = []
        while not self.messages.empty():
            got.append(self.messages.get_nowait())
        return got


def telemetry(messages: list[tuple[str, bytes, bool]]) -> list[TelemetryBatch]:
    return [
        TelemetryBatch.model_validate_json(payload)
        for topic, payload, _ in messages
        if "/telemetry/" in topic
    ]


def keys(readings: list[Reading], device_id: str) -> list[Key]:
    return [(device_id, r.metric, r.ts) for r in readings]


def received_keys(batches: list[TelemetryBatch]) -> Counter[Key]:
    return Counter((b.device_id, r.metric, r.ts) for b in batches for r in b.readings)


def receive_all(subscriber: Subscriber, expected: Counter[Key]) -> list[tuple[str, bytes, bool]]:
    """Everything the subscriber gets until every expected reading has arrived."""
    messages: list[tuple[str, bytes, bool]] = []

    def all_arrived() -> bool | None:
        messages.extend(subscriber.drain())
        got = received_keys(telemetry(messages))
        return True if all(got[k] for k in expected) else None

    wait_for(all_arrived, timeout_s=20, what="every reading at the subscriber")
    return messages


def buffered(path: Path) -> list[TelemetryBatch]:
    with BatchBuffer.open(path, max_bytes=10**9, policy=OverflowPolicy.DROP_OLDEST) as buffer:
        return [TelemetryBatch.model_validate_json(e.payload) for e in buffer.pending(100_000)]


# --- against the shared broker -----------------------------------------------------------


def test_meters_that_hang_or_fail_are_announced_and_the_others_all_arrive_once(
    stack: Stack,
    db_settings: DatabaseSettings,
    mqtt_settings: MqttSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
    tmp_path: Path,
) -> None:
    gateway_id = f"gw-run-{run_id}"
    topic_root = f"cf-gw-{run_id}/v1"
    names = ["line-a", "line-b", "hung", "refusing"]
    voltmeter = f"volts-{run_id}"  # simulated meters cannot measure voltage: no adapter
    config = gateway_config(
        gateway_id,
        topic_root,
        mqtt_settings.port,
        tmp_path / "buffer.sqlite",
        [
            *(device(f"{name}-{run_id}") for name in names),
            {**device(voltmeter), "metrics": ["voltage"]},
        ],
    )
    healthy = [f"line-a-{run_id}", f"line-b-{run_id}"]
    hung, refusing = f"hung-{run_id}", f"refusing-{run_id}"
    register(db_settings, config, [d.device_id for d in config.devices])
    identity = edge_mqtt_settings(gateway_id)
    healed = threading.Event()
    taken: dict[str, list[Reading]] = {}
    broken: dict[str, MeterAdapter] = {
        hung: BrokenUntilHealed(hung, hang=True, healed=healed),
        refusing: BrokenUntilHealed(refusing, hang=False, healed=healed),
    }
    gateway = Gateway(
        config,
        GatewaySettings(metrics_port=0, shutdown_timeout_s=10),
        password=identity.password,
        adapters=remembering_factory(config, taken, broken),
    )
    observer = mqtt_settings.model_copy(update={"topic_root": topic_root})

    with Subscriber(observer, f"gw-observer-{run_id}") as subscriber:
        running = RunningGateway(gateway)
        try:
            running.wait_for_metric(
                "carbonflow_gateway_poll_failures_total",
                2,
                "the hung meter to fail twice",
                timeout_s=20,
                device=hung,
            )
            running.wait_for_metric(
                "carbonflow_gateway_readings_acknowledged_total",
                20,
                "acknowledged readings",
                timeout_s=20,
            )
            healed.set()
            wait_for(
                lambda: (
                    True
                    if min(
                        running.metric("carbonflow_gateway_readings_polled_total", device=d)
                        for d in (hung, refusing)
                    )
                    >= 3
                    else None
                ),
                timeout_s=20,
                what="the healed meters to answer",
            )
        finally:
            running.stop()
        # Every acknowledged message has been delivered to us by now, or will be shortly.
        expected = Counter(k for d in healthy for k in keys(taken[d], d))
        messages = receive_all(subscriber, expected)

    batches = telemetry(messages)
    got = received_keys([b for b in batches if b.device_id in healthy])
    assert got == expected  # every reading taken arrived, exactly once, nothing else
    assert all(len(taken[d]) >= 10 for d in healthy)
    # Wire batches: one session, numbered 0, 1, 2, ... per device, several polls each.
    for device_id in healthy:
        seqs = [b.seq for b in batches if b.device_id == device_id]
        assert seqs == list(range(len(seqs)))
        assert max(len(b.readings) for b in batches if b.device_id == device_id) > 2
    assert {b.session_id for b in batches} == {gateway.session_id}
    # The buffer is empty: everything was acknowledged before the clean stop ended.
    assert buffered(config.buffer.path) == []

    statuses = [(t, json.loads(p)) for t, p, _ in messages if "/status/" in t]
    gateway_states = [
        GatewayStatus.model_validate(s)
        for t, s in statuses
        if t == observer.gateway_status_topic(gateway_id)
    ]
    assert [(s.state, s.will) for s in gateway_states] == [
        (PresenceState.ONLINE, False),
        (PresenceState.OFFLINE, False),
    ]
    assert gateway_states[0].devices == [d.device_id for d in config.devices]

    def device_states(device_id: str) -> list[tuple[PresenceState, str | None]]:
        topic = observer.device_status_topic(gateway_id, device_id)
        return [
            (status.state, status.reason)
            for status in (DeviceStatus.model_validate(s) for t, s in statuses if t == topic)
        ]

    assert device_states(hung) == [
        (PresenceState.OFFLINE, f"no answer within {TIMEOUT_S:g} s"),
        (PresenceState.ONLINE, None),
    ]
    assert device_states(refusing) == [
        (PresenceState.OFFLINE, "connection refused"),
        (PresenceState.ONLINE, None),
    ]
    for device_id in healthy:
        assert device_states(device_id) == [(PresenceState.ONLINE, None)]
    ((state, reason),) = device_states(voltmeter)
    assert state is PresenceState.OFFLINE
    assert reason is not None
    assert reason.startswith("cannot be polled:")
    assert "voltage" in reason


# --- against a broker of our own, stopped and started ------------------------------------


def start(broker: MosquittoService) -> None:
    broker.ensure_started()
    broker.wait_ready(30)


def test_readings_wait_on_disk_while_the_broker_is_away_and_leave_only_on_puback(
    stack: Stack,
    db_settings: DatabaseSettings,
    mqtt_settings: MqttSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
    tmp_path: Path,
    broker_dir: Path,
) -> None:
    gateway_id = f"gw-out-{run_id}"
    topic_root = f"cf-gwo-{run_id}/v1"
    port = free_port()
    ghost = f"ghost-{run_id}"  # configured, but never registered: the broker refuses it
    meters = [f"press-{run_id}", f"oven-{run_id}"]
    config = gateway_config(
        gateway_id,
        topic_root,
        port,
        tmp_path / "buffer.sqlite",
        [device(meters[0]), device(meters[1], "curing_oven"), device(ghost)],
    )
    register(db_settings, config, meters)
    identity = edge_mqtt_settings(gateway_id)
    broker = stack.standalone_broker(broker_dir, port=port, tls_port=free_port())
    observer = mqtt_settings.model_copy(update={"port": port, "topic_root": topic_root})
    # A persistent subscription, made before the outage: the broker keeps what arrives for
    # it from the first moment it is back, whenever we reconnect.
    start(broker)
    with Subscriber(observer, f"gwo-observer-{run_id}", persistent=True):
        pass
    broker.stop()

    taken: dict[str, list[Reading]] = {}
    gateway = Gateway(
        config,
        GatewaySettings(metrics_port=0, shutdown_timeout_s=5, rejected_retry_s=1.0),
        password=identity.password,
        adapters=remembering_factory(config, taken, {}),
    )
    running = RunningGateway(gateway)
    try:
        running.wait_for_metric(
            "carbonflow_gateway_pending_batches", 15, "polls piling up in the buffer"
        )
        # Nothing can have left: no broker, no PUBACK, nothing deleted.
        assert running.metric("carbonflow_gateway_readings_acknowledged_total") == 0
        assert running.metric("carbonflow_gateway_broker_connected") == 0
        assert running.metric("carbonflow_gateway_batches_published_total") == 0
        start(broker)
        with Subscriber(observer, f"gwo-observer-{run_id}", persistent=True) as subscriber:
            running.wait_for_metric(
                "carbonflow_gateway_publish_rejected_total",
                2,
                "the ghost's batches refused (and retried)",
                timeout_s=30,
            )
            polled_while_away = {d: len(taken[d]) for d in meters}
            running.wait_for_metric(
                "carbonflow_gateway_readings_acknowledged_total",
                sum(polled_while_away.values()),
                "the backlog acknowledged",
                timeout_s=30,
            )
            running.stop()
            expected = Counter(k for d in meters for k in keys(taken[d], d))
            messages = receive_all(subscriber, expected)
    finally:
        running.stop()
        broker.stop()

    assert received_keys(telemetry(messages)) == expected  # each exactly once, no ghost
    # Left in the buffer: exactly the ghost's polls, none of them acknowledged.
    left = buffered(config.buffer.path)
    assert {b.device_id for b in left} == {ghost}
    assert Counter(k for b in left for k in keys(b.readings, ghost)) == Counter(
        keys(taken[ghost], ghost)
    )


# --- what the broker answers when nobody subscribes --------------------------------------


class PubackProbe:
    """A raw MQTT v5 publisher that records the reason code of each PUBACK."""

    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        self.reasons: queue.Queue[int] = queue.Queue()
        self._settings = settings
        self._client = new_client(
            settings, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.on_publish = lambda _c, _u, _mid, reason, _p: self.reasons.put(reason.value)

    def __enter__(self) -> PubackProbe:
        self._client.connect(self._settings.host, self._settings.port)
        self._client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def reason_for(self, topic: str) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        self._client.publish(topic, b"{}", qos=1)
        return self.reasons.get(timeout=10)


def test_broker_answers_no_matching_subscribers_unless_a_shared_subscription_is_live(
    stack: Stack,
    db_settings: DatabaseSettings,
    mqtt_settings: MqttSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
    tmp_path: Path,
    broker_dir: Path,
) -> None:
    """What the gateway relies on: PUBACK 0x10 whenever a batch reaches nobody, including
    after a restart that lost a persistent session's shared subscription; 0 while one is live."""
    gateway_id = f"gw-probe-{run_id}"
    topic_root = f"cf-gwp-{run_id}/v1"
    port = free_port()
    meter = f"probe-{run_id}"
    config = gateway_config(gateway_id, topic_root, port, tmp_path / "b.sqlite", [device(meter)])
    register(db_settings, config, [meter])
    publisher = edge_mqtt_settings(gateway_id).model_copy(
        update={"port": port, "topic_root": topic_root}
    )
    observer = mqtt_settings.model_copy(update={"port": port, "topic_root": topic_root})
    topic = publisher.telemetry_topic(gateway_id, meter)
    broker = stack.standalone_broker(broker_dir, port=port, tls_port=free_port())
    start(broker)
    try:
        with PubackProbe(publisher, gateway_id) as probe:
            assert probe.reason_for(topic) == NO_MATCHING_SUBSCRIBERS
        # A persistent session with a shared subscription, as ingest keeps one.
        with (
            Subscriber(observer, f"gwp-ingest-{run_id}", persistent=True, share="probe"),
            PubackProbe(publisher, gateway_id) as probe,
        ):
            assert probe.reason_for(topic) == 0
        broker.stop()
        start(broker)
        # The session is back, its shared subscription is not: the broker says so.
        with PubackProbe(publisher, gateway_id) as probe:
            assert probe.reason_for(topic) == NO_MATCHING_SUBSCRIBERS
    finally:
        broker.stop()


def test_readings_that_reach_no_subscriber_stay_buffered_until_a_shared_subscriber_appears(
    stack: Stack,
    db_settings: DatabaseSettings,
    mqtt_settings: MqttSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
    tmp_path: Path,
) -> None:
    gateway_id = f"gw-unr-{run_id}"
    topic_root = f"cf-gwu-{run_id}/v1"
    meters = [f"saw-{run_id}", f"kiln-{run_id}"]
    config = gateway_config(
        gateway_id,
        topic_root,
        mqtt_settings.port,
        tmp_path / "buffer.sqlite",
        [device(meters[0]), device(meters[1], "curing_oven")],
    )
    register(db_settings, config, meters)
    identity = edge_mqtt_settings(gateway_id)
    taken: dict[str, list[Reading]] = {}
    gateway = Gateway(
        config,
        GatewaySettings(
            metrics_port=0,
            shutdown_timeout_s=10,
            unrouted_retry_initial_s=0.2,
            unrouted_retry_max_s=1.0,
        ),
        password=identity.password,
        adapters=remembering_factory(config, taken, {}),
    )
    observer = mqtt_settings.model_copy(update={"topic_root": topic_root})

    running = RunningGateway(gateway)
    try:
        # Connected and publishing, but nobody subscribes: every PUBACK says so.
        wait_for(
            lambda: (
                True
                if running.metric("carbonflow_gateway_publish_unrouted_total") >= 6
                and running.metric("carbonflow_gateway_pending_batches") >= 10
                else None
            ),
            timeout_s=30,
            what="batches answered 'No matching subscribers' piling up in the buffer",
        )
        assert running.metric("carbonflow_gateway_broker_connected") == 1
        assert running.metric("carbonflow_gateway_readings_acknowledged_total") == 0
        assert running.metric("carbonflow_gateway_publish_rejected_total") == 0
        # Every batch published so far came back unrouted, and is still on disk.
        polled = sum(len(taken[d]) for d in meters)
        unrouted = running.metric("carbonflow_gateway_publish_unrouted_total")
        assert running.metric("carbonflow_gateway_batches_published_total") == unrouted
        with Subscriber(observer, f"gwu-ingest-{run_id}", share="ingest") as subscriber:
            running.wait_for_metric(
                "carbonflow_gateway_readings_acknowledged_total",
                polled,
                "the held-back readings acknowledged",
                timeout_s=30,
            )
            running.stop()
            expected = Counter(k for d in meters for k in keys(taken[d], d))
            messages = receive_all(subscriber, expected)
    finally:
        running.stop()

    assert polled >= 10
    assert received_keys(telemetry(messages)) == expected  # each exactly once
    assert buffered(config.buffer.path) == []
