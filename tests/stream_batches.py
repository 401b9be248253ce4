"""Helpers for tests that feed readings records straight to the stream pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

from carbonflow.config import DatabaseSettings
from schemas import Reading, ReadingsRecord
from services.stream.pipeline import BatchResult, store_batch


def counter_record(
    device_id: str,
    metric: tuple[str, str],
    points: Sequence[tuple[float, float]],
    start: datetime,
) -> ReadingsRecord:
    """One record of readings of ``metric`` (name, unit) at (seconds after start, value)."""
    times = [start + timedelta(seconds=s) for s, _ in points]
    return ReadingsRecord(
        gateway_id="gw",
        device_id=device_id,
        session_id="s",
        seq=0,
        sent_at=max(times),
        received_at=max(times),
        readings=[
            Reading(ts=t, metric=metric[0], value=v, unit=metric[1])
            for t, (_, v) in zip(times, points, strict=True)
        ],
    )


def store_batches(
    db: DatabaseSettings,
    batches: Sequence[list[ReadingsRecord]],
    *,
    now: datetime,
    max_gap_s: float,
) -> list[BatchResult]:
    """Each batch through ``store_batch`` in turn; none may be refused."""

    async def go() -> list[BatchResult]:
        results = []
        async with AsyncConnectionPool(db.conninfo(), min_size=1, max_size=1) as pool:
            for batch in batches:
                result, rejects = await store_batch(pool, batch, max_gap_s, source="t", now=now)
                assert rejects == []
                results.append(result)
        return results

    return asyncio.run(go())


def query(db: DatabaseSettings, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(db.conninfo()) as conn:
        return conn.execute(sql, params).fetchall()
