"""TimescaleDB adapter of the emissions step: where devices are, which grid factors exist,
and idempotent emissions_1m writes that keep every factor version's figures."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from carbonflow.emissions import FactorRef
from carbonflow.factors.codes import STANDARD_VARIANT, GwpSet, Parameter
from carbonflow.factors.selection import FactorVersion
from carbonflow.factors.store import SELECT_VERSIONS
from services.stream.emissions import ELECTRICITY, DeviceSite, EmissionRows
from services.stream.fuel_emissions import FUEL_PARAMETERS, FuelEmissionRows

_DEVICE_SITES = """
SELECT d.device_id, d.energy_carrier, s.timezone, s.grid_region, s.country, o.gwp_set
FROM devices d JOIN assets a USING (asset_id) JOIN sites s USING (site_id)
JOIN organisations o USING (org_id)
WHERE d.device_id = ANY(%(devices)s)
"""

_FUEL_PARAMETERS = (
    SELECT_VERSIONS
    + """
WHERE f.variant = %(variant)s
  AND ((f.carrier = ANY(%(carriers)s) AND f.parameter = ANY(%(parameters)s))
       OR f.parameter = %(gwp)s)
"""
)

_GRID_FACTORS = (
    SELECT_VERSIONS
    + """
WHERE f.carrier = %(carrier)s AND f.parameter = %(parameter)s AND f.variant = %(variant)s
"""
)

# A minute has one current figure per scope. A new one replaces the current one under
# another method, factor version or lineage (any factor behind it restated) without erasing
# it: that one is marked superseded, and stays queryable with its version. So rollups never
# count a minute twice, whichever method priced it.
_UPSERT = """
WITH new AS (
    SELECT device_id, to_timestamp(minute * 60) AS ts, factor_id, factor_version, proxy,
           activity, kg_co2e, coverage, lineage::jsonb AS lineage
    FROM unnest(%(device_id)s::text[], %(minute)s::bigint[], %(factor_id)s::text[],
                %(factor_version)s::int[], %(proxy)s::bool[], %(activity)s::float8[],
                %(kg_co2e)s::float8[], %(coverage)s::float8[], %(lineage)s::text[])
         AS n(device_id, minute, factor_id, factor_version, proxy, activity, kg_co2e, coverage,
              lineage)
), superseded AS (
    UPDATE emissions_1m x SET superseded_at = now()
    FROM new
    WHERE x.device_id = new.device_id AND x.ts = new.ts
      AND x.scope = %(scope)s AND x.superseded_at IS NULL
      AND (x.method, x.factor_id, x.factor_version, x.lineage)
          <> (%(method)s, new.factor_id, new.factor_version, new.lineage)
)
INSERT INTO emissions_1m AS x (device_id, ts, scope, method, factor_id, factor_version, proxy,
                               activity, activity_unit, kg_co2e, coverage, lineage,
                               computed_at)
SELECT device_id, ts, %(scope)s, %(method)s, factor_id, factor_version, proxy, activity,
       %(activity_unit)s, kg_co2e, coverage, lineage, now()
FROM new
ON CONFLICT (device_id, ts, scope, method, factor_id, factor_version, lineage) DO UPDATE SET
    proxy = EXCLUDED.proxy,
    activity = EXCLUDED.activity,
    activity_unit = EXCLUDED.activity_unit,
    kg_co2e = EXCLUDED.kg_co2e,
    coverage = EXCLUDED.coverage,
    computed_at = EXCLUDED.computed_at,
    superseded_at = NULL
WHERE (x.activity, x.activity_unit, x.kg_co2e, x.coverage, x.proxy, x.superseded_at IS NULL)
      IS DISTINCT FROM (EXCLUDED.activity, EXCLUDED.activity_unit, EXCLUDED.kg_co2e,
                        EXCLUDED.coverage, EXCLUDED.proxy, true)
