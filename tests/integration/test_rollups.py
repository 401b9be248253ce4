"""Hourly rollups along the asset tree and the daily/monthly views, on the real database:
local calendars across a DST change and in a half-hour time zone, completeness, the
organisation as the sum of its sites, and idempotent recomputation."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from carbonflow.config import DatabaseSettings
from services.stream.rollup_store import recompute_hours

pytestmark = pytest.mark.integration

BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")
DST_END = date(2026, 10, 25)  # Berlin's clocks go back: a 25-hour local day


class Tree:
    """org -> {site Berlin: area -> line -> two machines, a device each;
    site Kolkata: area -> machine, one device}."""

    def __init__(self, run_id: str) -> None:
        self.org = f"ro-{run_id}"
        self.berlin, self.kolkata = f"{self.org}-ber", f"{self.org}-kol"
        self.line = f"{self.berlin}-line"
        self.machines = [f"{self.berlin}-m1", f"{self.berlin}-m2", f"{self.kolkata}-m1"]
        self.devices = [f"{m}-meter" for m in self.machines]

    def create(self, conn: psycopg.Connection) -> None:
        conn.execute(
            "INSERT INTO organisations (org_id, name) VALUES (%s, 'Rollup test')", (self.org,)
        )
        for site, zone, country in (
            (self.berlin, "Europe/Berlin", "DE"),
            (self.kolkata, "Asia/Kolkata", "IN"),
        ):
            conn.execute(
                "INSERT INTO sites (site_id, org_id, name, timezone, country, grid_region)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (site, self.org, site, zone, country, country),
            )
            conn.execute(
                "INSERT INTO assets (asset_id, site_id, parent_id, kind, name)"
                " VALUES (%s, %s, NULL, 'area', 'hall')",
                (f"{site}-hall", site),
            )
        conn.execute(
            "INSERT INTO assets (asset_id, site_id, parent_id, kind, name)"
            " VALUES (%s, %s, %s, 'line', 'line')",
            (self.line, self.berlin, f"{self.berlin}-hall"),
        )
        parents = [self.line, self.line, f"{self.kolkata}-hall"]
        sites = [self.berlin, self.berlin, self.kolkata]
        for machine, parent, site, device in zip(
            self.machines, parents, sites, self.devices, strict=True
        ):
            conn.execute(
                "INSERT INTO assets (asset_id, site_id, parent_id, kind, name)"
                " VALUES (%s, %s, %s, 'machine', 'machine')",
                (machine, site, parent),
            )
            conn.execute(
                "INSERT INTO devices (device_id, asset_id, gateway_id, metric, unit,"
                " energy_carrier) VALUES (%s, %s, 'gw', 'active_power', 'W', 'electricity')",
                (device, machine),
            )


def local_day_minutes(day: date, zone: ZoneInfo) -> list[datetime]:
    start = datetime.combine(day, datetime.min.time(), zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone).astimezone(UTC)
    return [start + timedelta(minutes=k) for k in range(int((end - start).total_seconds() // 60))]


@pytest.fixture
def tree(db_settings: DatabaseSettings, run_id: str) -> Tree:
    tree = Tree(f"{run_id}{uuid.uuid4().hex[:4]}")
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        tree.create(conn)
    return tree


def insert_energy(db: DatabaseSettings, rows: list[tuple[str, datetime, float, float]]) -> None:
    with psycopg.connect(db.conninfo(), autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO energy_1m (device_id, ts, kwh, sample_count, coverage)"
            " VALUES (%s, %s, %s, 1, %s)"
            " ON CONFLICT (device_id, ts) DO UPDATE SET kwh = EXCLUDED.kwh,"
            " coverage = EXCLUDED.coverage",
            rows,
        )


def recompute(db: DatabaseSettings, changed: list[tuple[str, datetime]]) -> int:
    async def run() -> int:
        async with (
            await psycopg.AsyncConnection.connect(db.conninfo()) as conn,
            conn.transaction(),
        ):
            return await recompute_hours(conn, changed)

    return asyncio.run(run())


def daily(db: DatabaseSettings, kind: str, node: str, day: date) -> dict[str, float]:
    with psycopg.connect(db.conninfo()) as conn:
        row = conn.execute(
            "SELECT kwh, covered_minutes, expected_minutes, coverage, devices"
            " FROM rollup_daily WHERE node_kind = %s AND node_id = %s AND day = %s",
            (kind, node, day),
        ).fetchone()
    assert row is not None, (kind, node, day)
    return dict(zip(["kwh", "covered", "expected", "coverage", "devices"], row, strict=True))


def test_local_days_across_dst_and_half_hour_zones_roll_up_the_tree(
    db_settings: DatabaseSettings, tree: Tree
) -> None:
    m1, m2, kol = tree.devices
    berlin_day = local_day_minutes(DST_END, BERLIN)
    kolkata_day = local_day_minutes(DST_END, KOLKATA)
    assert len(berlin_day) == 25 * 60
    rows = [(m1, t, 0.01, 1.0) for t in berlin_day]
    rows += [(m2, t, 0.02, 0.5) for t in berlin_day[::2]]  # every other minute, half covered
    rows += [(kol, t, 0.03, 1.0) for t in kolkata_day]
    insert_energy(db_settings, rows)

    written = recompute(db_settings, [(d, t) for d, t, _, _ in rows])
    assert written > 0

    site = daily(db_settings, "site", tree.berlin, DST_END)
    assert site["devices"] == 2
    assert site["expected"] == pytest.approx(2 * 25 * 60)
    assert site["covered"] == pytest.approx(25 * 60 + 0.5 * len(berlin_day[::2]))
    assert site["kwh"] == pytest.approx(0.01 * 25 * 60 + 0.02 * len(berlin_day[::2]))
    assert site["coverage"] == pytest.approx(site["covered"] / site["expected"])
    # The line holds both Berlin machines; a machine holds its own device only.
    assert daily(db_settings, "asset", tree.line, DST_END) == site
    machine = daily(db_settings, "asset", tree.machines[0], DST_END)
    assert (machine["kwh"], machine["expected"]) == (pytest.approx(15.0), pytest.approx(1500))

    # Kolkata's local hours start on the half hour in UTC, and its day is 24 hours long.
    with psycopg.connect(db_settings.conninfo()) as conn:
        minutes = {
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT extract(minute FROM hour AT TIME ZONE 'UTC')::int"
                " FROM rollup_hourly WHERE node_kind = 'site' AND node_id = %s",
                (tree.kolkata,),
            )
        }
    assert minutes == {30}
    india = daily(db_settings, "site", tree.kolkata, DST_END)
    assert (india["kwh"], india["expected"]) == (pytest.approx(0.03 * 1440), pytest.approx(1440))

    # The organisation's day is the sum of its sites' local days.
    org = daily(db_settings, "organisation", tree.org, DST_END)
    assert org["kwh"] == pytest.approx(site["kwh"] + india["kwh"])
    assert org["expected"] == pytest.approx(site["expected"] + india["expected"])
    assert org["devices"] == 3

    # October in Berlin has one hour more than 31 days of 24.
    with psycopg.connect(db_settings.conninfo()) as conn:
        month = conn.execute(
            "SELECT kwh, expected_minutes FROM rollup_monthly"
            " WHERE node_kind = 'site' AND node_id = %s AND month = %s",
            (tree.berlin, date(2026, 10, 1)),
        ).fetchone()
    assert month is not None
    assert month[0] == pytest.approx(site["kwh"])
    assert month[1] == pytest.approx(2 * (31 * 24 + 1) * 60)


def test_recomputation_is_idempotent_and_follows_changes(
    db_settings: DatabaseSettings, tree: Tree
) -> None:
    m1 = tree.devices[0]
    minutes = local_day_minutes(DST_END, BERLIN)[:120]
    insert_energy(db_settings, [(m1, t, 0.01, 1.0) for t in minutes])
    changed = [(m1, t) for t in minutes]
    assert recompute(db_settings, changed) > 0
    assert recompute(db_settings, changed) == 0  # nothing changed, nothing written

    # A late correction of one minute changes that hour for every node above the device.
    insert_energy(db_settings, [(m1, minutes[0], 1.01, 1.0)])
    written = recompute(db_settings, [(m1, minutes[0])])
    assert written == 5  # machine, line, hall, site, organisation
    assert daily(db_settings, "site", tree.berlin, DST_END)["kwh"] == pytest.approx(0.01 * 120 + 1)
