"""The stream pipeline on the real database: idempotent, order-independent, poison-proof."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from carbonflow.config import DatabaseSettings
from carbonflow.registry import upsert_layout
from edge.simulator.factory import FactoryLayout, small_factory
from schemas import DeadLetterReason, Reading, ReadingsRecord
from services.stream.pipeline import BatchResult, store_batch

pytestmark = pytest.mark.integration

MAX_GAP_S = 90.0
START = datetime(2026, 11, 2, 8, 0, 7, tzinfo=UTC)


@pytest.fixture(scope="module")
def layout(db_settings: DatabaseSettings) -> FactoryLayout:
    layout = small_factory(3, prefix="pipe")
    with psycopg.connect(db_settings.conninfo()) as conn:
        upsert_layout(conn, layout)
    return layout


def delete_rows(db: DatabaseSettings, layout: FactoryLayout) -> None:
    devices = list(layout.devices())
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM energy_1m WHERE device_id = ANY(%s)", (devices,))
        conn.execute("DELETE FROM readings WHERE device_id = ANY(%s)", (devices,))


@pytest.fixture
def clean(db_settings: DatabaseSettings, layout: FactoryLayout) -> None:
    delete_rows(db_settings, layout)


def record(device_id: str, seq: int, times: list[datetime], rng: random.Random) -> ReadingsRecord:
    return ReadingsRecord(
        gateway_id="gw",
        device_id=device_id,
        session_id="s",
        seq=seq,
        sent_at=times[-1],
        received_at=times[-1],
        readings=[
            Reading(ts=t, metric="active_power", value=rng.uniform(0, 20_000), unit="W")
            for t in times
        ],
    )


def records_for(layout: FactoryLayout, seed: int) -> list[ReadingsRecord]:
    """10 minutes of 5 s samples per device, in batches of 7, with one 2-minute gap."""
    rng = random.Random(seed)
    out = []
    for device_id in layout.devices():
        times = [START + timedelta(seconds=5 * k) for k in range(120) if not 40 <= k < 64]
        for seq, first in enumerate(range(0, len(times), 7)):
            out.append(record(device_id, seq, times[first : first + 7], rng))
    return out


def run(db: DatabaseSettings, batches: list[list[ReadingsRecord]]) -> list[object]:
    async def go() -> list[object]:
        results: list[object] = []
        async with AsyncConnectionPool(db.conninfo(), min_size=1, max_size=2) as pool:
            for batch in batches:
                results.append(await store_batch(pool, batch, MAX_GAP_S, source="test", now=START))
        return results

    return asyncio.run(go())


def snapshot(db: DatabaseSettings, layout: FactoryLayout) -> tuple[list[tuple], list[tuple]]:
    devices = list(layout.devices())
    with psycopg.connect(db.conninfo()) as conn:
        readings = conn.execute(
            "SELECT device_id, metric, ts, value FROM readings WHERE device_id = ANY(%s) "
            "ORDER BY 1, 2, 3",
            (devices,),
        ).fetchall()
        energy = conn.execute(
            "SELECT device_id, ts, kwh, sample_count, coverage FROM energy_1m "
            "WHERE device_id = ANY(%s) ORDER BY 1, 2",
            (devices,),
        ).fetchall()
    return readings, energy


def stored_all_at_once(
    db: DatabaseSettings, layout: FactoryLayout, records: list[ReadingsRecord]
) -> tuple[list[tuple], list[tuple]]:
    """The rows one batch of everything gives; the tables are emptied again afterwards."""
    run(db, [records])
    rows = snapshot(db, layout)
    delete_rows(db, layout)
    return rows


@pytest.mark.usefixtures("clean")
def test_redelivered_and_reordered_batches_give_the_same_rows(
    db_settings: DatabaseSettings, layout: FactoryLayout
) -> None:
    records = records_for(layout, seed=1)
    run(db_settings, [records])
    once = snapshot(db_settings, layout)
    assert len(once[0]) == sum(len(r.readings) for r in records)
    assert once[1], "energy rows were computed"

    # At-least-once delivery, in another order, in other batch sizes: the same rows.
    shuffled = records[:]
    random.Random(2).shuffle(shuffled)
    again = run(db_settings, [shuffled[k : k + 5] for k in range(0, len(shuffled), 5)])
    assert sum(r[0].new_readings for r in again) == 0  # type: ignore[index]
    assert_same_rows(snapshot(db_settings, layout), once)


def assert_same_rows(
    got: tuple[list[tuple], list[tuple]], want: tuple[list[tuple], list[tuple]]
) -> None:
    """Readings identical; energy equal up to floating-point summation order."""
    assert got[0] == want[0]
    assert len(got[1]) == len(want[1])
    for a, b in zip(got[1], want[1], strict=True):
        assert a[:2] == b[:2]
        assert a[2] == pytest.approx(b[2], rel=1e-12)
        assert a[3] == b[3]
        assert a[4] == pytest.approx(b[4], abs=1e-12)


@pytest.mark.parametrize("order", ["oldest_first", "newest_first"])
@pytest.mark.usefixtures("clean")
def test_batch_by_batch_arrival_converges_to_all_at_once(
    db_settings: DatabaseSettings, layout: FactoryLayout, order: str
) -> None:
    records = records_for(layout, seed=3)
    all_at_once = stored_all_at_once(db_settings, layout, records)
    # One record per transaction: each must fix the minutes it shares with its neighbours,
    # before them (a late batch) and after them (the next batch).
    one_by_one = records if order == "oldest_first" else records[::-1]
    run(db_settings, [[r] for r in one_by_one])
    assert_same_rows(snapshot(db_settings, layout), all_at_once)


@pytest.mark.usefixtures("clean")
def test_a_record_the_database_refuses_is_dead_lettered_and_the_rest_stored(
    db_settings: DatabaseSettings, layout: FactoryLayout
) -> None:
    records = records_for(layout, seed=4)[:6]
    rng = random.Random(5)
    unregistered = record("pipe-not-registered", 0, [START], rng)
    [(result, rejects)] = run(db_settings, [[*records[:3], unregistered, *records[3:]]])
    assert isinstance(result, BatchResult)
    assert result.records == len(records)
    assert result.new_readings == sum(len(r.readings) for r in records)
    assert [(r.reason, r.device_id) for r in rejects] == [
        (DeadLetterReason.STORAGE_REJECTED, "pipe-not-registered")
    ]
    assert "foreign key" in rejects[0].detail
    assert ReadingsRecord.model_validate_json(rejects[0].payload) == unregistered
    assert len(snapshot(db_settings, layout)[0]) == result.new_readings


@pytest.mark.usefixtures("clean")
def test_concurrent_batches_of_the_same_devices_converge(
    db_settings: DatabaseSettings, layout: FactoryLayout
) -> None:
    """Two workers holding neighbouring batches at once (a rebalance) end like one worker."""
    records = records_for(layout, seed=6)
    all_at_once = stored_all_at_once(db_settings, layout, records)

    async def race() -> None:
        async with AsyncConnectionPool(db_settings.conninfo(), min_size=2, max_size=2) as pool:
            evens, odds = records[::2], records[1::2]
            for k in range(0, len(evens), 3):
                await asyncio.gather(
                    store_batch(pool, evens[k : k + 3], MAX_GAP_S, source="a", now=START),
                    store_batch(pool, odds[k : k + 3], MAX_GAP_S, source="b", now=START),
                )

    asyncio.run(race())
    assert_same_rows(snapshot(db_settings, layout), all_at_once)
