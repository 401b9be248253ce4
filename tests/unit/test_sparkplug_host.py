"""Sparkplug messages in, readings records / dead letters / events / rebirth requests out."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas import DeadLetterReason, EventKind, Quality
from services.ingest.sparkplug import sparkplug_b_pb2 as pb
from services.ingest.sparkplug.codec import REBIRTH_METRIC
from services.ingest.sparkplug.host import SparkplugHost, SparkplugOutcome
from services.ingest.sparkplug.mapping import ConfiguredMetric, MetricMapper
from services.ingest.sparkplug.sessions import SparkplugSessions
from services.ingest.validation import ValidationPolicy
from tests.sparkplug_node import EdgeNode, metric

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
T0 = int(NOW.timestamp() * 1000) - 60_000
GROUP, NODE, DEVICE = "plant-1", "edge-7", "press-01"
KNOWN = {DEVICE, "meter-node"}


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def new_host(**configured: ConfiguredMetric) -> SparkplugHost:
    sessions = SparkplugSessions(rebirth_interval=timedelta(seconds=10))
    return SparkplugHost(sessions, MetricMapper(configured), ValidationPolicy())


def handle(host: SparkplugHost, topic: str, data: bytes) -> SparkplugOutcome:
    return host.handle(topic, data, received_at=NOW, known_devices=KNOWN)


def born_device(
    host: SparkplugHost, node: EdgeNode, birth: list[pb.Payload.Metric]
) -> SparkplugOutcome:
    handle(host, node.topic("NBIRTH"), node.nbirth(T0))
    return handle(host, node.topic("DBIRTH", DEVICE), node.dbirth(T0, birth))


BIRTH = [
    metric(
        name="Active Power", alias=1, datatype=pb.Float, value=1.5, properties={"engUnit": "kW"}
    ),
    metric(name="Total Active Energy", alias=2, datatype=pb.UInt64, value=1000),
    metric(name="Device Control/Rebirth", alias=3, datatype=pb.Boolean, value=False),
]


def test_birth_values_and_aliased_data_become_canonical_readings() -> None:
    host, node = new_host(), EdgeNode(GROUP, NODE)
    birth = born_device(host, node, BIRTH)
    assert birth.rejects == []
    [record] = birth.records
    assert (record.gateway_id, record.device_id, record.session_id, record.seq) == (
        NODE,
        DEVICE,
        "bdseq-0",
        1,
    )
    assert [(r.metric, r.value, r.unit, r.ts) for r in record.readings] == [
        ("active_power", 1500.0, "W", at(T0)),
        ("active_energy_import", 1000.0, "Wh", at(T0)),
    ]
    assert [e.event for e in birth.events] == [EventKind.ONLINE]

    data = node.data(
        T0 + 1000,
        [
            metric(alias=1, value=2.25, value_type=pb.Float, ts_ms=T0 + 900),
            metric(alias=2, value=1001, value_type=pb.UInt64),
        ],
    )
    out = handle(host, node.topic("DDATA", DEVICE), data)
    assert out.rejects == []
    [record] = out.records
    assert [(r.metric, r.value, r.ts) for r in record.readings] == [
        ("active_power", 2250.0, at(T0 + 900)),  # the metric's own timestamp
        ("active_energy_import", 1001.0, at(T0 + 1000)),  # else the payload's
    ]


def test_an_unknown_alias_is_dead_lettered_and_its_neighbours_go_through() -> None:
    host, node = new_host(), EdgeNode(GROUP, NODE)
    born_device(host, node, BIRTH)
    data = node.data(
        T0 + 1000, [metric(alias=42, value=1.0), metric(alias=1, value=3.0, value_type=pb.Float)]
    )
    out = handle(host, node.topic("DDATA", DEVICE), data)
    assert [(r.reason, r.reading_index, r.device_id) for r in out.rejects] == [
        (DeadLetterReason.UNKNOWN_ALIAS, 0, DEVICE)
    ]
    assert json.loads(out.rejects[0].payload)["alias"] == 42
    assert [r.value for r in out.records[0].readings] == [3000.0]


def test_malformed_protobuf_is_dead_lettered_with_the_raw_bytes() -> None:
    host, node = new_host(), EdgeNode(GROUP, NODE)
    born_device(host, node, BIRTH)
    out = handle(host, node.topic("DDATA", DEVICE), b"\xff\xff\xff not protobuf")
    [reject] = out.rejects
    assert reject.reason is DeadLetterReason.MALFORMED_PROTOBUF
    assert base64.b64decode(reject.payload) == b"\xff\xff\xff not protobuf"
    assert out.records == []
    assert out.events == []


def test_data_before_birth_is_dead_lettered_and_asks_for_a_rebirth() -> None:
    host, node = new_host(), EdgeNode(GROUP, NODE)
    out = handle(host, node.topic("DDATA", DEVICE), node.data(T0, [metric(alias=1, value=1.0)]))
    [reject] = out.rejects
    assert reject.reason is DeadLetterReason.DATA_BEFORE_BIRTH
    assert json.loads(reject.payload)["metrics"][0]["alias"] == "1"  # protobuf JSON: uint64 str
    [(topic, command)] = out.commands
    assert topic == f"spBv1.0/{GROUP}/NCMD/{NODE}"
    message = pb.Payload()
    message.ParseFromString(command)
    assert [(m.name, m.boolean_value) for m in message.metrics] == [(REBIRTH_METRIC, True)]
    assert [e.event for e in out.events] == [EventKind.DATA_BEFORE_BIRTH]


def test_unregistered_devices_are_dead_lettered_but_still_come_online() -> None:
    host, node = new_host(), EdgeNode(GROUP, NODE)
    handle(host, node.topic("NBIRTH"), node.nbirth(T0))
    out = handle(host, node.topic("DBIRTH", "ghost-1"), node.dbirth(T0, BIRTH))
    assert [r.reason for r in out.rejects] == [DeadLetterReason.UNKNOWN_DEVICE]
    assert out.records == []
    assert [e.event for e in out.events] == [EventKind.ONLINE]


def test_node_metrics_belong_to_a_device_registered_under_the_node_id() -> None:
    host, node = new_host(), EdgeNode(GROUP, "meter-node")
    out = handle(
        host,
        node.topic("NBIRTH"),
        node.nbirth(T0, [metric(name="active_power", alias=9, datatype=pb.Double, value=42.0)]),
    )
    assert out.rejects == []
    [record] = out.records
    assert (record.gateway_id, record.device_id) == ("meter-node", "meter-node")
    assert [r.value for r in record.readings] == [42.0]
    # A gateway-only node publishes only control metrics: nothing to store, nothing rejected.
    gateway = EdgeNode(GROUP, "gateway-only")
    quiet = handle(host, gateway.topic("NBIRTH"), gateway.nbirth(T0))
    assert (quiet.records, quiet.rejects) == ([], [])


def test_null_and_transient_metrics_are_skipped_historical_ones_kept() -> None:
    host, node = new_host(), EdgeNode(GROUP, NODE)
    born_device(host, node, BIRTH)
    old = T0 - 3_600_000
    data = node.data(
        T0 + 1000,
        [
            metric(alias=1, is_null=True),
            metric(alias=1, value=9.0, value_type=pb.Float, is_transient=True),
            metric(alias=1, value=0.5, value_type=pb.Float, ts_ms=old, is_historical=True),
        ],
    )
    out = handle(host, node.topic("DDATA", DEVICE), data)
    assert out.rejects == []
    assert out.skipped == {"null": 1, "transient": 1}
    assert [(r.value, r.ts) for r in out.records[0].readings] == [(500.0, at(old))]


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (192, Quality.GOOD),
        (0x40, Quality.UNCERTAIN),
        (0, Quality.BAD),
        (2**31, Quality.BAD),
        ("Good", Quality.GOOD),
        ("Bad_Stale", Quality.BAD),
    ],
)
def test_quality_property_sets_the_reading_quality(quality: object, expected: Quality) -> None:
    host, node = new_host(), EdgeNode(GROUP, NODE)
    born_device(host, node, BIRTH)
    data = node.data(
        T0 + 1000,
        [metric(alias=1, value=1.0, value_type=pb.Float, properties={"Quality": quality})],
    )
    out = handle(host, node.topic("DDATA", DEVICE), data)
    assert out.records[0].readings[0].quality is expected


def test_each_bad_metric_gets_its_reason() -> None:
    host, node = new_host(), EdgeNode(GROUP, NODE)
    birth = [
        metric(name="Active Power", alias=1, datatype=pb.Double, value=1.0),
        metric(name="Firmware", alias=2, datatype=pb.String, value="1.2"),
        metric(name="Power Factor", alias=3, datatype=pb.String, value="0.9"),
        metric(
            name="Voltage", alias=4, datatype=pb.Double, value=1.0, properties={"engUnit": "kWh"}
        ),
    ]
    out = born_device(host, node, birth)
    assert sorted((r.reading_index, r.reason) for r in out.rejects) == [
        (1, DeadLetterReason.UNKNOWN_METRIC),
        (2, DeadLetterReason.DATATYPE_MISMATCH),
        (3, DeadLetterReason.UNIT_MISMATCH),
    ]
    assert [r.metric for r in out.records[0].readings] == ["active_power"]
    data = node.data(
        T0 + 1000,
        [
            metric(alias=1, value=float("inf")),
            metric(alias=1, value=1.0, ts_ms=int((NOW + timedelta(hours=1)).timestamp() * 1000)),
            metric(alias=1, value=1.0, ts_ms=int((NOW - timedelta(days=60)).timestamp() * 1000)),
        ],
    )
    out = handle(host, node.topic("DDATA", DEVICE), data)
    assert [r.reason for r in out.rejects] == [
        DeadLetterReason.NON_FINITE_VALUE,
        DeadLetterReason.TIMESTAMP_IN_FUTURE,
        DeadLetterReason.TIMESTAMP_TOO_OLD,
    ]
    assert out.records == []


def test_two_names_mapping_to_one_metric_at_one_time_keep_the_first() -> None:
    host, node = new_host(), EdgeNode(GROUP, NODE)
    birth = [
        metric(name="Active Power", alias=1, datatype=pb.Double, value=1.0),
        metric(name="Power", alias=2, datatype=pb.Double, value=2.0),
    ]
    out = born_device(host, node, birth)
    assert [r.value for r in out.records[0].readings] == [1.0]
    assert [(r.reason, r.reading_index) for r in out.rejects] == [
        (DeadLetterReason.SCHEMA_VIOLATION, 1)
    ]


def test_configured_names_map_folders() -> None:
    host = new_host(**{"Meter/Total kW": ConfiguredMetric(metric="active_power", unit="kW")})
    node = EdgeNode(GROUP, NODE)
    out = born_device(
        host, node, [metric(name="Meter/Total kW", alias=1, datatype=pb.Float, value=2.0)]
    )
    assert [(r.metric, r.value) for r in out.records[0].readings] == [("active_power", 2000.0)]


@pytest.mark.parametrize(
    "topic",
    [
        "spBv1.0/g/NDATA",
        "spBv1.0/g/XDATA/n",
        "spBv1.0/g/DDATA/n",
        "spBv1.0/g/NDATA/n/d",
        "spBv1.0//NDATA/n",
    ],
)
def test_topics_outside_the_namespace_structure_are_dead_lettered(topic: str) -> None:
    out = handle(new_host(), topic, b"")
    assert [r.reason for r in out.rejects] == [DeadLetterReason.SCHEMA_VIOLATION]


def test_a_payload_over_the_size_limit_is_dead_lettered() -> None:
    sessions = SparkplugSessions(rebirth_interval=timedelta(seconds=10))
    host = SparkplugHost(sessions, MetricMapper(), ValidationPolicy(max_payload_bytes=10))
    node = EdgeNode(GROUP, NODE)
    out = handle(host, node.topic("NBIRTH"), node.nbirth(T0))
    assert [r.reason for r in out.rejects] == [DeadLetterReason.PAYLOAD_TOO_LARGE]
