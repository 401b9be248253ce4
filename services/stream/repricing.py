"""Emissions priced again after the factors changed: a restated factor, a newly published
factor that replaces proxies, or a newly loaded hourly grid-intensity series.

The affected minutes are priced again from their stored energy and fuel, through the same
pricing as the stream, with the registry as it stands now. New figures go in as new rows
under the factor versions they used; the figures they replace are marked superseded and
stay queryable. The rollups above those minutes follow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import psycopg

from carbonflow.config import DatabaseSettings
from services.stream import rollup_store, store
from services.stream.counter_routes import FuelIntervals
from services.stream.energy import EnergyIntervals
from services.stream.pipeline import price_minutes

# Which minutes to price again: those whose current figure used the factor (anywhere in its
# lineage), or a proxy, or (a newly loaded hourly series) any minute of a device in the
# series' region within its span.
_AFFECTED = """
SELECT DISTINCT x.device_id, x.ts
FROM emissions_1m x
WHERE x.superseded_at IS NULL
  AND ((%(factor_id)s::text IS NOT NULL AND x.lineage @> jsonb_build_array(
            jsonb_build_object('factor_id', %(factor_id)s::text)))
       OR (%(proxies)s AND x.proxy))
UNION
SELECT e.device_id, e.ts
FROM energy_1m e
JOIN devices d USING (device_id) JOIN assets a USING (asset_id) JOIN sites s USING (site_id)
WHERE %(region)s::text IS NOT NULL
  AND (lower(s.grid_region) = lower(%(region)s) OR lower(s.country) = lower(%(region)s))
  AND e.ts >= %(start)s AND e.ts < %(end)s
"""

_ENERGY = """
SELECT e.device_id, (extract(epoch FROM e.ts) / 60)::bigint, e.kwh, e.sample_count, e.coverage
FROM energy_1m e JOIN affected USING (device_id, ts)
ORDER BY e.device_id, e.ts
"""

_FUEL = """
SELECT f.device_id, (extract(epoch FROM f.ts) / 60)::bigint, f.quantity, f.unit,
       f.sample_count, f.coverage
FROM fuel_1m f JOIN affected USING (device_id, ts)
ORDER BY f.device_id, f.ts
"""

# Figures this transaction replaced: superseded at the transaction's own now().
_CHANGED = """
SELECT count(*) FROM emissions_1m x JOIN affected USING (device_id, ts)
WHERE x.superseded_at = now()
"""


@dataclass(frozen=True, slots=True)
class Repriced:
    minutes: int  # minutes priced again
    changed: int  # earlier figures replaced by figures under other factor versions
    unpriced: int  # minutes no factor could price
    rollup_rows: int


async def reprice(
    conn: psycopg.AsyncConnection,
    *,
    factor_id: str | None = None,
    proxies: bool = False,
    region: str | None = None,
    span: tuple[datetime, datetime] | None = None,
) -> Repriced:
    """Price again, in one transaction, the minutes of ``factor_id``, every proxied minute
    (``proxies``), and every minute of ``region`` within ``span`` (an hourly series)."""
    start, end = span if span else (None, None)
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE affected (device_id text, ts timestamptz) ON COMMIT DROP"
        )
        await conn.execute(
            "INSERT INTO affected " + _AFFECTED,
            {
                "factor_id": factor_id,
                "proxies": proxies,
                "region": region,
                "start": start,
                "end": end,
            },
        )
        energy = await _energy(conn)
        fuel = await _fuel(conn)
        minutes = len(energy) + len(fuel)
        if not minutes:
            return Repriced(0, 0, 0, 0)
        await store.lock_devices(conn, [*energy.device_id, *fuel.device_id])
        priced = await price_minutes(conn, energy, fuel)
        async with conn.cursor() as cur:
            await cur.execute(_CHANGED)
            row = await cur.fetchone()
        rollup_rows = await rollup_store.recompute_hours(
            conn,
            rollup_store.hours_touched(
                [*energy.device_id, *fuel.device_id], [*energy.minute, *fuel.minute]
            ),
        )
    return Repriced(
        minutes=minutes,
        changed=int(row[0]) if row else 0,
        unpriced=priced.scope2_unpriced + priced.scope1_unpriced,
        rollup_rows=rollup_rows,
    )


async def _energy(conn: psycopg.AsyncConnection) -> EnergyIntervals:
    async with conn.cursor() as cur:
        await cur.execute(_ENERGY)
        rows = await cur.fetchall()
    return EnergyIntervals(
        device_id=[r[0] for r in rows],
        minute=[int(r[1]) for r in rows],
        kwh=[float(r[2]) for r in rows],
        sample_count=[int(r[3]) for r in rows],
        coverage=[float(r[4]) for r in rows],
    )


async def _fuel(conn: psycopg.AsyncConnection) -> FuelIntervals:
    async with conn.cursor() as cur:
        await cur.execute(_FUEL)
        rows = await cur.fetchall()
    return FuelIntervals(
        device_id=[r[0] for r in rows],
        minute=[int(r[1]) for r in rows],
        quantity=[float(r[2]) for r in rows],
        unit=[r[3] for r in rows],
        sample_count=[int(r[4]) for r in rows],
        coverage=[float(r[5]) for r in rows],
    )


def reprice_now(
    db: DatabaseSettings,
    *,
    factor_id: str | None = None,
    proxies: bool = False,
    region: str | None = None,
    span: tuple[datetime, datetime] | None = None,
) -> Repriced:
    """``reprice`` on a connection of its own, for commands."""

    async def run() -> Repriced:
        async with await psycopg.AsyncConnection.connect(db.conninfo()) as conn:
            return await reprice(
                conn, factor_id=factor_id, proxies=proxies, region=region, span=span
            )

    return asyncio.run(run())
