"""SQL of the API: parameterised statements and the rows they return.

Values always travel as query parameters, never formatted into the text. Database errors
that mean "not now" are translated into the API's own errors here, at the adapter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from services.api.errors import DatabaseUnavailableError, QueryTimeoutError

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class SiteRow:
    site_id: str
    org_id: str
    name: str
    timezone: str
    country: str
    grid_region: str


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    asset_id: str
    site_id: str
    timezone: str
    gateway_id: str
    metric: str
    unit: str
    energy_carrier: str
    description: str


@dataclass(frozen=True)
class ReadingRow:
    ts: datetime
    metric: str
    value: float
    quality: str


@dataclass(frozen=True)
class EnergyRow:
    bucket: int  # 1-based index into the bucket lower bounds that were passed in
    kwh: float
    covered_minutes: float
    minutes_with_data: int


_LIST_SITES = """
SELECT site_id, org_id, name, timezone, country, grid_region
FROM sites
ORDER BY site_id
"""

_SITE_EXISTS = "SELECT EXISTS (SELECT 1 FROM sites WHERE site_id = %(site_id)s)"

_DEVICE_COLUMNS = """
SELECT d.device_id, d.asset_id, a.site_id, s.timezone, d.gateway_id, d.metric, d.unit,
       d.energy_carrier, d.description
FROM devices d
JOIN assets a USING (asset_id)
JOIN sites s ON s.site_id = a.site_id
"""

_LIST_DEVICES = _DEVICE_COLUMNS + "ORDER BY d.device_id"

_LIST_SITE_DEVICES = _DEVICE_COLUMNS + "WHERE a.site_id = %(site_id)s ORDER BY d.device_id"

_GET_DEVICE = _DEVICE_COLUMNS + "WHERE d.device_id = %(device_id)s"

# Two statements rather than "metric IS NULL OR ...", so each gets a plan using the
# (device_id, metric, ts) key when the metric is known.
_READINGS = """
SELECT ts, metric, value, quality
FROM readings
WHERE device_id = %(device_id)s AND ts >= %(start)s AND ts < %(end)s
ORDER BY ts, metric
LIMIT %(limit)s
"""

_READINGS_OF_METRIC = """
SELECT ts, metric, value, quality
FROM readings
WHERE device_id = %(device_id)s AND metric = %(metric)s AND ts >= %(start)s AND ts < %(end)s
ORDER BY ts, metric
LIMIT %(limit)s
"""

# The buckets are computed by the caller (local calendar rules live in one place) and
# passed as their sorted lower bounds; width_bucket finds each minute's bucket in one scan.
_ENERGY_BY_BUCKET = """
SELECT width_bucket(ts, %(bounds)s::timestamptz[]) AS bucket,
       sum(kwh) AS kwh,
       sum(coverage) AS covered_minutes,
       count(*) FILTER (WHERE coverage > 0) AS minutes_with_data
FROM energy_1m
WHERE device_id = %(device_id)s AND ts >= %(start)s AND ts < %(end)s
GROUP BY 1
ORDER BY 1
"""


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    try:
        yield
    except psycopg.errors.QueryCanceled as exc:
        raise QueryTimeoutError(
            f"the database cancelled the query for {what} (statement timeout); ask for a "
            "shorter range, a smaller limit or a larger bucket"
        ) from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(
            f"the database could not be reached while reading {what}"
        ) from exc


async def ping(conn: Conn) -> None:
    async with _translated("the readiness ping"):
        await conn.execute("SELECT 1")


async def list_sites(conn: Conn) -> list[SiteRow]:
    async with _translated("sites"), conn.cursor(row_factory=class_row(SiteRow)) as cur:
        await cur.execute(_LIST_SITES)
        return await cur.fetchall()


async def site_exists(conn: Conn, site_id: str) -> bool:
    async with _translated("sites"), conn.cursor() as cur:
        await cur.execute(_SITE_EXISTS, {"site_id": site_id})
        row = await cur.fetchone()
        return bool(row and row[0])


async def list_devices(conn: Conn, site_id: str | None = None) -> list[DeviceRow]:
    async with _translated("devices"), conn.cursor(row_factory=class_row(DeviceRow)) as cur:
        if site_id is None:
            await cur.execute(_LIST_DEVICES)
        else:
            await cur.execute(_LIST_SITE_DEVICES, {"site_id": site_id})
        return await cur.fetchall()


async def get_device(conn: Conn, device_id: str) -> DeviceRow | None:
    async with _translated("devices"), conn.cursor(row_factory=class_row(DeviceRow)) as cur:
        await cur.execute(_GET_DEVICE, {"device_id": device_id})
        return await cur.fetchone()


async def fetch_readings(
    conn: Conn,
    device_id: str,
    start: datetime,
    end: datetime,
    *,
    metric: str | None,
    limit: int,
) -> list[ReadingRow]:
    """At most ``limit`` readings of the device in [start, end), ordered by (ts, metric)."""
    params = {"device_id": device_id, "start": start, "end": end, "limit": limit}
    async with _translated("readings"), conn.cursor(row_factory=class_row(ReadingRow)) as cur:
        if metric is None:
            await cur.execute(_READINGS, params)
        else:
            await cur.execute(_READINGS_OF_METRIC, {**params, "metric": metric})
        return await cur.fetchall()


async def energy_by_bucket(
    conn: Conn, device_id: str, start: datetime, end: datetime, bounds: Sequence[datetime]
) -> list[EnergyRow]:
    """Energy of the device in [start, end) summed per bucket; ``bounds`` are lower bounds."""
    params = {"device_id": device_id, "start": start, "end": end, "bounds": list(bounds)}
    async with _translated("energy"), conn.cursor(row_factory=class_row(EnergyRow)) as cur:
        await cur.execute(_ENERGY_BY_BUCKET, params)
        return await cur.fetchall()
