"""TimescaleDB adapter of the stream processor: idempotent writes and the reads they need."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from schemas import ReadingsRecord
from services.stream.counter_intervals import CounterAnomaly, CounterBatch
from services.stream.counter_routes import FuelIntervals, RegisterSettings
from services.stream.counters import COUNTER_DELTA_METHOD
from services.stream.energy import (
    POWER_METRIC,
    DeviceWindow,
    EnergyIntervals,
    SampleBatch,
)
from services.stream.lateness import LATE_EVENT, LateReadings

#: How energy integrated from power samples is labelled in energy_1m.
POWER_METHOD = "power_trapezoid"
#: How far before and after a window the neighbouring counter reading is looked for: the
#: pair it makes is a gap (reported with the consumption across it), never counted.
NEIGHBOUR_HORIZON = timedelta(days=7)

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
SELECT device_id, to_timestamp(minute * 60), kwh, sample_count, coverage, %(method)s, now()
FROM unnest(%(device_id)s::text[], %(minute)s::bigint[], %(kwh)s::float8[],
            %(sample_count)s::int[], %(coverage)s::float8[])
     AS e(device_id, minute, kwh, sample_count, coverage)
ON CONFLICT (device_id, ts) DO UPDATE SET
    kwh = EXCLUDED.kwh,
    sample_count = EXCLUDED.sample_count,
    coverage = EXCLUDED.coverage,
    method = EXCLUDED.method,
    computed_at = EXCLUDED.computed_at
WHERE (energy_1m.kwh, energy_1m.sample_count, energy_1m.coverage, energy_1m.method)
      IS DISTINCT FROM (EXCLUDED.kwh, EXCLUDED.sample_count, EXCLUDED.coverage, EXCLUDED.method)
"""


async def insert_readings(conn: psycopg.AsyncConnection, records: Sequence[ReadingsRecord]) -> int:
    """Insert every reading of ``records``; ones already stored are left alone. Returns new rows."""
    await conn.execute(_STAGE_READINGS)
    async with conn.cursor() as cur:
        async with cur.copy(
            "COPY readings_stage (device_id, metric, ts, value, quality, ingested_at) FROM STDIN"
        ) as copy:
            await copy.write(copy_text(records))
        await cur.execute(_MERGE_READINGS)
        return cur.rowcount


def copy_text(records: Sequence[ReadingsRecord]) -> bytes:
    """The readings as COPY text, built in one go: ``write_row`` per reading costs more than
    the rest of a batch. Nothing needs escaping: ids and metric names match the contract's
    patterns, quality is an enum, numbers are finite and times are ISO 8601."""
    lines: list[str] = []
    for record in records:
        head = record.device_id + "\t"
        tail = "\t" + record.received_at.isoformat() + "\n"
        lines.extend(
            f"{head}{r.metric}\t{r.ts.isoformat()}\t{r.value!r}\t{r.quality.value}{tail}"
            for r in record.readings
        )
    return "".join(lines).encode()


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


async def upsert_energy(
    conn: psycopg.AsyncConnection, intervals: EnergyIntervals, method: str = POWER_METHOD
) -> None:
    if not len(intervals):
        return
    await conn.execute(
        _UPSERT_ENERGY,
        {
            "method": method,
            "device_id": intervals.device_id,
            "minute": intervals.minute,
            "kwh": intervals.kwh,
            "sample_count": intervals.sample_count,
            "coverage": intervals.coverage,
        },
    )


_DEVICE_METRICS = """
SELECT device_id, metric FROM devices WHERE device_id = ANY(%(devices)s)
"""


async def registered_metrics(
    conn: psycopg.AsyncConnection, device_ids: Sequence[str]
) -> dict[str, str]:
    """The metric each (registered) device is metered by, as in the devices table."""
    async with conn.cursor() as cur:
        await cur.execute(_DEVICE_METRICS, {"devices": sorted(set(device_ids))})
        return {row[0]: row[1] for row in await cur.fetchall()}


_REGISTERS = """
SELECT d.device_id, d.metric, c.modulus, c.max_rate_per_s, c.resolution,
       m.max_rate_per_s, m.resolution
FROM devices d
LEFT JOIN device_counters c USING (device_id)
LEFT JOIN counter_defaults m ON m.metric = d.metric
WHERE d.device_id = ANY(%(devices)s)
"""


async def register_settings(
    conn: psycopg.AsyncConnection, device_ids: Sequence[str]
) -> dict[str, RegisterSettings]:
    """Each device's counter parameters and its metric's defaults, as stored."""
    async with conn.cursor() as cur:
        await cur.execute(_REGISTERS, {"devices": sorted(set(device_ids))})
        return {
            row[0]: RegisterSettings(row[1], row[2], row[3], row[4], row[5], row[6])
            for row in await cur.fetchall()
        }


