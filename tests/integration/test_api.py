"""The REST API against a real, freshly migrated TimescaleDB.

A small registry (two sites in different time zones, one of them with DST) and readings and
per-minute energy with known values are written with plain SQL; the app is then driven
in-process through httpx, with its lifespan (and so its connection pool) running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from psycopg import sql

from carbonflow.config import DatabaseSettings
from services.api.main import create_app
from services.api.settings import ApiSettings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

BUDAPEST = ZoneInfo("Europe/Budapest")
SHANGHAI = ZoneInfo("Asia/Shanghai")
ORG = "apitest-org"
BUD, SHA = "apitest-bud", "apitest-sha"
BUD_M1, BUD_M2, SHA_M1 = "apitest-bud-m1", "apitest-bud-m2", "apitest-sha-m1"

# Readings of BUD_M1: 30 instants 10 s apart, each with a power and an energy-counter value.
T0 = datetime(2026, 3, 29, 10, 0, tzinfo=UTC)
N_READINGS = 30


def t(k: int) -> datetime:
    return T0 + timedelta(seconds=10 * k)


# Energy of BUD_M1 on the spring-forward day 2026-03-29 in Budapest, which has 23 hours:
# every minute 0.25 kWh; the first local hour half measured; local 10:00-12:00 missing.
DST_DAY = datetime(2026, 3, 29, tzinfo=BUDAPEST).astimezone(UTC)  # 2026-03-28T23:00Z
DST_DAY_END = datetime(2026, 3, 30, tzinfo=BUDAPEST).astimezone(UTC)  # 2026-03-29T22:00Z
GAP = (
    datetime(2026, 3, 29, 10, tzinfo=BUDAPEST).astimezone(UTC),
    datetime(2026, 3, 29, 12, tzinfo=BUDAPEST).astimezone(UTC),
)
# The day before: only its last local hour has data, 0.5 kWh a minute.
DAY_BEFORE = datetime(2026, 3, 28, tzinfo=BUDAPEST).astimezone(UTC)
# The autumn change, 2026-10-25: local 02:00-03:00 happens twice (00:00Z-02:00Z).
AUTUMN = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)


def minutes(start: datetime, end: datetime) -> list[datetime]:
    count = int((end - start) / timedelta(minutes=1))
    return [start + timedelta(minutes=k) for k in range(count)]


def energy_rows() -> list[tuple[str, datetime, float, int, float]]:
    rows = []
    for ts in minutes(DST_DAY, DST_DAY_END):
        if GAP[0] <= ts < GAP[1]:
            continue
        coverage = 0.5 if ts < DST_DAY + timedelta(hours=1) else 1.0
        rows.append((BUD_M1, ts, 0.25, 6, coverage))
    for ts in minutes(DST_DAY - timedelta(hours=1), DST_DAY):
        rows.append((BUD_M1, ts, 0.5, 6, 1.0))
    for k, ts in enumerate(minutes(AUTUMN, AUTUMN + timedelta(hours=2))):
        rows.append((BUD_M1, ts, 0.25 if k < 60 else 0.5, 6, 1.0))
    # Shanghai: two hours of 1 kWh a minute starting at local 08:00 on 2026-03-29.
    for ts in minutes(
        datetime(2026, 3, 29, 0, 0, tzinfo=UTC), datetime(2026, 3, 29, 2, tzinfo=UTC)
    ):
        rows.append((SHA_M1, ts, 1.0, 6, 1.0))
    return rows


EXPECTED_DST_DAY_MINUTES_WITH_DATA = 1380 - 120
EXPECTED_DST_DAY_KWH = 0.25 * EXPECTED_DST_DAY_MINUTES_WITH_DATA
EXPECTED_DST_DAY_COVERED = 60 * 0.5 + (EXPECTED_DST_DAY_MINUTES_WITH_DATA - 60) * 1.0


@pytest.fixture(scope="module")
def registry(db_settings: DatabaseSettings) -> Iterator[None]:
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        _delete_ours(conn)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("INSERT INTO organisations (org_id, name) VALUES (%s, %s)", (ORG, "API"))
            cur.executemany(
                "INSERT INTO sites (site_id, org_id, name, timezone, country, grid_region)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (BUD, ORG, "Budapest plant", "Europe/Budapest", "HU", "HU"),
                    (SHA, ORG, "Shanghai plant", "Asia/Shanghai", "CN", "CN-East"),
                ],
            )
            cur.executemany(
                "INSERT INTO assets (asset_id, site_id, parent_id, kind, name)"
                " VALUES (%s, %s, NULL, 'line', %s)",
                [(f"{BUD}-line", BUD, "Line 1"), (f"{SHA}-line", SHA, "Line 1")],
            )
            cur.executemany(
                "INSERT INTO devices (device_id, asset_id, gateway_id, metric, unit,"
                " energy_carrier, description) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (BUD_M1, f"{BUD}-line", "apitest-gw-bud", "power_w", "W", "electricity", "P1"),
                    (BUD_M2, f"{BUD}-line", "apitest-gw-bud", "gas_m3", "m3", "natural_gas", ""),
                    (SHA_M1, f"{SHA}-line", "apitest-gw-sha", "power_w", "W", "electricity", ""),
                ],
            )
            readings = []
            for k in range(N_READINGS):
                quality = "uncertain" if k == 3 else "good"
                readings.append((BUD_M1, "power_w", t(k), 1.5 * k, quality))
                readings.append((BUD_M1, "energy_wh", t(k), 1000.0 + k, "good"))
            cur.executemany(
                "INSERT INTO readings (device_id, metric, ts, value, quality, ingested_at)"
                " VALUES (%s, %s, %s, %s, %s, now())",
                readings,
            )
            cur.executemany(
                "INSERT INTO energy_1m (device_id, ts, kwh, sample_count, coverage)"
                " VALUES (%s, %s, %s, %s, %s)",
                energy_rows(),
            )
        yield
        _delete_ours(conn)


def _delete_ours(conn: psycopg.Connection[Any]) -> None:
    tables = [
        ("readings", "device_id"),
        ("energy_1m", "device_id"),
        ("devices", "device_id"),
        ("assets", "asset_id"),
        ("sites", "site_id"),
        ("organisations", "org_id"),
    ]
    with conn.transaction():
        for table, key in tables:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} LIKE %s").format(
                    sql.Identifier(table), sql.Identifier(key)
                ),
                ("apitest-%",),
            )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(db_settings: DatabaseSettings, registry: None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ApiSettings(), db_settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        yield client


def iso(value: datetime) -> str:
    return value.isoformat()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


async def test_ready_when_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "database": "ok"}


async def test_sites_are_listed(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/sites")
    assert response.status_code == 200
    ours = [s for s in response.json() if s["site_id"].startswith("apitest-")]
    assert ours == [
        {
            "site_id": BUD, "org_id": ORG, "name": "Budapest plant",
            "timezone": "Europe/Budapest", "country": "HU", "grid_region": "HU",
        },
        {
            "site_id": SHA, "org_id": ORG, "name": "Shanghai plant",
            "timezone": "Asia/Shanghai", "country": "CN", "grid_region": "CN-East",
        },
    ]  # fmt: skip


async def test_devices_are_filtered_by_site(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/devices", params={"site_id": BUD})
    assert response.status_code == 200
    devices = response.json()
    assert [d["device_id"] for d in devices] == [BUD_M1, BUD_M2]
    assert devices[0] == {
        "device_id": BUD_M1, "asset_id": f"{BUD}-line", "site_id": BUD,
        "gateway_id": "apitest-gw-bud", "metric": "power_w", "unit": "W",
        "energy_carrier": "electricity", "description": "P1",
    }  # fmt: skip
    assert devices[1]["energy_carrier"] == "natural_gas"
    everything = (await client.get("/v1/devices")).json()
    assert {BUD_M1, BUD_M2, SHA_M1} <= {d["device_id"] for d in everything}
    assert next(d for d in everything if d["device_id"] == SHA_M1)["site_id"] == SHA


async def test_unknown_site_and_device_are_404_problems(client: httpx.AsyncClient) -> None:
    body = problem(await client.get("/v1/devices", params={"site_id": "apitest-nowhere"}), 404)
    assert "apitest-nowhere" in body["detail"]
    assert body["type"] == "/problems/not-found"
    window = {"from": iso(t(0)), "to": iso(t(5))}
    for path in ("readings", "energy"):
        params = (
            window if path == "readings" else {"from": iso(T0), "to": iso(T0 + timedelta(hours=1))}
        )
        body = problem(await client.get(f"/v1/devices/apitest-ghost/{path}", params=params), 404)
        assert "'apitest-ghost'" in body["detail"]
        assert body["instance"] == f"/v1/devices/apitest-ghost/{path}"


async def test_readings_are_exactly_the_half_open_range(client: httpx.AsyncClient) -> None:
    params = {"from": iso(t(5)), "to": iso(t(10)), "metric": "power_w"}
    response = await client.get(f"/v1/devices/{BUD_M1}/readings", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    got = [(datetime.fromisoformat(r["ts"]), r["value"]) for r in body["readings"]]
    assert got == [(t(k), 1.5 * k) for k in range(5, 10)]
    assert body["metric"] == "power_w"
    assert datetime.fromisoformat(body["from"]) == t(5)
    assert datetime.fromisoformat(body["to"]) == t(10)
    assert body["count"] == 5
    assert body["truncated"] is False
    assert body["next_from"] is None
    assert all(
        datetime.fromisoformat(r["ts"]).utcoffset() == timedelta(0) for r in body["readings"]
    )


async def test_readings_of_all_metrics_are_ordered_by_ts_then_metric(
    client: httpx.AsyncClient,
) -> None:
    # Offsets other than UTC work when the "+" is encoded (httpx does).
    params = {"from": t(2).astimezone(BUDAPEST).isoformat(), "to": iso(t(4))}
    assert "+02:00" in params["from"]
    body = (await client.get(f"/v1/devices/{BUD_M1}/readings", params=params)).json()
    assert [(r["ts"], r["metric"], r["value"], r["quality"]) for r in body["readings"]] == [
        ("2026-03-29T10:00:20Z", "energy_wh", 1002.0, "good"),
        ("2026-03-29T10:00:20Z", "power_w", 3.0, "good"),
        ("2026-03-29T10:00:30Z", "energy_wh", 1003.0, "good"),
        ("2026-03-29T10:00:30Z", "power_w", 4.5, "uncertain"),
    ]
    assert body["metric"] is None


async def test_truncated_readings_continue_from_next_from(client: httpx.AsyncClient) -> None:
    url = f"/v1/devices/{BUD_M1}/readings"
    window = {"from": iso(t(0)), "to": iso(t(N_READINGS))}
    first = (await client.get(url, params={**window, "metric": "power_w", "limit": 7})).json()
    assert first["truncated"] is True
    assert first["count"] == 7
    assert datetime.fromisoformat(first["next_from"]) == t(7)
    rest = (
        await client.get(url, params={**window, "metric": "power_w", "from": first["next_from"]})
    ).json()
    assert rest["truncated"] is False
    values = [r["value"] for r in first["readings"] + rest["readings"]]
    assert values == [1.5 * k for k in range(N_READINGS)]

    # Both metrics share each timestamp; an odd limit must neither repeat nor skip one.
    seen: list[tuple[str, str]] = []
    params: dict[str, str | int] = {**window, "limit": 5}
    for _ in range(100):
        page = (await client.get(url, params=params)).json()
        assert page["count"] <= 5
        seen += [(r["ts"], r["metric"]) for r in page["readings"]]
        if not page["truncated"]:
            break
        params["from"] = page["next_from"]
    assert len(seen) == 2 * N_READINGS
    assert len(set(seen)) == len(seen)


async def test_readings_reject_naive_timestamps_and_empty_ranges(
    client: httpx.AsyncClient,
) -> None:
    url = f"/v1/devices/{BUD_M1}/readings"
    naive = problem(
        await client.get(url, params={"from": "2026-03-29T10:00:00", "to": iso(t(5))}), 422
    )
    assert naive["errors"][0]["name"] == "from"
    assert naive["errors"][0]["code"] == "timestamp_without_offset"
    backwards = problem(await client.get(url, params={"from": iso(t(5)), "to": iso(t(5))}), 422)
    assert backwards["errors"][0]["code"] == "range_empty"
    energy = problem(
        await client.get(
            f"/v1/devices/{BUD_M1}/energy", params={"from": iso(t(6)), "to": iso(t(0))}
        ),
        422,
    )
    assert energy["errors"][0]["code"] == "range_empty"


async def get_energy(
    client: httpx.AsyncClient, device: str, start: datetime, end: datetime, bucket: str
) -> dict[str, Any]:
    params = {"from": iso(start), "to": iso(end), "bucket": bucket}
    response = await client.get(f"/v1/devices/{device}/energy", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_daily_energy_follows_local_days_across_spring_forward(
    client: httpx.AsyncClient,
) -> None:
    body = await get_energy(client, BUD_M1, DAY_BEFORE, DST_DAY_END, "1d")
    assert body["timezone"] == "Europe/Budapest"
    assert body["site_id"] == BUD
    before, dst_day = body["buckets"]
    assert before["start"] == "2026-03-28T00:00:00+01:00"
    assert before["minutes"] == 1440
    assert before["kwh"] == pytest.approx(60 * 0.5)
    assert before["minutes_with_data"] == 60
    assert before["coverage"] == pytest.approx(60 / 1440)

    assert dst_day["start"] == "2026-03-29T00:00:00+01:00"
    assert dst_day["end"] == "2026-03-30T00:00:00+02:00"
    assert dst_day["minutes"] == 1380  # 23 hours
    assert dst_day["kwh"] == pytest.approx(EXPECTED_DST_DAY_KWH)
    assert dst_day["minutes_with_data"] == EXPECTED_DST_DAY_MINUTES_WITH_DATA
    assert dst_day["coverage"] == pytest.approx(EXPECTED_DST_DAY_COVERED / 1380)

    totals = body["totals"]
    assert totals["minutes"] == 1440 + 1380
    assert totals["kwh"] == pytest.approx(30 + EXPECTED_DST_DAY_KWH)
    assert totals["coverage"] == pytest.approx((60 + EXPECTED_DST_DAY_COVERED) / (1440 + 1380))
    assert totals["minutes_with_data"] == 60 + EXPECTED_DST_DAY_MINUTES_WITH_DATA


async def test_daily_buckets_match_timescaledb_time_bucket(
    client: httpx.AsyncClient, db_settings: DatabaseSettings
) -> None:
    body = await get_energy(client, BUD_M1, DAY_BEFORE, DST_DAY_END, "1d")
    async with await psycopg.AsyncConnection.connect(db_settings.conninfo()) as conn:
        cur = await conn.execute(
            "SELECT time_bucket('1 day', ts, 'Europe/Budapest') AS day, sum(kwh)"
            " FROM energy_1m WHERE device_id = %s AND ts >= %s AND ts < %s GROUP BY 1 ORDER BY 1",
            (BUD_M1, DAY_BEFORE, DST_DAY_END),
        )
        expected = await cur.fetchall()
    got = [(datetime.fromisoformat(b["start"]), b["kwh"]) for b in body["buckets"]]
    assert [day for day, _ in got] == [day for day, _ in expected]
    assert [kwh for _, kwh in got] == pytest.approx([kwh for _, kwh in expected])


async def test_hourly_energy_sums_and_empty_hours(client: httpx.AsyncClient) -> None:
    # Local 00:00 to 04:00 on the spring-forward day: three real hours, 02:00 never happens.
    end = datetime(2026, 3, 29, 4, tzinfo=BUDAPEST)
    body = await get_energy(client, BUD_M1, DST_DAY, end, "1h")
    assert [(b["start"], b["kwh"], b["coverage"], b["minutes"]) for b in body["buckets"]] == [
        ("2026-03-29T00:00:00+01:00", 15.0, 0.5, 60),
        ("2026-03-29T01:00:00+01:00", 15.0, 1.0, 60),
        ("2026-03-29T03:00:00+02:00", 15.0, 1.0, 60),
    ]
    assert body["totals"]["kwh"] == 45.0
    assert body["totals"]["coverage"] == pytest.approx(150 / 180)

    gap = await get_energy(client, BUD_M1, GAP[0] - timedelta(minutes=30), GAP[1], "1h")
    assert [
        (b["start"], b["kwh"], b["minutes"], b["minutes_with_data"]) for b in gap["buckets"]
    ] == [
        ("2026-03-29T09:00:00+02:00", 7.5, 30, 30),  # clipped to the requested half hour
        ("2026-03-29T10:00:00+02:00", 0.0, 60, 0),
        ("2026-03-29T11:00:00+02:00", 0.0, 60, 0),
    ]
    assert [b["coverage"] for b in gap["buckets"]] == [1.0, 0.0, 0.0]


async def test_the_repeated_autumn_hour_is_two_buckets(client: httpx.AsyncClient) -> None:
    body = await get_energy(client, BUD_M1, AUTUMN, AUTUMN + timedelta(hours=2), "1h")
    assert [(b["start"], b["kwh"], b["minutes"]) for b in body["buckets"]] == [
        ("2026-10-25T02:00:00+02:00", 15.0, 60),
        ("2026-10-25T02:00:00+01:00", 30.0, 60),
    ]


async def test_minute_and_quarter_hour_buckets(client: httpx.AsyncClient) -> None:
    start = DST_DAY + timedelta(hours=2)
    body = await get_energy(client, BUD_M1, start, start + timedelta(minutes=30), "15m")
    assert [(b["kwh"], b["minutes_with_data"]) for b in body["buckets"]] == [(3.75, 15)] * 2
    body = await get_energy(client, BUD_M1, start, start + timedelta(minutes=3), "1m")
    assert [b["kwh"] for b in body["buckets"]] == [0.25] * 3
    assert [datetime.fromisoformat(b["start"]) for b in body["buckets"]] == minutes(
        start, start + timedelta(minutes=3)
    )


async def test_daily_buckets_follow_each_sites_own_time_zone(client: httpx.AsyncClient) -> None:
    start = datetime(2026, 3, 29, tzinfo=SHANGHAI)
    body = await get_energy(client, SHA_M1, start, start + timedelta(days=1), "1d")
    assert body["timezone"] == "Asia/Shanghai"
    (day,) = body["buckets"]
    assert day["start"] == "2026-03-29T00:00:00+08:00"
    assert day["minutes"] == 1440
    assert day["kwh"] == 120.0
    assert day["coverage"] == pytest.approx(120 / 1440)
