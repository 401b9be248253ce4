"""TimescaleDB adapter of the stream processor: idempotent writes and the reads they need."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import psycopg

from schemas import ReadingsRecord
from services.stream.energy import POWER_METRIC, DeviceWindow, EnergyIntervals, SampleBatch

_STAGE_READINGS = """
CREATE TEMP TABLE IF NOT EXISTS readings_stage (
    device_id text, metric text, ts timestamptz, value double precision,
    quality text, ingested_at timestamptz
) ON COMMIT DELETE ROWS
"""

_MERGE_READINGS = """
INSERT INTO readings (device_id, metric, ts, value, quality, ingested_at)
SELECT device_id, metric, ts, value, quality, ingested_at
FROM readings_stage
ON CONFLICT (device_id, metric, ts) DO NOTHING
"""

_FETCH_POWER = """
SELECT w.k, extract(epoch FROM r.ts)::float8, r.value
FROM unnest(%(devices)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
     WITH ORDINALITY AS w(device_id, lo, hi, k)
JOIN readings r ON r.device_id = w.device_id AND r.ts >= w.lo AND r.ts < w.hi
WHERE r.metric = %(metric)s AND r.quality <> 'bad'
ORDER BY w.k, r.ts
"""

_UPSERT_ENERGY = """
INSERT INTO energy_1m (device_id, ts, kwh, sample_count, coverage, method, computed_at)
SELECT device_id, to_timestamp(minute * 60), kwh, sample_count, coverage,
       'power_trapezoid', now()
FROM unnest(%(device_id)s::text[], %(minute)s::bigint[], %(kwh)s::float8[],
            %(sample_count)s::int[], %(coverage)s::float8[])
     AS e(device_id, minute, kwh, sample_count, coverage)
ON CONFLICT (device_id, ts) DO UPDATE SET
    kwh = EXCLUDED.kwh,
    sample_count = EXCLUDED.sample_count,
    coverage = EXCLUDED.coverage,
    method = EXCLUDED.method,
    computed_at = EXCLUDED.computed_at
WHERE (energy_1m.kwh, energy_1m.sample_count, energy_1m.coverage)
      IS DISTINCT FROM (EXCLUDED.kwh, EXCLUDED.sample_count, EXCLUDED.coverage)
"""


async def insert_readings(conn: psycopg.AsyncConnection, records: Sequence[ReadingsRecord]) -> int:
    """Insert every reading of ``records``; ones already stored are left alone. Returns new rows."""
    await conn.execute(_STAGE_READINGS)
    async with conn.cursor() as cur:
        async with cur.copy(
            "COPY readings_stage (device_id, metric, ts, value, quality, ingested_at) FROM STDIN"
        ) as copy:
            for record in records:
                for reading in record.readings:
                    await copy.write_row(
                        (
                            record.device_id,
                            reading.metric,
                            reading.ts,
                            reading.value,
                            reading.quality.value,
                            record.received_at,
                        )
                    )
        await cur.execute(_MERGE_READINGS)
        return cur.rowcount


_LOCK_DEVICES = """
SELECT pg_advisory_xact_lock(hashtextextended(device_id, 0))
FROM unnest(%(devices)s::text[]) AS d(device_id)
ORDER BY device_id
"""


async def lock_devices(conn: psycopg.AsyncConnection, device_ids: Sequence[str]) -> None:
    """Serialise energy recomputation per device until the transaction ends.

    Partitions keep a device on one worker, but during a rebalance two workers can briefly
    hold batches of the same device; without the lock the slower one could overwrite newer
    energy with a recomputation that did not see the other's readings. Locks are taken in
    sorted order so two workers never wait on each other in a cycle.
    """
    await conn.execute(_LOCK_DEVICES, {"devices": sorted(set(device_ids))})


async def fetch_power_samples(
    conn: psycopg.AsyncConnection, windows: Sequence[DeviceWindow], max_gap_s: float
) -> SampleBatch:
    """Stored power samples each window needs, grouped in window order."""
    ranges = [w.sample_range_s(max_gap_s) for w in windows]
    async with conn.cursor() as cur:
        await cur.execute(
            _FETCH_POWER,
            {
                "devices": [w.device_id for w in windows],
                "starts": [datetime.fromtimestamp(lo, UTC) for lo, _ in ranges],
                "ends": [datetime.fromtimestamp(hi, UTC) for _, hi in ranges],
                "metric": POWER_METRIC,
            },
        )
        rows = await cur.fetchall()
    group = np.fromiter((row[0] - 1 for row in rows), dtype=np.int64, count=len(rows))
    counts = np.bincount(group, minlength=len(windows)).astype(np.int64)
    starts = np.zeros(len(windows) + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return SampleBatch(
        ts_s=np.fromiter((row[1] for row in rows), dtype=np.float64, count=len(rows)),
        power_w=np.fromiter((row[2] for row in rows), dtype=np.float64, count=len(rows)),
        group_starts=starts,
    )


async def upsert_energy(conn: psycopg.AsyncConnection, intervals: EnergyIntervals) -> None:
    if not len(intervals):
        return
    await conn.execute(
        _UPSERT_ENERGY,
        {
            "device_id": intervals.device_id,
            "minute": intervals.minute,
            "kwh": intervals.kwh,
            "sample_count": intervals.sample_count,
            "coverage": intervals.coverage,
        },
    )
