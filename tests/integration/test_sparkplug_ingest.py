"""Sparkplug B through the real parts: edge node -> Mosquitto -> ingest -> Kafka -> stream
worker -> TimescaleDB.

Two edge nodes publish payloads encoded with the protobuf code generated from the public
sparkplug_b.proto. The first is born with two devices, sends data by alias only, skips seq
numbers, sends an unknown alias and a malformed payload, a stale NDEATH, a DDEATH, and dies
(its last will, the NDEATH with its bdSeq). The second sends data before any birth, is asked
for a rebirth over NCMD, and answers it. The test finds exactly the readings sent (in
canonical units), the transitions and sequence problems in device_events, and each bad
message in the dead-letter topic with its reason.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client.parser import text_string_to_metric_families

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings
from carbonflow.mqtt_client import new_client
from carbonflow.registry import upsert_layout
from carbonflow.supervise import ServiceProcess, running, wait_for
from carbonflow.supervise import wait_for_status as wait_for_service_status
from edge.simulator.factory import FactoryLayout, small_factory
from tests.isolation import RunScope
from tests.sparkplug_node import DataType, EdgeNode, Payload, metric

pytestmark = pytest.mark.integration

DISCONNECT_WITH_WILL = 4  # MQTT 5 reason code: the broker publishes the will


class EdgeNodeClient:
    """One edge node's MQTT connection: its NDEATH is the last will; it hears its NCMDs."""

    def __init__(self, settings: MqttSettings, node: EdgeNode, client_id: str) -> None:
        self.node = node
        self.commands: queue.Queue[bytes] = queue.Queue()
        self._ready = threading.Event()
        self._client = new_client(settings, client_id=client_id)
        self._client.will_set(node.topic("NDEATH"), node.ndeath(), qos=1, retain=False)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = lambda _c, _u, msg: self.commands.put(bytes(msg.payload))
        self._client.connect(settings.host, settings.broker_port, settings.keepalive_s)
        self._client.loop_start()
        assert self._ready.wait(20), "edge node could not connect and subscribe"

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(self.node.topic("NCMD"), qos=0)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """QoS 0, as the specification has births and data published."""
        self._client.publish(topic, payload, qos=qos, retain=False).wait_for_publish(20)

    def die(self) -> None:
        """Go away so that the broker publishes the last will (the NDEATH)."""
        reason = ReasonCode(PacketTypes.DISCONNECT, identifier=DISCONNECT_WITH_WILL)
        self._client.disconnect(reasoncode=reason)
        self._client.loop_stop()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class Scenario:
    group: str
    layout: FactoryLayout
    node: str  # edge node 1 (born, then dead)
    late_node: str  # edge node 2 (data before birth, then rebirth)
    readings: list[tuple[str, str, datetime, float]]  # device, metric, ts, value
    events: set[tuple[str, str, str]]  # source kind, source id, event
    rebirth_command: Any


@pytest.fixture(scope="module")
def layout(db_settings: DatabaseSettings, run_id: str) -> FactoryLayout:
    """Three registered meters on two gateways; the gateways are the edge nodes."""
    layout = small_factory(3, prefix=f"spb{run_id}")
    with psycopg.connect(db_settings.conninfo()) as conn:
        upsert_layout(conn, layout)
    return layout


@pytest.fixture(scope="module")
def scope(mqtt_settings: MqttSettings, run_id: str) -> RunScope:
    return RunScope.create(mqtt_settings, "spb", run_id, partitions=2)


@pytest.fixture(scope="module")
def settings(scope: RunScope) -> tuple[MqttSettings, KafkaSettings]:
    return scope.mqtt, scope.kafka


