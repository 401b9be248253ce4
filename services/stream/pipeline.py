"""What the stream processor does with one batch of Kafka records, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from pydantic import ValidationError

from schemas import DeadLetterReason, DeadLetterRecord, ReadingsRecord
from services.stream import store
from services.stream.energy import POWER_METRIC, affected_windows, energy_intervals

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchResult:
    records: int
    new_readings: int
    energy_minutes: int


def decode_records(
    payloads: Sequence[bytes], source: str, now: datetime
) -> tuple[list[ReadingsRecord], list[DeadLetterRecord]]:
    """Parse Kafka values; anything undecodable becomes a dead letter instead of a crash."""
    records: list[ReadingsRecord] = []
    rejects: list[DeadLetterRecord] = []
    for payload in payloads:
        try:
            records.append(ReadingsRecord.model_validate_json(payload))
        except ValidationError as exc:
            rejects.append(
                DeadLetterRecord(
                    reason=DeadLetterReason.SCHEMA_VIOLATION,
                    detail=f"not a readings record v1: {exc.errors()[0]['msg']}",
                    source=source,
                    received_at=now,
                    payload=payload.decode("utf-8", errors="replace")[:65536],
                )
            )
    return records, rejects


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
        minutes = 0
        if windows:
            samples = await store.fetch_power_samples(conn, windows, max_gap_s)
            intervals = energy_intervals(windows, samples, max_gap_s)
            await store.upsert_energy(conn, intervals)
            minutes = len(intervals)
    return BatchResult(records=len(records), new_readings=new_readings, energy_minutes=minutes)