# The window's readings, plus the nearest reading before and after it: a pair reaching out
# of the window is then seen (as a gap) instead of silently missing.
_FETCH_COUNTER = """
WITH w AS (
    SELECT * FROM unnest(%(devices)s::text[], %(metrics)s::text[], %(starts)s::timestamptz[],
                         %(ends)s::timestamptz[]) WITH ORDINALITY AS w(device_id, metric, lo, hi, k)
)
SELECT k, extract(epoch FROM ts)::float8, value FROM (
    SELECT w.k, r.ts, r.value
    FROM w JOIN readings r
      ON r.device_id = w.device_id AND r.metric = w.metric AND r.ts >= w.lo AND r.ts < w.hi
    WHERE r.quality <> 'bad'
    UNION ALL
    SELECT w.k, before.ts, before.value
    FROM w CROSS JOIN LATERAL (
        SELECT r.ts, r.value FROM readings r
        WHERE r.device_id = w.device_id AND r.metric = w.metric AND r.quality <> 'bad'
          AND r.ts < w.lo AND r.ts >= w.lo - %(horizon)s
        ORDER BY r.ts DESC LIMIT 1
    ) AS before
    UNION ALL
    SELECT w.k, after.ts, after.value
    FROM w CROSS JOIN LATERAL (
        SELECT r.ts, r.value FROM readings r
        WHERE r.device_id = w.device_id AND r.metric = w.metric AND r.quality <> 'bad'
          AND r.ts >= w.hi AND r.ts < w.hi + %(horizon)s
        ORDER BY r.ts LIMIT 1
    ) AS after
) AS found
ORDER BY k, ts
"""


