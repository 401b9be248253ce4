"""Scope 1 by IPCC 2006 in the stream pipeline, on the real database: a mass fuel meter
outside China's parameter set is priced with IPCC's per-TJ factors and its organisation's GWP
set, every factor version (the GWP values included) is named, China's method keeps the days
it can price, and a minute never counts under two methods at once."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from carbonflow import db
from carbonflow.config import DatabaseSettings
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from edge.simulator.factory import small_factory
from schemas import ReadingsRecord
from services.stream.pipeline import BatchResult
from tests.stream_batches import counter_record, query, store_batches

pytestmark = pytest.mark.integration

MAX_GAP_S = 90.0
START = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)
FACTORS_FILE = Path(__file__).parents[2] / "data" / "emission_factors.csv"
FUEL = ("fuel_mass", "kg")
#: What IPCC prices diesel with in the project's data: the manufacturing CH4 and N2O factors.
IPCC_DIESEL = (
    "IPCC2006_DIESEL_NCV",
    "IPCC2006_DIESEL_CO2",
    "IPCC2006_DIESEL_CH4_MANUF",
    "IPCC2006_DIESEL_N2O_MANUF",
)
GWP_IDS = {
    "AR5": ("GWP_AR5_CH4", "GWP_AR5_N2O"),
    "AR6": ("GWP_AR6_CH4_NONFOSSIL", "GWP_AR6_N2O"),
}


def data_values() -> dict[str, float]:
    with FACTORS_FILE.open(newline="", encoding="utf-8") as handle:
        return {row["factor_id"]: float(row["value"]) for row in csv.DictReader(handle)}


@dataclass(frozen=True)
class Org:
    """An organisation with one site (Antarctica unless told) and one machine."""

    tag: str

    @property
    def org_id(self) -> str:
        return f"ip-{self.tag}"

    @property
    def site_id(self) -> str:
        return f"ip-{self.tag}-site"

    def create(
        self,
        conn: psycopg.Connection,
        gwp_set: str | None,
        country: str = "AQ",
        grid: str = "AQ",
        timezone: str = "Antarctica/McMurdo",
    ) -> None:
        conn.execute("INSERT INTO organisations (org_id, name) VALUES (%s, 'x')", (self.org_id,))
        if gwp_set is not None:
            conn.execute(
                "UPDATE organisations SET gwp_set = %s WHERE org_id = %s", (gwp_set, self.org_id)
            )
        conn.execute(
            "INSERT INTO sites (site_id, org_id, name, timezone, country, grid_region)"
            " VALUES (%s, %s, 'x', %s, %s, %s)",
            (self.site_id, self.org_id, timezone, country, grid),
        )
        conn.execute(
            "INSERT INTO assets (asset_id, site_id, kind, name) VALUES (%s, %s, 'machine', 'x')",
            (f"{self.site_id}-m", self.site_id),
        )

    def fuel_meter(self, conn: psycopg.Connection, carrier: str = "diesel") -> str:
        device_id = f"ip-{self.tag}-fuel"
        conn.execute(
            "INSERT INTO devices (device_id, asset_id, gateway_id, metric, unit, energy_carrier)"
            " VALUES (%s, %s, 'gw', %s, %s, %s)",
            (device_id, f"{self.site_id}-m", *FUEL, carrier),
        )
        return device_id


def record(
    device_id: str, metric: tuple[str, str], points: Sequence[tuple[float, float]]
) -> ReadingsRecord:
    """One record of counter readings at (seconds after START, value)."""
    return counter_record(device_id, metric, points, START)


def store(db: DatabaseSettings, *batches: list[ReadingsRecord]) -> list[BatchResult]:
    return store_batches(db, batches, now=START, max_gap_s=MAX_GAP_S)


def minute(k: int) -> datetime:
    return START + timedelta(minutes=k)


def new_org(db_settings: DatabaseSettings, gwp_set: str | None, **site: str) -> tuple[Org, str]:
    org = Org(uuid.uuid4().hex[:8])
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        org.create(conn, gwp_set, **site)
        return org, org.fuel_meter(conn)


def tank_scale(seconds: int) -> list[tuple[float, float]]:
    """Diesel burnt at 180 kg/h, the meter read every 10 s: 3 kg a minute."""
    return [(10.0 * k, 52_000.0 + 0.5 * k) for k in range(seconds // 10 + 1)]


def current_scope1(db_settings: DatabaseSettings, device_id: str) -> list[tuple]:
    return query(
        db_settings,
        "SELECT ts, method, factor_id, factor_version, proxy, activity, activity_unit, kg_co2e,"
        " lineage FROM emissions_1m WHERE device_id = %s AND scope = 'scope1'"
        " AND superseded_at IS NULL ORDER BY ts",
        device_id,
    )


def test_a_diesel_mass_meter_outside_china_is_priced_by_ipcc_with_its_organisations_gwp_set(
    db_settings: DatabaseSettings,
) -> None:
    ar5, ar5_meter = new_org(db_settings, "AR5")
    ar6, ar6_meter = new_org(db_settings, None)  # the column's default
    assert (
        query(db_settings, "SELECT gwp_set FROM organisations WHERE org_id = %s", ar6.org_id)[0][0]
        == "AR6"
    )

    results = store(
        db_settings,
        [record(ar5_meter, FUEL, tank_scale(300)), record(ar6_meter, FUEL, tank_scale(300))],
    )

    values = data_values()
    ncv, co2, ch4, n2o = (values[f] for f in IPCC_DIESEL)
    per_kg: dict[str, float] = {}
    for org, meter, gwp_set in ((ar5, ar5_meter, "AR5"), (ar6, ar6_meter, "AR6")):
        fuel = query(
            db_settings,
            "SELECT ts, quantity, unit, method FROM fuel_1m WHERE device_id = %s ORDER BY ts",
            meter,
        )
        assert [r[0] for r in fuel] == [minute(k) for k in range(6)]
        assert {(r[2], r[3]) for r in fuel} == {("kg", "counter_delta")}
        assert all(r[1] == pytest.approx(3.0) for r in fuel[:5])

        gwp_ch4, gwp_n2o = (values[f] for f in GWP_IDS[gwp_set])
        # t x GJ/t = GJ; / 1000 = TJ; x kg of each gas per TJ x its GWP.
        per_kg[gwp_set] = 1e-3 * ncv / 1e3 * (co2 + ch4 * gwp_ch4 + n2o * gwp_n2o)
        expected_lineage = [
            {"factor_id": f, "version": 1} for f in sorted((*IPCC_DIESEL, *GWP_IDS[gwp_set]))
        ]
        scope1 = current_scope1(db_settings, meter)
        assert [r[0] for r in scope1] == [r[0] for r in fuel]
        quantity = {r[0]: r[1] for r in fuel}
        for ts, method, factor_id, version, proxy, activity, unit, kg, lineage in scope1:
            assert (method, factor_id, version, proxy, unit) == (
                "scope1_ipcc",
                "IPCC2006_DIESEL_CO2",
                1,
                False,
                "kg",
            )
            assert activity == pytest.approx(quantity[ts])
            assert kg == pytest.approx(quantity[ts] * per_kg[gwp_set], rel=1e-12)
            assert lineage == expected_lineage  # sorted by factor id, as stored

        hourly = query(
            db_settings,
            "SELECT sum(kg_co2e_scope1) FROM rollup_hourly"
            " WHERE node_kind = 'organisation' AND node_id = %s",
            org.org_id,
        )[0][0]
        assert hourly == pytest.approx(sum(r[7] for r in scope1))
        assert hourly == pytest.approx(15.0 * per_kg[gwp_set])

    # The two figures differ by the GWP sets' difference alone: 3 kgCH4/TJ x (28 - 27) and
    # 0.6 kgN2O/TJ x (265 - 273) per TJ of diesel.
    heat_tj_per_kg = 1e-3 * ncv / 1e3
    gwp_gap = ch4 * (values["GWP_AR5_CH4"] - values["GWP_AR6_CH4_NONFOSSIL"]) + n2o * (
        values["GWP_AR5_N2O"] - values["GWP_AR6_N2O"]
    )
    assert per_kg["AR5"] - per_kg["AR6"] == pytest.approx(heat_tj_per_kg * gwp_gap, rel=1e-9)
    ar5_rows = {r[0]: r[7] for r in current_scope1(db_settings, ar5_meter)}
    ar6_rows = {r[0]: (r[5], r[7]) for r in current_scope1(db_settings, ar6_meter)}
    for ts, kg in ar5_rows.items():
        activity, ar6_kg = ar6_rows[ts]
        assert kg - ar6_kg == pytest.approx(activity * heat_tj_per_kg * gwp_gap, rel=1e-9)
    assert sum(r.scope1_minutes for r in results) == 12
    assert sum(r.unpriced_minutes for r in results) == 0


def test_a_diesel_mass_meter_in_china_keeps_chinas_method(
    db_settings: DatabaseSettings,
) -> None:
    _, meter = new_org(db_settings, "AR5", country="CN", grid="CN-East", timezone="Asia/Shanghai")

    store(db_settings, [record(meter, FUEL, tank_scale(120))])

    values = data_values()
    per_kg = (
        values["CN_FUEL_DIESEL_NCV"]
        / 1e3
        * values["CN_FUEL_DIESEL_CC"]
        * values["CN_FUEL_DIESEL_OF"]
        * 44
        / 12
    )  # GJ/kg x tC/TJ (== kgC/GJ) x oxidation x CO2/C
    scope1 = current_scope1(db_settings, meter)
    assert len(scope1) == 3
    for _, method, factor_id, _, _, activity, unit, kg, lineage in scope1:
        assert (method, factor_id, unit) == ("scope1_cn", "CN_FUEL_DIESEL_CC", "kg")
        assert kg == pytest.approx(activity * per_kg, rel=1e-12)
        assert {r["factor_id"] for r in lineage} == {
            "CN_FUEL_DIESEL_NCV",
            "CN_FUEL_DIESEL_CC",
            "CN_FUEL_DIESEL_OF",
        }


def test_a_minute_priced_again_by_the_other_method_supersedes_its_figure(
    db_settings: DatabaseSettings,
) -> None:
    """A region that gains a complete China diesel parameter set: the same minutes, stored
    again, are priced by China's method, and the IPCC figures stay, superseded."""
    org, meter = new_org(db_settings, "AR6", country="AQ", grid=f"AQ-T{uuid.uuid4().hex[:6]}")
    (first,) = store(db_settings, [record(meter, FUEL, tank_scale(180))])
    before = current_scope1(db_settings, meter)
    assert {r[1] for r in before} == {"scope1_ipcc"}
    assert first.scope1_minutes == len(before) == 4

    region = query(db_settings, "SELECT grid_region FROM sites WHERE site_id = %s", org.site_id)
    parameters = {
        "NCV": ("ncv", "none", "GJ/t", "42.652"),
        "CC": ("carbon_content", "C", "kgC/TJ", "20200"),
        "OF": ("oxidation_fraction", "none", "fraction", "0.98"),
    }
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        for key, (parameter, gas, unit, value) in parameters.items():
            factor_id = f"TEST_DIESEL_{key}_{org.tag.upper()}"
            conn.execute(
                "INSERT INTO emission_factors (factor_id, scope, category, region_code, carrier,"
                " parameter, gas, variant, unit, region_label, fuel_label, gas_label) VALUES"
                " (%s, 'scope1', 'fuel_combustion', %s, 'diesel', %s, %s, 'standard', %s,"
                " 'test', 'diesel', 'test')",
                (factor_id, region[0][0], parameter, gas, unit),
            )
            conn.execute(
                "INSERT INTO emission_factor_versions (factor_id, version, value, source_value,"
                " source_unit, valid, source, reason) VALUES (%s, 1, %s, %s, %s,"
                " daterange(NULL, NULL), 'test', 'test factor')",
                (factor_id, value, value, unit),
            )

    store(db_settings, [record(meter, FUEL, tank_scale(180))])

    after = current_scope1(db_settings, meter)
    assert [r[0] for r in after] == [r[0] for r in before]
    per_kg = 42.652e-3 * 20.2 * 0.98 * 44 / 12
    for _, method, factor_id, _, _, activity, _, kg, _ in after:
        assert (method, factor_id) == ("scope1_cn", f"TEST_DIESEL_CC_{org.tag.upper()}")
        assert kg == pytest.approx(activity * per_kg, rel=1e-12)
    superseded = query(
        db_settings,
        "SELECT ts, method, kg_co2e FROM emissions_1m WHERE device_id = %s"
        " AND superseded_at IS NOT NULL ORDER BY ts",
        meter,
    )
    assert superseded == [(r[0], r[1], r[7]) for r in before]
    hourly = query(
        db_settings,
        "SELECT sum(kg_co2e_scope1) FROM rollup_hourly WHERE node_kind = 'site' AND node_id = %s",
        org.site_id,
    )[0][0]
    assert hourly == pytest.approx(sum(r[7] for r in after))