@pytest.fixture(scope="module")
def services(
    scope: RunScope,
    db_settings: DatabaseSettings,
    layout: FactoryLayout,
    run_id: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, object]]:
    mqtt_settings = scope.mqtt
    log_dir = tmp_path_factory.mktemp("spb-logs")
    env = scope.service_env(
        db_settings, Path(log_dir), CARBONFLOW_INGEST_SPARKPLUG_GROUPS=json.dumps([f"g{run_id}"])
    )
    metrics_port = env["CARBONFLOW_INGEST_METRICS_PORT"]
    with (
        running("ingest", log_dir, env, log_level="DEBUG") as ingest,
        running("stream", log_dir, env, log_level="DEBUG") as stream,
    ):
        wait_for_service_status(mqtt_settings, "ingest", scope.ingest_client_id, "online", ingest)
        yield {
            "ingest": ingest,
            "stream": stream,
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
        }


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


@pytest.fixture(scope="module")
def scenario(
    services: dict[str, object],
    layout: FactoryLayout,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
) -> Scenario:
    group = f"g{run_id}"
    gw1, gw2 = layout.gateways()
    dev1, dev2 = (m.device_id for m in layout.machines if m.gateway_id == gw1)
    [dev3] = (m.device_id for m in layout.machines if m.gateway_id == gw2)
    t0 = (datetime.now(UTC) - timedelta(minutes=10)).replace(microsecond=0)
    t = [t0 + timedelta(seconds=10 * k) for k in range(8)]
    readings: list[tuple[str, str, datetime, float]] = []
    events: set[tuple[str, str, str]] = set()
    node1, node2 = f"{group}/{gw1}", f"{group}/{gw2}"

    # Edge node 1: births, aliased data, a seq gap, bad input, a stale death, deaths.
    node = EdgeNode(group, gw1, bd_seq=5)
    edge = EdgeNodeClient(edge_mqtt_settings(gw1), node, f"spb-{run_id}-1")
    edge.publish(node.topic("NBIRTH"), node.nbirth(ms(t[0])))  # seq 0
    edge.publish(
        node.topic("DBIRTH", dev1),
        node.dbirth(
            ms(t[0]),
            [
                metric(
                    name="Active Power",
                    alias=1,
                    datatype=DataType.Float,
                    value=1.5,
                    properties={"engUnit": "kW"},
                ),
                metric(name="Total Active Energy", alias=2, datatype=DataType.UInt64, value=1000),
                metric(
                    name="Device Control/Rebirth", alias=3, datatype=DataType.Boolean, value=False
                ),
            ],
        ),
    )  # seq 1
    readings += [(dev1, "active_power", t[0], 1500.0), (dev1, "active_energy_import", t[0], 1000.0)]
    edge.publish(
        node.topic("DBIRTH", dev2),
        node.dbirth(
            ms(t[0]), [metric(name="active_power", alias=7, datatype=DataType.Double, value=100.0)]
        ),
    )  # seq 2
    readings.append((dev2, "active_power", t[0], 100.0))
    events |= {
        ("sparkplug_node", node1, "online"),
        ("sparkplug_device", f"{node1}/{dev1}", "online"),
        ("sparkplug_device", f"{node1}/{dev2}", "online"),
    }
    edge.publish(
        node.topic("DDATA", dev1),
        node.data(
            ms(t[1]),
            [
                metric(alias=1, value=2.0, value_type=DataType.Float),
                metric(alias=2, value=1010, value_type=DataType.UInt64),
            ],
        ),
    )  # seq 3
    readings += [(dev1, "active_power", t[1], 2000.0), (dev1, "active_energy_import", t[1], 1010.0)]
    edge.publish(
        node.topic("DDATA", dev1),
        node.data(ms(t[2]), [metric(alias=1, value=2.5, value_type=DataType.Float)], seq=7),
    )  # seq 4, 5 and 6 never sent: a gap
    readings.append((dev1, "active_power", t[2], 2500.0))
    events.add(("sparkplug_node", node1, "seq_gap"))
    edge.publish(
        node.topic("DDATA", dev2),
        node.data(
            ms(t[3]),
            [metric(alias=99, value=1.0), metric(alias=7, value=150.0, value_type=DataType.Double)],
        ),
    )  # seq 8: one unknown alias next to a good metric
    readings.append((dev2, "active_power", t[3], 150.0))
    edge.publish(node.topic("DDATA", dev1), b"\xff\xff\xff not protobuf")
    edge.publish(node.topic("NDEATH"), node.ndeath(bd_seq=4, ts_ms=ms(t[4])), qos=1)
    events.add(("sparkplug_node", node1, "bdseq_mismatch"))
    edge.publish(node.topic("DDEATH", dev2), node.ddeath(ms(t[4])))  # seq 9
    events.add(("sparkplug_device", f"{node1}/{dev2}", "offline"))
    edge.die()
    events |= {
        ("sparkplug_node", node1, "offline"),
        ("sparkplug_device", f"{node1}/{dev1}", "offline"),
    }

    # Edge node 2: data before any birth, so ingest asks for a rebirth; it answers.
    late = EdgeNode(group, gw2, bd_seq=0)
    edge2 = EdgeNodeClient(edge_mqtt_settings(gw2), late, f"spb-{run_id}-2")
    try:
        edge2.publish(late.topic("DDATA", dev3), late.data(ms(t[5]), [metric(alias=1, value=9.0)]))
        events.add(("sparkplug_node", node2, "data_before_birth"))
        command = Payload()
        command.ParseFromString(edge2.commands.get(timeout=60))
        edge2.publish(late.topic("NBIRTH"), late.nbirth(ms(t[6])))
        edge2.publish(
            late.topic("DBIRTH", dev3),
            late.dbirth(
                ms(t[6]),
                [metric(name="Active Power [kW]", alias=1, datatype=DataType.Double, value=0.25)],
            ),
        )
        edge2.publish(late.topic("DDATA", dev3), late.data(ms(t[7]), [metric(alias=1, value=0.5)]))
        readings += [(dev3, "active_power", t[6], 250.0), (dev3, "active_power", t[7], 500.0)]
        events |= {
            ("sparkplug_node", node2, "online"),
            ("sparkplug_device", f"{node2}/{dev3}", "online"),
        }
    finally:
        edge2.close()
    return Scenario(group, layout, node1, node2, readings, events, command)


