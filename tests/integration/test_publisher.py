"""The simulator's MQTT publisher against the real local Mosquitto: PUBACKs and what arrives.

Each simulated gateway publishes as itself (its own credentials), as the broker requires.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt_client
import psycopg
import pytest
from pydantic import SecretStr

from carbonflow.config import MqttSettings
from carbonflow.mqtt_client import new_client
from carbonflow.registry import upsert_layout
from edge.errors import BrokerConnectionError, EdgeError
from edge.simulator.batching import BatchBuilder
from edge.simulator.factory import FactoryLayout, PowerModel, simulate, small_factory
from edge.simulator.publisher import GatewayPublishers, Publisher, run_simulator
from edge.simulator.settings import SimulatorSettings
from schemas.telemetry import TelemetryBatch

pytestmark = pytest.mark.integration

START = datetime(2025, 6, 4, 8, 0, tzinfo=UTC)


@pytest.fixture
def settings(mqtt_settings: MqttSettings, run_id: str) -> MqttSettings:
    """A topic root of this run's own, so no ingest instance or earlier run sees our data."""
    return mqtt_settings.model_copy(update={"topic_root": f"cf-test-{run_id}/v1"})


Fleet = Callable[[FactoryLayout], dict[str, MqttSettings]]


@pytest.fixture
def fleet(
    settings: MqttSettings,
    db_conn: psycopg.Connection,
    edge_mqtt_settings: Callable[[str], MqttSettings],
) -> Fleet:
    """Registers a layout and gives each of its gateways its own MQTT identity."""

    def register(layout: FactoryLayout) -> dict[str, MqttSettings]:
        upsert_layout(db_conn, layout)
        return {
            gateway_id: edge_mqtt_settings(gateway_id).model_copy(
                update={"topic_root": settings.topic_root}
            )
            for gateway_id in layout.gateways()
        }

    return register


def passwords(gateways: dict[str, MqttSettings]) -> dict[str, SecretStr]:
    return {g: s.password for g, s in gateways.items() if s.password is not None}


class Subscriber:
    """Collects every telemetry message under a topic root (QoS 1)."""

    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = new_client(settings, client_id=client_id)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._settings = settings

    def __enter__(self) -> Subscriber:
        self._client.connect(self._settings.host, self._settings.broker_port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK"
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt_client.Client, *args: Any) -> None:
        client.subscribe(self._settings.telemetry_filter, qos=1)

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt_client.MQTTMessage) -> None:
        self.messages.put((message.topic, message.payload))

    def receive(self, count: int, timeout_s: float = 30.0) -> list[tuple[str, bytes]]:
        got = []
        for _ in range(count):
            got.append(self.messages.get(timeout=timeout_s))
        return got


@pytest.fixture
def subscriber(settings: MqttSettings, run_id: str) -> Iterator[Subscriber]:
    with Subscriber(settings, f"test-sub-{run_id}") as sub:
        yield sub


def _known_batches(layout: FactoryLayout, minutes: int, batch_size: int) -> list[TelemetryBatch]:
    builder = BatchBuilder("pubtest-session")
    end = START + timedelta(minutes=minutes)
    return [
        builder.build(machine, chunk, end)
        for machine, chunk in simulate(layout, PowerModel(layout, 5), START, end, 10.0, batch_size)
    ]


def test_published_batches_are_all_acknowledged_and_arrive_intact(
    settings: MqttSettings, subscriber: Subscriber, fleet: Fleet, run_id: str
) -> None:
    layout = small_factory(6, prefix=f"pub{run_id}")
    gateways = fleet(layout)
    batches = _known_batches(layout, minutes=10, batch_size=7)
    repeated = batches[::4]  # at-least-once: some batches go out twice
    # A small pending bound makes publish_batch wait for PUBACKs along the way.
    with GatewayPublishers(gateways, client_id=f"test-pub-{run_id}", max_pending=8) as publisher:
        for batch in [*batches, *repeated]:
            publisher.publish_batch(batch)
        publisher.flush(timeout=30)
        assert publisher.pending == 0
        assert publisher.acked == publisher.published == len(batches) + len(repeated)

    received = subscriber.receive(len(batches) + len(repeated))
    decoded = []
    for topic, payload in received:
        batch = TelemetryBatch.model_validate_json(payload)
        assert topic == settings.telemetry_topic(batch.gateway_id, batch.device_id)
        decoded.append(batch)
    key = lambda b: (b.device_id, b.seq)  # noqa: E731
    assert Counter(map(key, decoded)) == Counter(map(key, [*batches, *repeated]))
    by_key = {key(b): b for b in batches}
    assert all(b == by_key[key(b)] for b in decoded)
    assert subscriber.messages.empty()


def test_replay_through_run_simulator_publishes_every_reading(
    settings: MqttSettings, subscriber: Subscriber, fleet: Fleet, run_id: str
) -> None:
    prefix = f"replay{run_id}"
    gateways = fleet(small_factory(4, prefix=prefix))
    sim = SimulatorSettings(
        devices=4,
        device_prefix=prefix,
        seed=9,
        session_id="replay-1",
        interval_s=5.0,
        replay_batch_size=24,
        gateway_passwords=passwords(gateways),
    )
    summary = run_simulator(settings, sim, replay=(START, START + timedelta(minutes=6)))
    assert (summary.batches, summary.readings) == (4 * 3, 4 * 72)
    batches = [TelemetryBatch.model_validate_json(p) for _, p in subscriber.receive(12)]
    assert {b.session_id for b in batches} == {"replay-1"}
    readings = {(b.device_id, r.ts) for b in batches for r in b.readings}
    assert len(readings) == 4 * 72


def test_live_mode_publishes_until_stopped(
    settings: MqttSettings, subscriber: Subscriber, fleet: Fleet, run_id: str
) -> None:
    prefix = f"live{run_id}"
    gateways = fleet(small_factory(2, prefix=prefix))
    sim = SimulatorSettings(
        devices=2,
        device_prefix=prefix,
        interval_s=0.2,
        batch_interval_s=0.6,
        gateway_passwords=passwords(gateways),
    )
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    summary = run_simulator(settings, sim, stop=stop)
    assert summary.batches >= 4
    received = subscriber.receive(summary.batches)
    batches = [TelemetryBatch.model_validate_json(p) for _, p in received]
    seqs: dict[str, list[int]] = {}
    for b in batches:
        seqs.setdefault(b.device_id, []).append(b.seq)
    assert all(s == list(range(len(s))) for s in seqs.values())
    assert sum(len(b.readings) for b in batches) == summary.readings


def test_connecting_to_a_closed_port_raises_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    publisher = Publisher(MqttSettings(port=port), connect_timeout_s=2)
    with pytest.raises(BrokerConnectionError, match="cannot connect") as info:
        publisher.connect()
    assert isinstance(info.value.__cause__, OSError)


def test_run_simulator_needs_a_password_for_every_gateway(
    settings: MqttSettings, fleet: Fleet, run_id: str
) -> None:
    prefix = f"partial{run_id}"
    gateways = fleet(small_factory(2, prefix=prefix))
    one = dict(list(passwords(gateways).items())[:1])
    sim = SimulatorSettings(devices=2, device_prefix=prefix, gateway_passwords=one)

    with pytest.raises(EdgeError, match=f"no MQTT password for gateway.*{prefix}-gw2"):
        run_simulator(settings, sim, replay=(START, START + timedelta(minutes=1)))