def test_the_gwp_set_defaults_to_ar6_is_checked_and_survives_registering_again(
    db_conn: psycopg.Connection, run_id: str
) -> None:
    layout = small_factory(30, prefix=f"gwp-{run_id}", machines_per_line=2)
    org_id = layout.organisation.org_id
    upsert_layout(db_conn, layout)
    sql = "SELECT gwp_set FROM organisations WHERE org_id = %s"
    assert db_conn.execute(sql, (org_id,)).fetchone() == ("AR6",)

    db_conn.execute("UPDATE organisations SET gwp_set = 'AR5' WHERE org_id = %s", (org_id,))
    upsert_layout(db_conn, layout)
    assert db_conn.execute(sql, (org_id,)).fetchone() == ("AR5",)

    with pytest.raises(psycopg.errors.CheckViolation):
        db_conn.execute("UPDATE organisations SET gwp_set = 'AR4' WHERE org_id = %s", (org_id,))


def test_the_migration_adds_and_drops_the_column(stack: Stack, run_id: str) -> None:
    scratch = DatabaseSettings(name=f"cf_gwp_test_{run_id}")
    stack.create_database(scratch.name)
    try:
        db.migrate(scratch, "0008")
        column = (
            "SELECT column_default FROM information_schema.columns"
            " WHERE table_name = 'organisations' AND column_name = 'gwp_set'"
        )
        with psycopg.connect(scratch.conninfo(), autocommit=True) as conn:
            assert conn.execute(column).fetchall() == [("'AR6'::text",)]
        db.downgrade(scratch, "0007")
        with psycopg.connect(scratch.conninfo(), autocommit=True) as conn:
            assert conn.execute(column).fetchall() == []
    finally:
        stack.drop_database(scratch.name)