def _stored_readings(
    db: DatabaseSettings, devices: list[str]
) -> list[tuple[str, str, datetime, float]]:
    with psycopg.connect(db.conninfo()) as conn:
        return conn.execute(
            "SELECT device_id, metric, ts, value FROM readings WHERE device_id = ANY(%s) "
            "ORDER BY device_id, metric, ts",
            (devices,),
        ).fetchall()


def _stored_events(
    db: DatabaseSettings, group: str
) -> list[tuple[str, str, str, dict[str, object]]]:
    with psycopg.connect(db.conninfo()) as conn:
        return conn.execute(
            "SELECT source_kind, source_id, event, details FROM device_events "
            "WHERE source_id LIKE %s ORDER BY recorded_at",
            (f"{group}/%",),
        ).fetchall()


@dataclass
class Settled:
    readings: list[tuple[str, str, datetime, float]]
    events: list[tuple[str, str, str, dict[str, object]]]


@pytest.fixture(scope="module")
def settled(
    scenario: Scenario, services: dict[str, object], db_settings: DatabaseSettings
) -> Settled:
    """Wait until everything sent has come through: every reading, every expected event."""
    pipeline = (services["ingest"], services["stream"])
    devices = sorted({r[0] for r in scenario.readings})
    readings = wait_for(
        lambda: (
            r
            if len(r := _stored_readings(db_settings, devices)) >= len(scenario.readings)
            else None
        ),
        timeout_s=90,
        what=f"{len(scenario.readings)} Sparkplug readings in the database",
        services=pipeline,  # type: ignore[arg-type]
    )

    def all_events() -> list[tuple[str, str, str, dict[str, object]]] | None:
        rows = _stored_events(db_settings, scenario.group)
        return rows if {(k, s, e) for k, s, e, _ in rows} >= scenario.events else None

    events = wait_for(
        all_events,
        timeout_s=90,
        what="the Sparkplug device events in the database",
        services=pipeline,  # type: ignore[arg-type]
    )
    return Settled(readings, events)