"""


async def device_sites(
    conn: psycopg.AsyncConnection, device_ids: Sequence[str]
) -> dict[str, DeviceSite]:
    async with conn.cursor() as cur:
        await cur.execute(_DEVICE_SITES, {"devices": sorted(set(device_ids))})
        return {
            row[0]: DeviceSite(row[0], row[1], row[2], row[3], row[4], GwpSet(row[5]))
            for row in await cur.fetchall()
        }


async def grid_factors(conn: psycopg.AsyncConnection) -> list[FactorVersion]:
    """Every version of every standard grid electricity emission factor (a few hundred)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _GRID_FACTORS,
            {
                "carrier": ELECTRICITY,
                "parameter": Parameter.EMISSION_FACTOR.value,
                "variant": STANDARD_VARIANT,
            },
        )
        return [FactorVersion.model_validate(row) for row in await cur.fetchall()]


async def upsert_emissions(conn: psycopg.AsyncConnection, rows: EmissionRows) -> None:
    """Write Scope 2 rows (activity in kWh); each one's lineage is its one factor version."""
    if not len(rows):
        return
    await _upsert(
        conn,
        rows.scope,
        rows.method,
        "kWh",
        {
            "device_id": rows.device_id,
            "minute": rows.minute,
            "factor_id": rows.factor_id,
            "factor_version": rows.factor_version,
            "proxy": rows.proxy,
            "activity": rows.kwh,
            "kg_co2e": rows.kg_co2e,
            "coverage": rows.coverage,
            "lineage": [
                lineage_json([FactorRef(f, v)])
                for f, v in zip(rows.factor_id, rows.factor_version, strict=True)
            ],
        },
    )


async def upsert_fuel_emissions(conn: psycopg.AsyncConnection, rows: FuelEmissionRows) -> None:
    """Write Scope 1 rows (activity: the fuel quantity) with every factor version used, each
    under its own method."""
    keys = list(zip(rows.method, rows.unit, strict=True))
    for method, unit in sorted(set(keys)):
        take = [i for i, key in enumerate(keys) if key == (method, unit)]
        await _upsert(
            conn,
            rows.scope,
            method,
            unit,
            {
                "device_id": [rows.device_id[i] for i in take],
                "minute": [rows.minute[i] for i in take],
                "factor_id": [rows.factor_id[i] for i in take],
                "factor_version": [rows.factor_version[i] for i in take],
                "proxy": [rows.proxy[i] for i in take],
                "activity": [rows.quantity[i] for i in take],
                "kg_co2e": [rows.kg_co2e[i] for i in take],
                "coverage": [rows.coverage[i] for i in take],
                "lineage": [lineage_json(rows.lineage[i]) for i in take],
            },
        )


def lineage_json(refs: Iterable[FactorRef]) -> str:
    """The lineage column's value: every factor version, sorted, so equal lineages compare
    equal in the key."""
    return json.dumps(
        [{"factor_id": r.factor_id, "version": r.version} for r in sorted(set(refs))],
        separators=(",", ":"),
    )


async def _upsert(
    conn: psycopg.AsyncConnection,
    scope: str,
    method: str,
    activity_unit: str,
    columns: dict[str, list[Any]],
) -> None:
    await conn.execute(
        _UPSERT,
        {"scope": scope, "method": method, "activity_unit": activity_unit, **columns},
    )


async def fuel_parameters(
    conn: psycopg.AsyncConnection, carriers: Sequence[str]
) -> list[FactorVersion]:
    """Every version (standard variant) of the given fuel carriers' calorific values, carbon
    contents, oxidation fractions and emission factors, and of the GWP values: what either
    Scope 1 method may need."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _FUEL_PARAMETERS,
            {
                "carriers": sorted(set(carriers)),
                "parameters": [p.value for p in FUEL_PARAMETERS],
                "gwp": Parameter.GWP.value,
                "variant": STANDARD_VARIANT,
            },
        )
        return [FactorVersion.model_validate(row) for row in await cur.fetchall()]