async def fetch_counter_readings(
    conn: psycopg.AsyncConnection,
    windows: Sequence[DeviceWindow],
    metrics: Sequence[str],
    max_gap_s: float,
) -> CounterBatch:
    """Stored readings of each window's counter metric (``metrics[k]`` for ``windows[k]``),
    grouped in window order, with the nearest reading on either side."""
    ranges = [w.sample_range_s(max_gap_s) for w in windows]
    async with conn.cursor() as cur:
        await cur.execute(
            _FETCH_COUNTER,
            {
                "devices": [w.device_id for w in windows],
                "metrics": list(metrics),
                "starts": [datetime.fromtimestamp(lo, UTC) for lo, _ in ranges],
                "ends": [datetime.fromtimestamp(hi, UTC) for _, hi in ranges],
                "horizon": NEIGHBOUR_HORIZON,
            },
        )
        rows = await cur.fetchall()
    group = np.fromiter((row[0] - 1 for row in rows), dtype=np.int64, count=len(rows))
    counts = np.bincount(group, minlength=len(windows)).astype(np.int64)
    starts = np.zeros(len(windows) + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return CounterBatch(
        ts_s=np.fromiter((row[1] for row in rows), dtype=np.float64, count=len(rows)),
        value=np.fromiter((row[2] for row in rows), dtype=np.float64, count=len(rows)),
        group_starts=starts,
    )


_UPSERT_FUEL = """
INSERT INTO fuel_1m (device_id, ts, quantity, unit, method, sample_count, coverage,
                     computed_at)
SELECT device_id, to_timestamp(minute * 60), quantity, unit, %(method)s, sample_count,
       coverage, now()
FROM unnest(%(device_id)s::text[], %(minute)s::bigint[], %(quantity)s::float8[],
            %(unit)s::text[], %(sample_count)s::int[], %(coverage)s::float8[])
     AS f(device_id, minute, quantity, unit, sample_count, coverage)
ON CONFLICT (device_id, ts) DO UPDATE SET
    quantity = EXCLUDED.quantity,
    unit = EXCLUDED.unit,
    method = EXCLUDED.method,
    sample_count = EXCLUDED.sample_count,
    coverage = EXCLUDED.coverage,
    computed_at = EXCLUDED.computed_at
WHERE (fuel_1m.quantity, fuel_1m.unit, fuel_1m.sample_count, fuel_1m.coverage)
      IS DISTINCT FROM (EXCLUDED.quantity, EXCLUDED.unit, EXCLUDED.sample_count,
                        EXCLUDED.coverage)
"""


async def upsert_fuel(conn: psycopg.AsyncConnection, intervals: FuelIntervals) -> None:
    if not len(intervals):
        return
    await conn.execute(
        _UPSERT_FUEL,
        {
            "method": intervals.method,
            "device_id": intervals.device_id,
            "minute": intervals.minute,
            "quantity": intervals.quantity,
            "unit": intervals.unit,
            "sample_count": intervals.sample_count,
            "coverage": intervals.coverage,
        },
    )


# Counter minutes of a recomputed window that no longer have any data (a late reading turned
# a counted pair into a rejected one) go, and the figures priced from them are superseded.
_DELETE_STALE = """
WITH w AS (
    SELECT * FROM unnest(%(devices)s::text[], %(lo)s::timestamptz[], %(hi)s::timestamptz[])
         AS w(device_id, lo, hi)
), kept AS (
    SELECT device_id, to_timestamp(minute * 60) AS ts
    FROM unnest(%(kept_devices)s::text[], %(kept_minutes)s::bigint[]) AS k(device_id, minute)
), gone AS (
    DELETE FROM {table} t USING w
    WHERE t.device_id = w.device_id AND t.ts >= w.lo AND t.ts <= w.hi
      AND t.method = %(method)s
      AND NOT EXISTS (SELECT 1 FROM kept WHERE kept.device_id = t.device_id AND kept.ts = t.ts)
    RETURNING t.device_id, t.ts
), superseded AS (
    UPDATE emissions_1m x SET superseded_at = now()
    FROM gone
    WHERE x.device_id = gone.device_id AND x.ts = gone.ts AND x.superseded_at IS NULL
)
SELECT device_id, (extract(epoch FROM ts) / 60)::bigint FROM gone
"""


async def delete_stale_counter_minutes(
    conn: psycopg.AsyncConnection,
    windows: Sequence[DeviceWindow],
    energy: EnergyIntervals,
    fuel: FuelIntervals,
) -> list[tuple[str, int]]:
    """Remove the windows' counter minutes that were not recomputed; returns them as
    (device, epoch minute)."""
    if not windows:
        return []
    window_params = {
        "devices": [w.device_id for w in windows],
        "lo": [datetime.fromtimestamp(w.minute_lo * 60, UTC) for w in windows],
        "hi": [datetime.fromtimestamp(w.minute_hi * 60, UTC) for w in windows],
        "method": COUNTER_DELTA_METHOD,
    }
    gone: list[tuple[str, int]] = []
    async with conn.cursor() as cur:
        for table, kept_devices, kept_minutes in (
            ("energy_1m", energy.device_id, energy.minute),
            ("fuel_1m", fuel.device_id, fuel.minute),
        ):
            await cur.execute(
                _DELETE_STALE.format(table=table),  # a fixed table name, not data
                {**window_params, "kept_devices": kept_devices, "kept_minutes": kept_minutes},
            )
            gone.extend((row[0], int(row[1])) for row in await cur.fetchall())
    return gone


# Device events the stream records (counter pairs, late readings), idempotently. A counter
# pair is keyed by its later reading's time; recomputing it again converges on one row that
# says how it was read last (a late reading between the two changes the pair).
_UPSERT_COUNTER_EVENTS = """
INSERT INTO device_events (ts, source_kind, source_id, event, details, recorded_at)
SELECT ts, 'device', source_id, event, details::jsonb, now()
FROM unnest(%(ts)s::timestamptz[], %(source_id)s::text[], %(event)s::text[],
            %(details)s::text[]) AS e(ts, source_id, event, details)
ON CONFLICT (source_kind, source_id, event, ts) DO UPDATE SET
    details = EXCLUDED.details,
    recorded_at = EXCLUDED.recorded_at
WHERE device_events.details IS DISTINCT FROM EXCLUDED.details
"""


def counter_event_name(anomaly: CounterAnomaly) -> str:
    """device_events.event of a counter pair, e.g. ``counter_reset``."""
    return f"counter_{anomaly.kind.label}"


async def record_counter_anomalies(
    conn: psycopg.AsyncConnection, anomalies: Sequence[CounterAnomaly], units: dict[str, str]
) -> int:
    """Store every pair that was not plainly counted as a device event with its reason;
    returns the rows added or changed. ``units``: the register unit of each device."""
    by_key: dict[tuple[str, str, float], CounterAnomaly] = {}
    for anomaly in anomalies:
        # A pair reaching across two windows of one device is reported by both.
        by_key[(anomaly.device_id, counter_event_name(anomaly), anomaly.ts1_s)] = anomaly
    if not by_key:
        return 0
    rows = list(by_key.values())
    async with conn.cursor() as cur:
        await cur.execute(
            _UPSERT_COUNTER_EVENTS,
            {
                "ts": [datetime.fromtimestamp(a.ts1_s, UTC) for a in rows],
                "source_id": [a.device_id for a in rows],
                "event": [counter_event_name(a) for a in rows],
                "details": [_details(a, units.get(a.device_id, "")) for a in rows],
            },
        )
        return max(cur.rowcount, 0)


async def record_late_readings(
    conn: psycopg.AsyncConnection, late: Sequence[LateReadings], cutoff: datetime
) -> int:
    """Report readings past the lateness as device events (keyed by the newest of them)."""
    if not late:
        return 0
    async with conn.cursor() as cur:
        await cur.execute(
            _UPSERT_COUNTER_EVENTS,
            {
                "ts": [item.last for item in late],
                "source_id": [item.device_id for item in late],
                "event": [LATE_EVENT] * len(late),
                "details": [
                    json.dumps(
                        {
                            "count": item.count,
                            "first": item.first.isoformat(),
                            "last": item.last.isoformat(),
                            "cutoff": cutoff.isoformat(),
                            "reason": "older than the lateness: stored, figures not updated",
                        }
                    )
                    for item in late
                ],
            },
        )
        return max(cur.rowcount, 0)


def _details(anomaly: CounterAnomaly, unit: str) -> str:
    return json.dumps(
        {
            "kind": anomaly.kind.label,
            "ts0": datetime.fromtimestamp(anomaly.ts0_s, UTC).isoformat(),
            "ts1": datetime.fromtimestamp(anomaly.ts1_s, UTC).isoformat(),
            "raw_delta": anomaly.raw_delta,
            "counted": anomaly.counted,
            "unit": unit,
            "reason": anomaly.reason,
        }
    )
