"""Batches per poll on disk, merged per device on the wire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edge.gateway.batching import (
    SequenceNumbers,
    StoredBatch,
    merge,
    plan_wire_batches,
    poll_batches,
)
from schemas.telemetry import Reading, TelemetryBatch

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
INTERVAL = timedelta(seconds=5)


def readings(n: int, start: datetime = T0) -> list[Reading]:
    return [
        Reading(
            ts=start + timedelta(milliseconds=i), metric="active_power", value=float(i), unit="W"
        )
        for i in range(n)
    ]


def stored(entry_id: int, device_id: str, n: int, age_s: float, now: datetime) -> StoredBatch:
    batch = TelemetryBatch(
        gateway_id="gw-1",
        device_id=device_id,
        session_id="s1",
        seq=entry_id,
        sent_at=now,
        readings=readings(n, T0 + timedelta(seconds=entry_id)),
    )
    return StoredBatch(entry_id, "gw-1", device_id, now - timedelta(seconds=age_s), batch)


def test_sequence_numbers_count_per_device() -> None:
    numbers = SequenceNumbers()
    taken = [numbers.take("gw", d) for d in ("a", "b", "a", "a", "b")]
    assert taken == [0, 0, 1, 2, 1]


def test_a_poll_is_split_at_the_batch_limit_and_numbered() -> None:
    numbers = SequenceNumbers()
    batches = poll_batches(
        gateway_id="gw-1",
        device_id="m1",
        session_id="s1",
        numbers=numbers,
        readings=readings(7),
        sent_at=T0,
        max_readings=3,
    )
    assert [len(b.readings) for b in batches] == [3, 3, 1]
    assert [b.seq for b in batches] == [0, 1, 2]
    assert [r for b in batches for r in b.readings] == readings(7)


def test_nothing_is_due_before_the_batch_interval() -> None:
    now = T0 + timedelta(minutes=1)
    plan = plan_wire_batches(
        [stored(1, "m1", 2, 1.0, now), stored(2, "m1", 2, 0.5, now)],
        max_readings=100,
        batch_interval=INTERVAL,
        now=now,
    )
    assert plan.ready == []
    assert plan.next_due == now + INTERVAL - timedelta(seconds=1.0)


def test_a_due_device_goes_out_whole_and_oldest_data_first() -> None:
    now = T0 + timedelta(minutes=1)
    entries = [
        stored(1, "m2", 2, 9.0, now),
        stored(2, "m1", 2, 7.0, now),
        stored(3, "m2", 2, 6.0, now),
        stored(4, "m3", 2, 1.0, now),  # not due yet
        stored(5, "m1", 2, 0.5, now),  # rides along with m1's due batch
    ]
    plan = plan_wire_batches(entries, max_readings=100, batch_interval=INTERVAL, now=now)
    assert [(p.device_id, p.entry_ids) for p in plan.ready] == [("m2", (1, 3)), ("m1", (2, 5))]
    assert plan.next_due == now + INTERVAL - timedelta(seconds=1.0)


def test_a_full_batch_is_due_at_once_and_chunks_keep_the_limit() -> None:
    now = T0 + timedelta(minutes=1)
    entries = [stored(i, "m1", 4, 0.1, now) for i in range(1, 6)]
    plan = plan_wire_batches(entries, max_readings=10, batch_interval=INTERVAL, now=now)
    assert [p.entry_ids for p in plan.ready] == [(1, 2), (3, 4), (5,)]
    assert all(p.readings <= 10 for p in plan.ready)


def test_draining_takes_everything() -> None:
    now = T0 + timedelta(minutes=1)
    entries = [stored(1, "m1", 1, 0.0, now), stored(2, "m2", 1, 0.0, now)]
    plan = plan_wire_batches(entries, max_readings=10, batch_interval=INTERVAL, now=None)
    assert [p.entry_ids for p in plan.ready] == [(1,), (2,)]
    assert plan.next_due is None


def test_an_unreadable_entry_goes_out_alone_as_stored() -> None:
    now = T0 + timedelta(minutes=1)
    broken = StoredBatch(2, "gw-1", "m1", now, None)
    plan = plan_wire_batches(
        [stored(1, "m1", 1, 0.0, now), broken],
        max_readings=10,
        batch_interval=INTERVAL,
        now=now,
    )
    assert [(p.entry_ids, p.unreadable) for p in plan.ready] == [((2,), True)]


def test_merge_keeps_every_reading_in_order_under_one_number() -> None:
    now = T0 + timedelta(minutes=1)
    entries = [stored(1, "m1", 2, 9.0, now), stored(2, "m1", 3, 8.0, now)]
    plan = plan_wire_batches(entries, max_readings=10, batch_interval=INTERVAL, now=now)
    (wire,) = plan.ready
    batch = merge(wire, session_id="s9", seq=41, sent_at=now)
    assert (batch.device_id, batch.session_id, batch.seq, batch.sent_at) == ("m1", "s9", 41, now)
    assert batch.readings == [r for e in entries if e.batch for r in e.batch.readings]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        plan_wire_batches([], max_readings=0, batch_interval=INTERVAL, now=T0)