def test_readings_are_stored_as_sent_in_canonical_units(
    scenario: Scenario, settled: Settled
) -> None:
    assert settled.readings == sorted(scenario.readings)


def test_transitions_and_sequence_problems_are_recorded_once(
    scenario: Scenario, settled: Settled
) -> None:
    keys = [(kind, source, event) for kind, source, event, _ in settled.events]
    assert Counter(keys) == Counter(scenario.events)
    details = {(source, event): d for _, source, event, d in settled.events}
    gap = details[(scenario.node, "seq_gap")]
    assert (gap["expected"], gap["received"], gap["missing"]) == (4, 7, 3)
    mismatch = details[(scenario.node, "bdseq_mismatch")]
    assert (mismatch["birth_bd_seq"], mismatch["death_bd_seq"]) == (5, 4)
    assert details[(scenario.node, "offline")]["verified"] is True
    assert details[(scenario.node, "online")]["session"] == "bdseq-5"
    assert details[(scenario.late_node, "data_before_birth")]["rebirth_requested"] is True


def test_data_before_birth_gets_a_rebirth_request(scenario: Scenario) -> None:
    assert [(m.name, m.datatype, m.boolean_value) for m in scenario.rebirth_command.metrics] == [
        ("Node Control/Rebirth", DataType.Boolean, True)
    ]


def test_bad_messages_land_in_the_dead_letter_topic_with_reasons(
    settled: Settled, settings: tuple[MqttSettings, KafkaSettings]
) -> None:
    _, kafka = settings
    # Ingest acknowledges a message only once Kafka has all made of it, and the last message
    # sent is stored: every dead letter there will be is in the topic now.
    records = asyncio.run(_consume_all(kafka.deadletter_topic, kafka))
    assert Counter(str(r["reason"]) for r in records) == Counter(
        {"unknown_alias": 1, "malformed_protobuf": 1, "data_before_birth": 1}
    )
    unknown = next(r for r in records if r["reason"] == "unknown_alias")
    assert unknown["reading_index"] == 0
    assert json.loads(str(unknown["payload"]))["alias"] == 99


def test_metrics_count_sparkplug_traffic(settled: Settled, services: dict[str, object]) -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(
            httpx.get(str(services["metrics"]), timeout=5).text
        )
        for s in family.samples
    }
    by_type = {
        dict(labels)["message_type"]: value
        for (name, labels), value in samples.items()
        if name == "carbonflow_ingest_sparkplug_messages_total"
    }
    assert by_type == {"NBIRTH": 2, "DBIRTH": 3, "DDATA": 6, "DDEATH": 1, "NDEATH": 2}
    assert samples[("carbonflow_ingest_sparkplug_rebirth_requests_total", ())] == 1
    gaps = ("carbonflow_ingest_sequence_gap_messages_total", (("source_kind", "sparkplug_node"),))
    assert samples[gaps] == 3
    for name in ("ingest", "stream"):
        process = services[name]
        assert isinstance(process, ServiceProcess)
        assert process.alive(), process.log_tail()


async def _consume_all(topic: str, kafka: KafkaSettings) -> list[dict[str, object]]:
    """Every record in ``topic`` (created with ``kafka.partitions``) up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    records: list[dict[str, object]] = []
    try:
        partitions = [TopicPartition(topic, p) for p in range(kafka.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(60):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batch = await consumer.getmany(*partitions, timeout_ms=1000)
                for messages in batch.values():
                    records.extend(json.loads(m.value) for m in messages)
    finally:
        await consumer.stop()
    return records
