"""Scope 2 location-based emissions in the stream pipeline, on the real database: each
minute priced by the factor of its site's local day, traceable to the factor version,
restatements and newly published factors priced again as new rows, old figures kept."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from carbonflow.config import DatabaseSettings
from carbonflow.factors import store as factors
from schemas import Reading, ReadingsRecord
from services.stream.pipeline import BatchResult, store_batch
from services.stream.repricing import reprice_now

pytestmark = pytest.mark.integration

MAX_GAP_S = 90.0
POWER_W = 6_000.0  # 0.1 kWh per minute


@dataclass(frozen=True)
class Plant:
    """Three sites: CN-East (Shanghai), a grid region with factors of the test's own, and a
    country no factor covers."""

    tag: str

    @property
    def region(self) -> str:
        return f"CN-T{self.tag}"

    @property
    def factor(self) -> str:
        return f"TEST_GRID_{self.tag.upper()}"

    def device(self, site: str) -> str:
        return f"em-{self.tag}-{site}"

    def create(self, conn: psycopg.Connection) -> None:
        org = f"em-{self.tag}"
        conn.execute("INSERT INTO organisations (org_id, name) VALUES (%s, 'x')", (org,))
        for site, zone, country, grid in (
            ("east", "Asia/Shanghai", "CN", "CN-East"),
            ("own", "Asia/Shanghai", "AQ", self.region),
            ("none", "UTC", "AQ", "AQ"),
        ):
            site_id = f"{org}-{site}"
            conn.execute(
                "INSERT INTO sites (site_id, org_id, name, timezone, country, grid_region)"
                " VALUES (%s, %s, 'x', %s, %s, %s)",
                (site_id, org, zone, country, grid),
            )
            conn.execute(
                "INSERT INTO assets (asset_id, site_id, kind, name)"
                " VALUES (%s, %s, 'machine', 'x')",
                (f"{site_id}-m", site_id),
            )
            conn.execute(
                "INSERT INTO devices (device_id, asset_id, gateway_id, metric, unit,"
                " energy_carrier) VALUES (%s, %s, 'gw', 'active_power', 'W', 'electricity')",
                (self.device(site), f"{site_id}-m"),
            )
        self.add_factor(conn, self.factor, "0.5", date(2025, 1, 1), date(2026, 1, 1))

    def add_factor(
        self, conn: psycopg.Connection, factor_id: str, value: str, start: date, end: date
    ) -> None:
        conn.execute(
            "INSERT INTO emission_factors (factor_id, scope, category, region_code, carrier,"
            " parameter, gas, variant, unit, region_label, fuel_label, gas_label) VALUES"
            " (%s, 'scope2', 'grid_electricity', %s, 'electricity', 'emission_factor', 'CO2',"
            " 'standard', 'kgCO2/kWh', 'test grid', 'electricity', 'CO2')",
            (factor_id, self.region),
        )
        conn.execute(
            "INSERT INTO emission_factor_versions (factor_id, version, value, source_value,"
            " source_unit, valid, source, reason) VALUES (%s, 1, %s, %s, 'kgCO2/kWh',"
            " daterange(%s, %s, '[)'), 'test', 'test factor')",
            (factor_id, value, value, start, end),
        )


@pytest.fixture
def plant(db_settings: DatabaseSettings) -> Plant:
    plant = Plant(uuid.uuid4().hex[:8])
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        plant.create(conn)
    return plant


def power(device_id: str, start: datetime, minutes: int) -> ReadingsRecord:
    times = [start + timedelta(seconds=10 * k) for k in range(minutes * 6 + 1)]
    return ReadingsRecord(
        gateway_id="gw",
        device_id=device_id,
        session_id="s",
        seq=0,
        sent_at=times[-1],
        received_at=times[-1],
        readings=[Reading(ts=t, metric="active_power", value=POWER_W, unit="W") for t in times],
    )


def store(db: DatabaseSettings, records: list[ReadingsRecord]) -> BatchResult:
    async def go() -> BatchResult:
        async with AsyncConnectionPool(db.conninfo(), min_size=1, max_size=1) as pool:
            result, rejects = await store_batch(pool, records, MAX_GAP_S, source="t", now=START)
        assert rejects == []
        return result

    return asyncio.run(go())


def emissions(db: DatabaseSettings, device_id: str, *, current: bool = True) -> list[tuple]:
    with psycopg.connect(db.conninfo()) as conn:
        return conn.execute(
            "SELECT ts, factor_id, factor_version, proxy, activity, kg_co2e, coverage"
            " FROM emissions_1m WHERE device_id = %s AND (superseded_at IS NULL) = %s"
            " ORDER BY ts, factor_version",
            (device_id, current),
        ).fetchall()


START = datetime(2022, 12, 31, 15, 50, tzinfo=UTC)  # 23:50 in Shanghai


def test_each_minute_takes_the_factor_of_its_local_day(
    db_settings: DatabaseSettings, plant: Plant
) -> None:
    device = plant.device("east")
    result = store(db_settings, [power(device, START, 20)])
    assert result.emission_minutes == result.energy_minutes > 0
    rows = emissions(db_settings, device)
    with psycopg.connect(db_settings.conninfo()) as conn:
        energy = dict(
            conn.execute("SELECT ts, kwh FROM energy_1m WHERE device_id = %s", (device,)).fetchall()
        )
    new_year = datetime(2022, 12, 31, 16, 0, tzinfo=UTC)  # midnight in Shanghai
    for ts, factor_id, version, proxy, activity, kg, coverage in rows:
        want = "CN_GRID_EAST_2022" if ts < new_year else "CN_GRID_EAST_2023"
        assert (factor_id, version, proxy) == (want, 1, False), ts
        value = 0.5617 if ts < new_year else 0.55
        assert activity == pytest.approx(energy[ts])
        assert kg == pytest.approx(energy[ts] * value)
        assert 0 <= coverage <= 1
    assert sum(r[6] for r in rows) > 15  # 20 minutes measured, edges partly
    assert {r[1] for r in rows} == {"CN_GRID_EAST_2022", "CN_GRID_EAST_2023"}

    # The site's hours carry the same emissions.
    with psycopg.connect(db_settings.conninfo()) as conn:
        hourly = conn.execute(
            "SELECT sum(kg_co2e_scope2_location) FROM rollup_hourly"
            " WHERE node_kind = 'site' AND node_id = %s",
            (f"em-{plant.tag}-east",),
        ).fetchone()
    assert hourly is not None
    assert hourly[0] == pytest.approx(sum(r[5] for r in rows))


def test_minutes_no_factor_can_price_are_counted_not_priced(
    db_settings: DatabaseSettings, plant: Plant
) -> None:
    device = plant.device("none")
    result = store(db_settings, [power(device, START, 5)])
    assert result.energy_minutes > 0
    assert result.emission_minutes == 0
    assert result.unpriced_minutes == result.energy_minutes
    assert emissions(db_settings, device) == []


def test_a_restatement_prices_again_as_new_rows_and_keeps_the_old_figures(
    db_settings: DatabaseSettings, plant: Plant
) -> None:
    device = plant.device("own")
    store(db_settings, [power(device, datetime(2025, 6, 1, 2, 0, tzinfo=UTC), 10)])
    before = emissions(db_settings, device)
    assert before
    assert {(r[1], r[2], r[3]) for r in before} == {(plant.factor, 1, False)}
    assert all(r[5] == pytest.approx(r[4] * 0.5) for r in before)

    with psycopg.connect(db_settings.conninfo()) as conn:
        factors.restate(
            conn,
            plant.factor,
            "0.4",
            "kgCO2/kWh",
            date(2025, 1, 1),
            date(2025, 12, 31),
            "corrected by the publisher",
            "test",
        )
        conn.commit()
    repriced = reprice_now(db_settings, factor_id=plant.factor)
    assert repriced.minutes == len(before)
    assert repriced.changed == len(before)

    after = emissions(db_settings, device)
    assert [r[0] for r in after] == [r[0] for r in before]
    assert {(r[1], r[2]) for r in after} == {(plant.factor, 2)}
    assert all(r[5] == pytest.approx(r[4] * 0.4) for r in after)
    # The figures under version 1 are still there, marked superseded.
    assert emissions(db_settings, device, current=False) == before

    # Pricing again without a change writes nothing new.
    assert reprice_now(db_settings, factor_id=plant.factor).changed == 0


def test_a_proxy_is_replaced_once_the_period_gets_its_own_factor(
    db_settings: DatabaseSettings, plant: Plant
) -> None:
    device = plant.device("own")
    store(db_settings, [power(device, datetime(2026, 3, 1, 2, 0, tzinfo=UTC), 10)])
    proxied = emissions(db_settings, device)
    assert proxied
    assert {(r[1], r[3]) for r in proxied} == {(plant.factor, True)}

    published = f"{plant.factor}_2026"
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        plant.add_factor(conn, published, "0.3", date(2026, 1, 1), date(2027, 1, 1))
    repriced = reprice_now(db_settings, proxies=True)
    assert repriced.changed >= len(proxied)

    now = emissions(db_settings, device)
    assert {(r[1], r[3]) for r in now} == {(published, False)}
    assert all(r[5] == pytest.approx(r[4] * 0.3) for r in now)
    assert emissions(db_settings, device, current=False) == proxied


def test_readings_past_the_lateness_are_stored_and_reported_but_change_no_figures(
    db_settings: DatabaseSettings, plant: Plant
) -> None:
    device = plant.device("east")
    now = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
    recent = power(device, now - timedelta(days=6, hours=23), 5)
    old = power(device, now - timedelta(days=7, hours=1), 5)

    async def go() -> BatchResult:
        async with AsyncConnectionPool(db_settings.conninfo(), min_size=1, max_size=1) as pool:
            result, _ = await store_batch(
                pool, [recent, old], MAX_GAP_S, source="t", now=now, lateness=timedelta(days=7)
            )
        return result

    result = asyncio.run(go())
    assert result.late_readings == len(old.readings)
    with psycopg.connect(db_settings.conninfo()) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM readings WHERE device_id = %s", (device,)
        ).fetchone()
        energy_days = conn.execute(
            "SELECT DISTINCT ts::date FROM energy_1m WHERE device_id = %s", (device,)
        ).fetchall()
        event = conn.execute(
            "SELECT details FROM device_events WHERE source_id = %s AND event = 'late_readings'",
            (device,),
        ).fetchone()
    # Every reading is kept; only the timely ones made figures; the late ones are reported.
    assert stored is not None
    assert stored[0] == len(recent.readings) + len(old.readings)
    assert [d for (d,) in energy_days] == [recent.readings[0].ts.date()]
    assert event is not None
    assert event[0]["count"] == len(old.readings)
    assert event[0]["last"] == old.readings[-1].ts.isoformat()
