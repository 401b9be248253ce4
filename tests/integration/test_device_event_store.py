"""The device-event store against the real TimescaleDB: idempotent, and only transitions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from carbonflow.config import DatabaseSettings, KafkaSettings
from schemas import DeviceEvent, EventKind, SourceKind
from services.stream.event_store import insert_events

pytestmark = pytest.mark.integration

T = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


def event(
    source: str,
    kind: EventKind,
    ts: datetime,
    session: str | None = "s1",
    source_kind: SourceKind = SourceKind.GATEWAY,
    **details: int,
) -> DeviceEvent:
    return DeviceEvent(
        source_kind=source_kind,
        source_id=source,
        event=kind,
        ts=ts,
        session=session,
        details=dict(details),
        observed_at=T + timedelta(hours=1),
        topic="cf/v1/status/gateway/x",
    )


def store(db: DatabaseSettings, events: Sequence[DeviceEvent]) -> int:
    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(db.conninfo()) as conn:
            return await insert_events(conn, events)

    return asyncio.run(run())


def rows(db: DatabaseSettings, source: str) -> list[tuple[str, datetime, str | None]]:
    with psycopg.connect(db.conninfo()) as conn:
        return conn.execute(
            "SELECT event, ts, details->>'session' FROM device_events WHERE source_id = %s "
            "ORDER BY recorded_at",
            (source,),
        ).fetchall()


def test_presence_is_stored_once_per_transition(db_settings: DatabaseSettings, run_id: str) -> None:
    gw = f"store-{run_id}-gw"
    online = event(gw, EventKind.ONLINE, T)
    assert store(db_settings, [online]) == 1
    assert store(db_settings, [online]) == 0  # redelivered
    # Same state, same session, another time (a Sparkplug rebirth, a birth republished).
    assert store(db_settings, [event(gw, EventKind.ONLINE, T + timedelta(minutes=5))]) == 0
    # The last will carries the connect time: earlier than the birth, still a transition.
    will = event(gw, EventKind.OFFLINE, T - timedelta(seconds=1))
    assert store(db_settings, [will]) == 1
    assert store(db_settings, [event(gw, EventKind.OFFLINE, T + timedelta(hours=2))]) == 0
    # A new session is a transition even in the same state, and so is coming back.
    assert store(db_settings, [event(gw, EventKind.ONLINE, T + timedelta(hours=3), "s2")]) == 1
    assert rows(db_settings, gw) == [
        ("online", T, "s1"),
        ("offline", T - timedelta(seconds=1), "s1"),
        ("online", T + timedelta(hours=3), "s2"),
    ]


def test_one_batch_is_applied_in_order(db_settings: DatabaseSettings, run_id: str) -> None:
    dev = f"store-{run_id}-dev"
    batch = [
        event(dev, EventKind.ONLINE, T, source_kind=SourceKind.DEVICE),
        event(dev, EventKind.ONLINE, T + timedelta(seconds=1), source_kind=SourceKind.DEVICE),
        event(dev, EventKind.OFFLINE, T + timedelta(seconds=2), source_kind=SourceKind.DEVICE),
        event(dev, EventKind.ONLINE, T + timedelta(seconds=3), source_kind=SourceKind.DEVICE),
    ]
    assert store(db_settings, batch) == 3
    assert [event for event, _, _ in rows(db_settings, dev)] == ["online", "offline", "online"]


def test_other_events_are_idempotent_on_their_key(
    db_settings: DatabaseSettings, run_id: str
) -> None:
    node = f"g/store-{run_id}-node"
    gap = event(
        node, EventKind.SEQ_GAP, T, source_kind=SourceKind.SPARKPLUG_NODE, expected=4, missing=3
    )
    later = event(node, EventKind.SEQ_GAP, T + timedelta(seconds=9), source_kind=gap.source_kind)
    assert store(db_settings, [gap, gap, later]) == 2
    assert store(db_settings, [gap]) == 0
    with psycopg.connect(db_settings.conninfo()) as conn:
        [(details,)] = conn.execute(
            "SELECT details FROM device_events WHERE source_id = %s AND ts = %s", (node, T)
        ).fetchall()
    assert details["expected"] == 4
    assert details["missing"] == 3
    assert details["session"] == "s1"


def test_the_stack_creates_the_events_topic(stack: object) -> None:
    kafka = KafkaSettings()

    async def partitions() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            return len(await producer.partitions_for(kafka.events_topic))
        finally:
            await producer.stop()

    assert asyncio.run(partitions()) == kafka.partitions
