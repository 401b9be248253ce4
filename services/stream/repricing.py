"""Emissions priced again after the factors changed: a restated factor, or a newly published
one that replaces a proxy.

The minutes whose current figure used the factor (or a proxy) are priced again from their
stored energy with the registry as it stands now. New figures go in as new rows under the
factor version they used; the figures they replace are marked superseded and stay
queryable. The rollups above those minutes follow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import psycopg

from carbonflow.config import DatabaseSettings
from services.stream import emission_store, rollup_store, store
from services.stream.emissions import LOCATION_METHOD, SCOPE2, scope2_location
from services.stream.energy import EnergyIntervals

# The energy of the minutes whose current location-based figure used the factor, or a
# proxy, in device and time order; a device is repriced under its advisory lock, like
# every other writer of its minutes.
_CURRENT = """
SELECT e.device_id, (extract(epoch FROM e.ts) / 60)::bigint, e.kwh, e.sample_count, e.coverage
FROM emissions_1m x
JOIN energy_1m e ON e.device_id = x.device_id AND e.ts = x.ts
WHERE x.superseded_at IS NULL AND x.scope = %(scope)s AND x.method = %(method)s
  AND (x.factor_id = %(factor_id)s OR (%(proxies)s AND x.proxy))
ORDER BY e.device_id, e.ts
"""


@dataclass(frozen=True, slots=True)
class Repriced:
    minutes: int  # minutes priced again
    changed: int  # of which now under another factor version (new rows)
    unpriced: int  # minutes no factor could price any more
    rollup_rows: int


async def reprice(
    conn: psycopg.AsyncConnection, *, factor_id: str | None = None, proxies: bool = False
) -> Repriced:
    """Price again the minutes of ``factor_id`` and/or every proxied minute, in one
    transaction."""
    async with conn.transaction():
        async with conn.cursor() as cur:
            await cur.execute(
                _CURRENT,
                {
                    "scope": SCOPE2,
                    "method": LOCATION_METHOD,
                    "factor_id": factor_id,
                    "proxies": proxies,
                },
            )
            rows = await cur.fetchall()
        if not rows:
            return Repriced(0, 0, 0, 0)
        intervals = EnergyIntervals(
            device_id=[r[0] for r in rows],
            minute=[int(r[1]) for r in rows],
            kwh=[float(r[2]) for r in rows],
            sample_count=[int(r[3]) for r in rows],
            coverage=[float(r[4]) for r in rows],
        )
        await store.lock_devices(conn, intervals.device_id)
        sites = await emission_store.device_sites(conn, intervals.device_id)
        factors = await emission_store.grid_factors(conn)
        priced, unpriced = scope2_location(intervals, sites, factors)
        changed = await emission_store.count_new(conn, priced)
        await emission_store.upsert_emissions(conn, priced)
        rollup_rows = await rollup_store.recompute_hours(
            conn, rollup_store.hours_touched(priced.device_id, priced.minute)
        )
    return Repriced(
        minutes=len(rows),
        changed=changed,
        unpriced=sum(u.minutes for u in unpriced),
        rollup_rows=rollup_rows,
    )


def reprice_now(
    db: DatabaseSettings, *, factor_id: str | None = None, proxies: bool = False
) -> Repriced:
    """``reprice`` on a connection of its own, for commands."""

    async def run() -> Repriced:
        async with await psycopg.AsyncConnection.connect(db.conninfo()) as conn:
            return await reprice(conn, factor_id=factor_id, proxies=proxies)

    return asyncio.run(run())
