"""Hourly rollups along the asset tree: recomputed, idempotently, for the local hours a
batch's minutes fall in, from the minute rows below them.

Every node above a changed device gets its hour recomputed from all the devices under it,
not adjusted by a difference, so redeliveries, late readings and restatements all converge
on the same rows. Daily and monthly figures are views over these rows in each site's local
calendar (migration 0005).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg

#: Metrics of the meters whose minutes are energy (energy_1m); the others meter fuel.
ENERGY_METRICS = ("active_power", "active_energy_import")

# The nodes above each device: its asset and that asset's ancestors, its site, its
# organisation. Registries are small next to the data: the closure is worked out per call.
_DEVICE_NODES = """
WITH RECURSIVE up(device_id, asset_id) AS (
    SELECT d.device_id, d.asset_id FROM devices d
    UNION
    SELECT up.device_id, a.parent_id
    FROM up JOIN assets a ON a.asset_id = up.asset_id
    WHERE a.parent_id IS NOT NULL
)
SELECT device_id, 'asset'::text AS node_kind, asset_id AS node_id FROM up
UNION ALL
SELECT d.device_id, 'site', a.site_id FROM devices d JOIN assets a USING (asset_id)
UNION ALL
SELECT d.device_id, 'organisation', s.org_id
FROM devices d JOIN assets a USING (asset_id) JOIN sites s USING (site_id)
"""

_TARGETS = f"""
device_nodes AS ({_DEVICE_NODES}),
changed AS (
    SELECT DISTINCT c.device_id, local_hour(c.ts, s.timezone) AS hour
    FROM unnest(%(devices)s::text[], %(minutes)s::timestamptz[]) AS c(device_id, ts)
    JOIN devices d USING (device_id)
    JOIN assets a USING (asset_id)
    JOIN sites s USING (site_id)
),
targets AS (
    SELECT DISTINCT n.node_kind, n.node_id, c.hour
    FROM changed c JOIN device_nodes n USING (device_id)
)
"""

# Two workers may recompute the same node-hour at once (an organisation's hour takes every
# device's minutes). Each waits for the other's lock, so its recomputation, a statement that
# starts after the other committed, sees the other's minutes too. Locks go in one order, so
# two workers never wait on each other in a cycle.
_LOCK_TARGETS = f"""
WITH {_TARGETS}
SELECT pg_advisory_xact_lock(k)
FROM (SELECT DISTINCT hashtextextended(node_kind || '/' || node_id || '/' || hour::text, 1) AS k
      FROM targets) AS keys
ORDER BY k
"""

_RECOMPUTE = f"""
WITH {_TARGETS},
members AS (
    SELECT t.node_kind, t.node_id, t.hour, n.device_id
    FROM targets t
    JOIN device_nodes n ON n.node_kind = t.node_kind AND n.node_id = t.node_id
),
energy AS (
    -- Energy, and the completeness it is judged by, come from electricity meters only:
    -- fuel meters (m3 of gas) add Scope 1 below, never kWh or expected minutes.
    SELECT m.node_kind, m.node_id, m.hour,
           coalesce(sum(e.kwh), 0) AS kwh,
           coalesce(sum(e.coverage), 0) AS covered_minutes,
           count(DISTINCT m.device_id) FILTER (WHERE d.metric = ANY(%(energy_metrics)s))
               AS devices
    FROM members m
    JOIN devices d ON d.device_id = m.device_id
    LEFT JOIN energy_1m e
      ON e.device_id = m.device_id AND e.ts >= m.hour AND e.ts < m.hour + interval '1 hour'
    GROUP BY m.node_kind, m.node_id, m.hour
),
emissions AS (
    SELECT m.node_kind, m.node_id, m.hour,
           coalesce(sum(x.kg_co2e) FILTER (WHERE x.scope = 'scope1'), 0) AS scope1,
           coalesce(sum(x.kg_co2e) FILTER (WHERE x.scope = 'scope2'
                                           AND x.method LIKE 'scope2_location%%'), 0)
               AS scope2_location
    FROM members m
    LEFT JOIN emissions_1m x
      ON x.device_id = m.device_id AND x.ts >= m.hour AND x.ts < m.hour + interval '1 hour'
     AND x.superseded_at IS NULL
    GROUP BY m.node_kind, m.node_id, m.hour
)
INSERT INTO rollup_hourly AS r (node_kind, node_id, hour, kwh, kg_co2e_scope1,
                                kg_co2e_scope2_location, devices, covered_minutes, computed_at)
SELECT e.node_kind, e.node_id, e.hour, e.kwh, x.scope1, x.scope2_location, e.devices,
       e.covered_minutes, now()
FROM energy e JOIN emissions x USING (node_kind, node_id, hour)
ON CONFLICT (node_kind, node_id, hour) DO UPDATE SET
    kwh = EXCLUDED.kwh,
    kg_co2e_scope1 = EXCLUDED.kg_co2e_scope1,
    kg_co2e_scope2_location = EXCLUDED.kg_co2e_scope2_location,
    devices = EXCLUDED.devices,
    covered_minutes = EXCLUDED.covered_minutes,
    computed_at = EXCLUDED.computed_at
WHERE (r.kwh, r.kg_co2e_scope1, r.kg_co2e_scope2_location, r.devices, r.covered_minutes)
      IS DISTINCT FROM (EXCLUDED.kwh, EXCLUDED.kg_co2e_scope1,
                        EXCLUDED.kg_co2e_scope2_location, EXCLUDED.devices,
                        EXCLUDED.covered_minutes)
"""


async def recompute_hours(
    conn: psycopg.AsyncConnection, changed: Sequence[tuple[str, datetime]]
) -> int:
    """Recompute every node-hour above the changed (device, minute) pairs; returns the rows
    written (unchanged rows are left alone)."""
    if not changed:
        return 0
    params = {
        "devices": [device for device, _ in changed],
        "minutes": [ts for _, ts in changed],
        "energy_metrics": list(ENERGY_METRICS),
    }
    async with conn.cursor() as cur:
        await cur.execute(_LOCK_TARGETS, params)
        await cur.execute(_RECOMPUTE, params)
        return cur.rowcount


def hours_touched(device_ids: Sequence[str], minutes: Sequence[int]) -> list[tuple[str, datetime]]:
    """One minute of every quarter hour the (device, epoch minute) pairs touch: every local
    hour (time zones are whole quarter hours off UTC) then has a minute to be found by."""
    quarters = sorted({(d, m - m % 15) for d, m in zip(device_ids, minutes, strict=True)})
    return [(d, datetime.fromtimestamp(m * 60, UTC)) for d, m in quarters]
