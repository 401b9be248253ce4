"""What the stream processor does with one batch of Kafka records, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from schemas import DeadLetterReason, DeadLetterRecord, ReadingsRecord
from services.stream import emission_store, metrics, rollup_store, store
from services.stream.emissions import scope2_location
from services.stream.energy import (
    POWER_METRIC,
    EnergyIntervals,
    affected_windows,
    energy_intervals,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchResult:
    records: int
    new_readings: int
    energy_minutes: int
    emission_minutes: int = 0
    unpriced_minutes: int = 0
    rollup_rows: int = 0


M = TypeVar("M", bound=BaseModel)


def decode_values(
    model: type[M], what: str, payloads: Sequence[bytes], source: str, now: datetime
) -> tuple[list[M], list[DeadLetterRecord]]:
    """Parse Kafka values as ``model``; anything undecodable becomes a dead letter naming
    ``what`` it should have been, instead of a crash."""
    decoded: list[M] = []
    rejects: list[DeadLetterRecord] = []
    for payload in payloads:
        try:
            decoded.append(model.model_validate_json(payload))
        except ValidationError as exc:
            rejects.append(
                DeadLetterRecord.of(
                    DeadLetterReason.SCHEMA_VIOLATION,
                    f"not a {what}: {exc.errors()[0]['msg']}",
                    source=source,
                    received_at=now,
                    payload=payload,
                )
            )
    return decoded, rejects


def decode_records(
    payloads: Sequence[bytes], source: str, now: datetime
) -> tuple[list[ReadingsRecord], list[DeadLetterRecord]]:
    return decode_values(ReadingsRecord, "readings record v1", payloads, source, now)


async def process_batch(
    conn: psycopg.AsyncConnection, records: Sequence[ReadingsRecord], max_gap_s: float
) -> BatchResult:
    """Store the readings and recompute every minute of energy they can have changed."""
    async with conn.transaction():
        new_readings = await store.insert_readings(conn, records)
        windows = affected_windows(
            (
                (record.device_id, reading.ts.timestamp())
                for record in records
                for reading in record.readings
                if reading.metric == POWER_METRIC
            ),
            max_gap_s,
        )
        if not windows:
            return BatchResult(records=len(records), new_readings=new_readings, energy_minutes=0)
        await store.lock_devices(conn, [w.device_id for w in windows])
        samples = await store.fetch_power_samples(conn, windows, max_gap_s)
        intervals = energy_intervals(windows, samples, max_gap_s)
        await store.upsert_energy(conn, intervals)
        emission_minutes, unpriced = await _price(conn, intervals)
        rollup_rows = await rollup_store.recompute_hours(
            conn, rollup_store.hours_touched(intervals.device_id, intervals.minute)
        )
    return BatchResult(
        records=len(records),
        new_readings=new_readings,
        energy_minutes=len(intervals),
        emission_minutes=emission_minutes,
        unpriced_minutes=unpriced,
        rollup_rows=rollup_rows,
    )


async def _price(conn: psycopg.AsyncConnection, intervals: EnergyIntervals) -> tuple[int, int]:
    """Scope 2 location-based emissions of the recomputed minutes: (rows, minutes unpriced)."""
    if not len(intervals):
        return 0, 0
    sites = await emission_store.device_sites(conn, intervals.device_id)
    factors = await emission_store.grid_factors(conn)
    rows, unpriced = scope2_location(intervals, sites, factors)
    await emission_store.upsert_emissions(conn, rows)
    for gap in unpriced:
        logger.warning(
            "%d minutes of %s on %s have no emission factor: %s",
            gap.minutes,
            gap.device_id,
            gap.day,
            gap.reason,
        )
    return len(rows), sum(gap.minutes for gap in unpriced)


# Errors that say "this data", not "the database is away": retrying would never succeed.
DATA_REFUSED = (psycopg.IntegrityError, psycopg.DataError)


async def store_batch(
    pool: AsyncConnectionPool,
    records: Sequence[ReadingsRecord],
    max_gap_s: float,
    *,
    source: str,
    now: datetime,
) -> tuple[BatchResult, list[DeadLetterRecord]]:
    """Process a batch, waiting out database outages; records it refuses become dead letters.

    Nothing is skipped while the database is unreachable (the caller's offsets do not move),
    and one record the database refuses does not hold back the records around it.
    """
    try:
        return await _with_retry(pool, records, max_gap_s), []
    except DATA_REFUSED as exc:
        logger.warning("batch refused (%s); storing its %d records one by one", exc, len(records))
    stored = BatchResult(records=0, new_readings=0, energy_minutes=0)
    rejects: list[DeadLetterRecord] = []
    for record in records:
        try:
            result = await _with_retry(pool, [record], max_gap_s)
        except DATA_REFUSED as exc:
            rejects.append(
                DeadLetterRecord.of(
                    DeadLetterReason.STORAGE_REJECTED,
                    f"{type(exc).__name__}: {exc}".strip(),
                    source=source,
                    received_at=now,
                    device_id=record.device_id,
                    payload=record.model_dump_json(),
                )
            )
            continue
        stored = BatchResult(
            records=stored.records + result.records,
            new_readings=stored.new_readings + result.new_readings,
            energy_minutes=stored.energy_minutes + result.energy_minutes,
            emission_minutes=stored.emission_minutes + result.emission_minutes,
            unpriced_minutes=stored.unpriced_minutes + result.unpriced_minutes,
            rollup_rows=stored.rollup_rows + result.rollup_rows,
        )
    return stored, rejects


async def _with_retry(
    pool: AsyncConnectionPool, records: Sequence[ReadingsRecord], max_gap_s: float
) -> BatchResult:
    return await with_db_retry(pool, lambda conn: process_batch(conn, records, max_gap_s))


async def with_db_retry(
    pool: AsyncConnectionPool, work: Callable[[psycopg.AsyncConnection], Awaitable[T]]
) -> T:
    """Run ``work`` on a pooled connection until it succeeds or the data itself is refused."""
    async for attempt in AsyncRetrying(
        # Everything but a refusal of the data itself is waited out (connection lost, failover
        # to a read-only replica, a migration in progress): the batch is never skipped.
        retry=retry_if_exception(_is_transient),
        wait=wait_exponential(multiplier=0.5, max=30),
        before_sleep=_log_db_retry,
        reraise=True,
    ):
        with attempt:
            async with pool.connection() as conn:
                return await work(conn)
    raise AssertionError("unreachable: AsyncRetrying either returns or raises")


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, PoolTimeout) or (
        isinstance(exc, psycopg.Error) and not isinstance(exc, DATA_REFUSED)
    )


def _log_db_retry(state: RetryCallState) -> None:
    metrics.DB_RETRIES.inc()
    logger.warning(
        "database unavailable (%s); retrying", state.outcome and state.outcome.exception()
    )
