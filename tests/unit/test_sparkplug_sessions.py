"""The Sparkplug session state machine: births, aliases, seq gaps, bdSeq, data before birth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import DeadLetterReason, EventKind, SourceKind
from services.ingest.sparkplug import sparkplug_b_pb2 as pb
from services.ingest.sparkplug.codec import SpMetric, SpPayload, decode_payload
from services.ingest.sparkplug.sessions import Observation, SparkplugSessions
from services.ingest.sparkplug.topics import parse_topic
from tests.sparkplug_node import EdgeNode, metric

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
T0 = int(NOW.timestamp() * 1000) - 60_000
GROUP, NODE, DEVICE = "plant-1", "edge-7", "press-01"

POWER = dict(name="Active Power", alias=1, datatype=pb.Double)
ENERGY = dict(name="Energy", alias=2, datatype=pb.UInt64)


def feed(sessions: SparkplugSessions, topic: str, data: bytes, at: datetime = NOW) -> Observation:
    return sessions.observe(
        parse_topic(topic), decode_payload(data), mqtt_topic=topic, received_at=at
    )


def born(track_seq: bool = True) -> tuple[SparkplugSessions, EdgeNode]:
    """A node with one device, both born."""
    sessions = SparkplugSessions(rebirth_interval=timedelta(seconds=10), track_seq=track_seq)
    node = EdgeNode(GROUP, NODE, bd_seq=3)
    feed(sessions, node.topic("NBIRTH"), node.nbirth(T0))
    birth = [metric(**POWER, value=1500.0), metric(**ENERGY, value=10)]
    feed(sessions, node.topic("DBIRTH", DEVICE), node.dbirth(T0, birth))
    return sessions, node


def ddata(node: EdgeNode, *, seq: int | None = None, value: float = 1.0) -> bytes:
    return node.data(T0 + 1000, [metric(alias=1, value=value, value_type=pb.Double)], seq=seq)


def kinds(observation: Observation) -> list[tuple[SourceKind, EventKind]]:
    return [(e.source_kind, e.event) for e in observation.events]


def test_node_birth_brings_the_node_online_in_its_bdseq_session() -> None:
    sessions = SparkplugSessions(rebirth_interval=timedelta(seconds=10))
    node = EdgeNode(GROUP, NODE, bd_seq=7)
    seen = feed(sessions, node.topic("NBIRTH"), node.nbirth(T0, [metric(**POWER, value=2.0)]))
    assert seen.refusal is None
    assert seen.session == "bdseq-7"
    [event] = seen.events
    assert (event.source_kind, event.source_id, event.event) == (
        SourceKind.SPARKPLUG_NODE,
        f"{GROUP}/{NODE}",
        EventKind.ONLINE,
    )
    assert event.ts == datetime.fromtimestamp(T0 / 1000, UTC)  # the payload's own time
    assert event.session == "bdseq-7"
    assert event.details["bd_seq"] == 7
    # The birth's metrics come out resolved, values included (bdSeq, rebirth, power).
    assert [r.definition.name for r in seen.resolved] == [
        "bdSeq",
        "Node Control/Rebirth",
        "Active Power",
    ]


def test_device_data_by_alias_resolves_to_the_birth_definitions() -> None:
    sessions, node = born()
    seen = feed(
        sessions,
        node.topic("DDATA", DEVICE),
        node.data(T0 + 1000, [metric(alias=2, value=11, value_type=pb.UInt64)]),
    )
    assert seen.refusal is None
    assert seen.events == []
    [resolved] = seen.resolved
    assert resolved.definition.name == "Energy"
    assert resolved.definition.datatype == pb.UInt64
    assert resolved.metric.value == 11


def test_unknown_alias_is_a_problem_of_that_metric_only() -> None:
    sessions, node = born()
    data = node.data(
        T0 + 1000,
        [metric(alias=99, value=5.0, value_type=pb.Double), metric(alias=1, value=7.0)],
    )
    seen = feed(sessions, node.topic("DDATA", DEVICE), data)
    assert [(p.reason, p.metric.index) for p in seen.problems] == [
        (DeadLetterReason.UNKNOWN_ALIAS, 0)
    ]
    assert [r.definition.name for r in seen.resolved] == ["Active Power"]


def test_a_datatype_other_than_the_birth_declared_is_refused_per_metric() -> None:
    sessions, node = born()
    data = node.data(T0 + 1000, [metric(alias=1, datatype=pb.String, value="high")])
    seen = feed(sessions, node.topic("DDATA", DEVICE), data)
    assert [p.reason for p in seen.problems] == [DeadLetterReason.DATATYPE_MISMATCH]
    assert seen.resolved == []


def test_seq_gap_reports_expected_received_and_missing() -> None:
    sessions, node = born()  # NBIRTH seq 0, DBIRTH seq 1
    assert feed(sessions, node.topic("DDATA", DEVICE), ddata(node)).events == []  # seq 2
    seen = feed(sessions, node.topic("DDATA", DEVICE), ddata(node, seq=6))
    [gap] = seen.events
    assert (gap.source_kind, gap.source_id, gap.event) == (
        SourceKind.SPARKPLUG_NODE,
        f"{GROUP}/{NODE}",
        EventKind.SEQ_GAP,
    )
    assert (gap.details["expected"], gap.details["received"], gap.details["missing"]) == (3, 6, 3)
    assert gap.session == "bdseq-3"
    # The message that revealed the gap is still good data.
    assert [r.definition.name for r in seen.resolved] == ["Active Power"]
    # Counting goes on from the new seq.
    assert feed(sessions, node.topic("DDATA", DEVICE), ddata(node)).events == []


def test_seq_wraps_from_255_to_0_without_a_gap() -> None:
    sessions, node = born()
    feed(sessions, node.topic("DDATA", DEVICE), ddata(node, seq=254))  # a gap, to get near 255
    for _ in range(4):  # 255, 0, 1, 2
        assert feed(sessions, node.topic("DDATA", DEVICE), ddata(node)).events == []


def test_a_gap_across_the_wrap_counts_modulo_256() -> None:
    sessions, node = born()
    feed(sessions, node.topic("DDATA", DEVICE), ddata(node, seq=250))
    [gap] = feed(sessions, node.topic("DDATA", DEVICE), ddata(node, seq=3)).events
    assert (gap.details["expected"], gap.details["missing"]) == (251, 8)


def test_a_redelivered_message_is_not_a_gap() -> None:
    sessions, node = born()
    first = ddata(node)
    feed(sessions, node.topic("DDATA", DEVICE), first)
    assert feed(sessions, node.topic("DDATA", DEVICE), first).events == []


def test_without_seq_tracking_no_gaps_are_reported() -> None:
    sessions, node = born(track_seq=False)
    assert feed(sessions, node.topic("DDATA", DEVICE), ddata(node, seq=40)).events == []


@settings(max_examples=60, derandomize=True)
@given(drops=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=40))
def test_gaps_add_up_to_the_messages_dropped(drops: list[int]) -> None:
    """However many messages vanish between deliveries (fewer than 256 in a row), the gaps
    reported add up to exactly that many."""
    sessions, node = born()
    missing = 0
    for dropped in drops:
        node.seq = (node.seq + dropped) % 256
        for event in feed(sessions, node.topic("DDATA", DEVICE), ddata(node)).events:
            assert event.event is EventKind.SEQ_GAP
            missing += int(event.details["missing"])  # type: ignore[arg-type]
    assert missing == sum(drops)


def test_data_before_the_node_birth_is_refused_and_a_rebirth_asked_once_per_interval() -> None:
    sessions = SparkplugSessions(rebirth_interval=timedelta(seconds=10))
    node = EdgeNode(GROUP, NODE)
    topic = node.topic("NDATA")
    first = feed(sessions, topic, node.data(T0, [metric(alias=1, value=1.0)]))
    assert first.refusal is not None
    assert first.refusal.reason is DeadLetterReason.DATA_BEFORE_BIRTH
    assert first.rebirth
    assert kinds(first) == [(SourceKind.SPARKPLUG_NODE, EventKind.DATA_BEFORE_BIRTH)]
    assert first.events[0].details["rebirth_requested"] is True

    soon = feed(sessions, topic, node.data(T0, [metric(alias=1)]), NOW + timedelta(seconds=5))
    assert soon.refusal is not None
    assert not soon.rebirth
    assert soon.events == []

    later = feed(sessions, topic, node.data(T0, [metric(alias=1)]), NOW + timedelta(seconds=11))
    assert later.rebirth


def test_device_data_before_its_device_birth_asks_the_node_for_a_rebirth() -> None:
    sessions, node = born()
    seen = feed(sessions, node.topic("DDATA", "never-born"), ddata(node))
    assert seen.refusal is not None
    assert seen.refusal.reason is DeadLetterReason.DATA_BEFORE_BIRTH
    assert seen.rebirth
    [event] = seen.events
    assert event.source_kind is SourceKind.SPARKPLUG_DEVICE
    assert event.source_id == f"{GROUP}/{NODE}/never-born"


def test_device_birth_before_the_node_birth_is_refused() -> None:
    sessions = SparkplugSessions(rebirth_interval=timedelta(seconds=10))
    node = EdgeNode(GROUP, NODE)
    seen = feed(sessions, node.topic("DBIRTH", DEVICE), node.dbirth(T0, [metric(**POWER)]))
    assert seen.refusal is not None
    assert seen.rebirth


def test_node_death_with_the_birth_bdseq_ends_the_node_and_its_devices() -> None:
    sessions, node = born()
    seen = feed(sessions, node.topic("NDEATH"), node.ndeath())
    assert kinds(seen) == [
        (SourceKind.SPARKPLUG_NODE, EventKind.OFFLINE),
        (SourceKind.SPARKPLUG_DEVICE, EventKind.OFFLINE),
    ]
    assert seen.events[0].details == {"bd_seq": 3, "verified": True}
    assert seen.events[1].source_id == f"{GROUP}/{NODE}/{DEVICE}"
    assert all(e.session == "bdseq-3" for e in seen.events)
    # NDEATH carries no timestamp here: the event falls back on the receive time.
    assert seen.events[0].ts == NOW
    after = feed(sessions, node.topic("DDATA", DEVICE), ddata(node))
    assert after.refusal is not None
    assert after.refusal.reason is DeadLetterReason.DATA_BEFORE_BIRTH


def test_node_death_with_another_bdseq_is_a_mismatch_and_the_node_stays_online() -> None:
    sessions, node = born()
    seen = feed(sessions, node.topic("NDEATH"), node.ndeath(bd_seq=2, ts_ms=T0 + 5))
    assert kinds(seen) == [(SourceKind.SPARKPLUG_NODE, EventKind.BDSEQ_MISMATCH)]
    assert seen.events[0].details == {"birth_bd_seq": 3, "death_bd_seq": 2}
    still = feed(sessions, node.topic("DDATA", DEVICE), ddata(node))
    assert still.refusal is None
    assert [r.definition.name for r in still.resolved] == ["Active Power"]


def test_node_death_without_a_known_birth_is_recorded_unverified() -> None:
    sessions = SparkplugSessions(rebirth_interval=timedelta(seconds=10))
    node = EdgeNode(GROUP, NODE, bd_seq=9)
    seen = feed(sessions, node.topic("NDEATH"), node.ndeath())
    assert kinds(seen) == [(SourceKind.SPARKPLUG_NODE, EventKind.OFFLINE)]
    assert seen.events[0].details == {"bd_seq": 9, "verified": False}
    assert seen.events[0].session == "bdseq-9"


def test_device_death_takes_the_device_offline_until_its_next_birth() -> None:
    sessions, node = born()
    seen = feed(sessions, node.topic("DDEATH", DEVICE), node.ddeath(T0 + 2000))
    assert kinds(seen) == [(SourceKind.SPARKPLUG_DEVICE, EventKind.OFFLINE)]
    assert seen.events[0].details == {"verified": True}
    assert feed(sessions, node.topic("DDATA", DEVICE), ddata(node)).refusal is not None
    rebirth = node.dbirth(T0 + 3000, [metric(**POWER, value=3.0)])
    assert kinds(feed(sessions, node.topic("DBIRTH", DEVICE), rebirth)) == [
        (SourceKind.SPARKPLUG_DEVICE, EventKind.ONLINE)
    ]
    assert feed(sessions, node.topic("DDATA", DEVICE), ddata(node)).refusal is None


def test_a_new_node_birth_forgets_the_device_births_of_the_last() -> None:
    sessions, node = born()
    node.bd_seq = 4
    feed(sessions, node.topic("NBIRTH"), node.nbirth(T0 + 5000))
    seen = feed(sessions, node.topic("DDATA", DEVICE), ddata(node))
    assert seen.refusal is not None
    assert seen.refusal.reason is DeadLetterReason.DATA_BEFORE_BIRTH


def test_a_birth_without_bdseq_or_seq_is_refused() -> None:
    sessions = SparkplugSessions(rebirth_interval=timedelta(seconds=10))
    topic = f"spBv1.0/{GROUP}/NBIRTH/{NODE}"
    no_bdseq = SpPayload(timestamp_ms=T0, seq=0, metrics=())
    seen = sessions.observe(parse_topic(topic), no_bdseq, mqtt_topic=topic, received_at=NOW)
    assert seen.refusal is not None
    assert "bdSeq" in seen.refusal.detail
    bdseq = SpMetric(index=0, name="bdSeq", datatype=pb.UInt64, value_kind="long_value", value=1)
    no_seq = SpPayload(timestamp_ms=T0, seq=None, metrics=(bdseq,))
    seen = sessions.observe(parse_topic(topic), no_seq, mqtt_topic=topic, received_at=NOW)
    assert seen.refusal is not None
    assert seen.events == []


def test_birth_metrics_without_datatype_or_with_a_reused_alias_are_problems() -> None:
    sessions, node = born()
    birth = [
        metric(**POWER, value=1.0),
        metric(name="Voltage", alias=1, datatype=pb.Float, value=230.0),  # alias 1 again
        metric(name="Current", alias=5, value=3.0, value_type=pb.Double),  # no datatype
    ]
    seen = feed(sessions, node.topic("DBIRTH", "press-02"), node.dbirth(T0, birth))
    assert [(p.metric.index, p.reason) for p in seen.problems] == [
        (1, DeadLetterReason.SCHEMA_VIOLATION),
        (2, DeadLetterReason.SCHEMA_VIOLATION),
    ]
    assert [r.definition.name for r in seen.resolved] == ["Active Power"]


def test_commands_are_not_taken() -> None:
    sessions, node = born()
    seen = feed(sessions, node.topic("NCMD"), node.data(T0, []))
    assert seen.refusal is not None
    assert seen.refusal.reason is DeadLetterReason.SCHEMA_VIOLATION
