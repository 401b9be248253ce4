"""Cumulative counters in the stream pipeline, on the real database: energy registers give
counter_delta energy minutes, gas meters give fuel minutes priced for Scope 1 by China's
method with every factor version named, anomalies become device events with their reason,
and the hourly rollups carry Scope 1 without adding m3 to kWh."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from carbonflow.config import DatabaseSettings
from carbonflow.factors import store as factors
from schemas import ReadingsRecord
from services.stream.pipeline import BatchResult
from services.stream.repricing import reprice_now
from tests.stream_batches import counter_record, query, store_batches

pytestmark = pytest.mark.integration

MAX_GAP_S = 90.0
START = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
FACTORS_FILE = Path(__file__).parents[2] / "data" / "emission_factors.csv"
ENERGY = ("active_energy_import", "Wh")
GAS = ("gas_volume", "m3")


@dataclass(frozen=True)
class Site:
    """An organisation with one site (Shanghai, CN-East unless told) and one machine."""

    tag: str

    @property
    def site_id(self) -> str:
        return f"ct-{self.tag}-site"

    def create(self, conn: psycopg.Connection, country: str = "CN", grid: str = "CN-East") -> None:
        org = f"ct-{self.tag}"
        conn.execute("INSERT INTO organisations (org_id, name) VALUES (%s, 'x')", (org,))
        conn.execute(
            "INSERT INTO sites (site_id, org_id, name, timezone, country, grid_region)"
            " VALUES (%s, %s, 'x', 'Asia/Shanghai', %s, %s)",
            (self.site_id, org, country, grid),
        )
        conn.execute(
            "INSERT INTO assets (asset_id, site_id, kind, name) VALUES (%s, %s, 'machine', 'x')",
            (f"{self.site_id}-m", self.site_id),
        )

    def device(
        self, conn: psycopg.Connection, name: str, metric: tuple[str, str], carrier: str
    ) -> str:
        device_id = f"ct-{self.tag}-{name}"
        conn.execute(
            "INSERT INTO devices (device_id, asset_id, gateway_id, metric, unit, energy_carrier)"
            " VALUES (%s, %s, 'gw', %s, %s, %s)",
            (device_id, f"{self.site_id}-m", metric[0], metric[1], carrier),
        )
        return device_id


@pytest.fixture
def site(db_settings: DatabaseSettings) -> Site:
    site = Site(uuid.uuid4().hex[:8])
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        site.create(conn)
    return site


def record(
    device_id: str, metric: tuple[str, str], points: Sequence[tuple[float, float]]
) -> ReadingsRecord:
    """One record of counter readings at (seconds after START, value)."""
    return counter_record(device_id, metric, points, START)


def store(db: DatabaseSettings, *batches: list[ReadingsRecord]) -> list[BatchResult]:
    return store_batches(db, batches, now=START, max_gap_s=MAX_GAP_S)


def minute(k: int) -> datetime:
    return START + timedelta(minutes=k)


def energy_rows(db: DatabaseSettings, device_id: str) -> list[tuple]:
    return query(
        db,
        "SELECT ts, kwh, sample_count, coverage, method FROM energy_1m"
        " WHERE device_id = %s ORDER BY ts",
        device_id,
    )


def counter_events(db: DatabaseSettings, device_id: str) -> list[tuple]:
    return query(
        db,
        "SELECT ts, event, details FROM device_events"
        " WHERE source_kind = 'device' AND source_id = %s ORDER BY ts, event",
        device_id,
    )


def rolling_register(seconds: int) -> list[tuple[float, float]]:
    """An energy register counting 1 Wh/s, read every 10 s for ``seconds``: it wraps at
    1,000,000 Wh after 150 s and restarts from 4 Wh at 300 s."""
    points = []
    for k in range(seconds // 10 + 1):
        value = (999_850 + 10 * k) % 1_000_000 if k < 30 else 4 + 10 * (k - 30)
        points.append((10.0 * k, float(value)))
    return points


def set_register(db: DatabaseSettings, device_id: str, modulus: float, max_rate: float) -> None:
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO device_counters (device_id, modulus, max_rate_per_s) VALUES (%s, %s, %s)",
            (device_id, modulus, max_rate),
        )


def test_an_energy_register_counts_across_a_rollover_and_a_reset(
    db_settings: DatabaseSettings, site: Site
) -> None:
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        device = site.device(conn, "meter", ENERGY, "electricity")
    set_register(db_settings, device, modulus=1_000_000, max_rate=100.0)

    (result,) = store(db_settings, [record(device, ENERGY, rolling_register(600))])

    rows = energy_rows(db_settings, device)
    assert {r[4] for r in rows} == {"counter_delta"}
    by_minute = {r[0]: r for r in rows}
    # Every minute counts 60 Wh, across the wrap too (minute 2); the pair with the restart
    # (290 s -> 300 s, minute 4) counts the new value, 4 Wh, instead of 10.
    for k in range(10):
        want = 0.054 if k == 4 else 0.060
        assert by_minute[minute(k)][1] == pytest.approx(want), k
        assert by_minute[minute(k)][3] == pytest.approx(1.0)
    assert sum(r[1] for r in rows) == pytest.approx(0.594)
    assert result.energy_minutes == len(rows)
    assert result.emission_minutes == len(rows)  # Scope 2, on the energy it counted

    events = counter_events(db_settings, device)
    assert [(ts, event) for ts, event, _ in events] == [
        (START + timedelta(seconds=150), "counter_rollover"),
        (START + timedelta(seconds=300), "counter_reset"),
    ]
    rollover, reset = (details for _, _, details in events)
    assert rollover["raw_delta"] == pytest.approx(-999_990)
    assert rollover["counted"] == pytest.approx(10)
    assert rollover["reason"].startswith("rollover: ")
    assert reset["ts0"] == (START + timedelta(seconds=290)).isoformat()
    assert reset["raw_delta"] == pytest.approx(4 - 140)
    assert reset["counted"] == pytest.approx(4)
    assert reset["unit"] == "Wh"
    assert reset["reason"].startswith("reset: ")
    assert result.counter_events == 2

    # Scope 2 rows name their one grid factor as their whole lineage.
    for factor_id, version, lineage in query(
        db_settings,
        "SELECT factor_id, factor_version, lineage FROM emissions_1m WHERE device_id = %s",
        device,
    ):
        assert lineage == [{"factor_id": factor_id, "version": version}]

    # A redelivery changes nothing.
    (again,) = store(db_settings, [record(device, ENERGY, rolling_register(600))])
    assert again.new_readings == 0
    assert again.counter_events == 0
    assert energy_rows(db_settings, device) == rows


def test_readings_arriving_late_and_out_of_order_converge(
    db_settings: DatabaseSettings, site: Site
) -> None:
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        whole = site.device(conn, "whole", ENERGY, "electricity")
        pieces = site.device(conn, "pieces", ENERGY, "electricity")
    for device in (whole, pieces):
        set_register(db_settings, device, modulus=1_000_000, max_rate=100.0)
    points = rolling_register(600)
    store(db_settings, [record(whole, ENERGY, points)])
    # Latest third first, then the first, then the middle.
    thirds = [points[:20], points[20:40], points[40:]]
    store(db_settings, *([record(pieces, ENERGY, part)] for part in reversed(thirds)))

    def strip(rows: list[tuple]) -> list[tuple]:
        return [(ts, pytest.approx(kwh), n, pytest.approx(cov), m) for ts, kwh, n, cov, m in rows]

    assert strip(energy_rows(db_settings, pieces)) == strip(energy_rows(db_settings, whole))
    assert [(ts, e) for ts, e, _ in counter_events(db_settings, pieces)] == [
        (ts, e) for ts, e, _ in counter_events(db_settings, whole)
    ]


def test_impossible_jumps_backward_counts_and_gaps_are_recorded_not_counted(
    db_settings: DatabaseSettings, site: Site
) -> None:
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        device = site.device(conn, "jumpy", ENERGY, "electricity")  # default register
    points = [(10.0 * k, 5_000_000.0 + 10 * k) for k in range(61) if not 41 <= k <= 55]
    points[20] = (200.0, 6_000_000.0)  # 1 MWh in 10 s: more than the default 10 MW allow
    store(db_settings, [record(device, ENERGY, points)])

    events = {event: (ts, details) for ts, event, details in counter_events(db_settings, device)}
    assert set(events) == {"counter_rejected_jump", "counter_negative", "counter_gap"}
    ts, jump = events["counter_rejected_jump"]
    assert ts == START + timedelta(seconds=200)
    assert jump["counted"] is None
    assert jump["raw_delta"] == pytest.approx(6_000_000 - 5_000_190)
    assert jump["reason"].startswith("rejected_jump: ")
    ts, back = events["counter_negative"]
    assert ts == START + timedelta(seconds=210)
    assert back["reason"].startswith("negative: ")
    ts, gap = events["counter_gap"]
    assert ts == START + timedelta(seconds=560)
    assert gap["ts0"] == (START + timedelta(seconds=400)).isoformat()
    assert gap["raw_delta"] == pytest.approx(160)  # the consumption across it, kept here
    assert gap["reason"].startswith("gap: ")

    by_minute = {ts: (kwh, cov) for ts, kwh, _, cov, _ in energy_rows(db_settings, device)}
    # Minute 3 (180-240 s) lost the two pairs around the spike: 40 of its 60 s counted.
    assert by_minute[minute(3)] == (pytest.approx(0.040), pytest.approx(40 / 60))
    assert by_minute[minute(2)] == (pytest.approx(0.060), pytest.approx(1.0))
    # The gap (400-560 s) is not bridged: minute 7 (420-480 s) has nothing.
    assert minute(7) not in by_minute
    assert by_minute[minute(6)] == (pytest.approx(0.040), pytest.approx(40 / 60))


def test_a_late_reading_that_breaks_a_pair_removes_the_minute_it_covered(
    db_settings: DatabaseSettings, site: Site
) -> None:
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        device = site.device(conn, "late", ENERGY, "electricity")
    store(db_settings, [record(device, ENERGY, [(50.0, 1_000_000.0), (130.0, 1_000_080.0)])])
    before = {ts: kwh for ts, kwh, *_ in energy_rows(db_settings, device)}
    assert before[minute(1)] == pytest.approx(0.060)  # bridged by the one pair, no reading

    (result,) = store(db_settings, [record(device, ENERGY, [(125.0, 1_900_000.0)])])

    after = {ts: kwh for ts, kwh, *_ in energy_rows(db_settings, device)}
    assert minute(1) not in after
    assert after == {minute(0): 0.0, minute(2): 0.0}
    current = query(
        db_settings,
        "SELECT ts FROM emissions_1m WHERE device_id = %s AND superseded_at IS NULL",
        device,
    )
    assert minute(1) not in {ts for (ts,) in current}
    assert result.rollup_rows > 0


def china_natural_gas() -> tuple[float, list[dict[str, object]]]:
    """kgCO2 per Nm3 of natural gas by hand from the data file: NCV (GJ/10^4 Nm3) x carbon
    content (tC/TJ = kgC/GJ) x oxidation x 44/12; and the three factors."""
    with FACTORS_FILE.open(newline="", encoding="utf-8") as handle:
        rows = {row["factor_id"]: row for row in csv.DictReader(handle)}
    ncv, cc, of = (rows[f"CN_FUEL_NATGAS_{p}"] for p in ("NCV", "CC", "OF"))
    assert (ncv["unit"], cc["unit"], of["unit"]) == ("GJ/10^4 Nm3", "tC/TJ", "fraction")
    kg_per_nm3 = float(ncv["value"]) / 1e4 * float(cc["value"]) * float(of["value"]) * 44 / 12
    lineage = [
        {"factor_id": f, "version": 1}
        for f in sorted(("CN_FUEL_NATGAS_NCV", "CN_FUEL_NATGAS_CC", "CN_FUEL_NATGAS_OF"))
    ]
    # The source prints the product too, rounded: the method reproduces it.
    assert kg_per_nm3 == pytest.approx(float(rows["CN_FUEL_NATGAS_EF"]["value"]), rel=1e-4)
    return kg_per_nm3, lineage


def gas_meter(seconds: int) -> list[tuple[float, float]]:
    """18 m3/h, read every 10 s: 0.3 m3 a minute."""
    return [(10.0 * k, 12_345.0 + 0.05 * k) for k in range(seconds // 10 + 1)]


def test_a_gas_meter_gives_fuel_minutes_and_scope1_by_china_method(
    db_settings: DatabaseSettings, site: Site
) -> None:
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        meter = site.device(conn, "gas", GAS, "natural_gas")
        power = site.device(conn, "power", ENERGY, "electricity")
    set_register(db_settings, power, modulus=1_000_000, max_rate=100.0)
    kg_per_nm3, lineage = china_natural_gas()

    (result,) = store(
        db_settings,
        [record(meter, GAS, gas_meter(600)), record(power, ENERGY, rolling_register(600))],
    )

    fuel = query(
        db_settings,
        "SELECT ts, quantity, unit, method, coverage FROM fuel_1m WHERE device_id = %s ORDER BY ts",
        meter,
    )
    assert [r[0] for r in fuel] == [minute(k) for k in range(11)]
    assert {(r[2], r[3]) for r in fuel} == {("m3", "counter_delta")}
    assert all(r[1] == pytest.approx(0.3) for r in fuel[:10])
    assert result.fuel_minutes == len(fuel)
    assert energy_rows(db_settings, meter) == []  # no m3 among the kWh

    scope1 = query(
        db_settings,
        "SELECT ts, method, factor_id, factor_version, proxy, activity, activity_unit,"
        " kg_co2e, coverage, lineage FROM emissions_1m"
        " WHERE device_id = %s AND scope = 'scope1' AND superseded_at IS NULL ORDER BY ts",
        meter,
    )
    assert [r[0] for r in scope1] == [r[0] for r in fuel]
    quantity = {r[0]: r[1] for r in fuel}
    for ts, method, factor_id, version, proxy, activity, unit, kg, coverage, row_lineage in scope1:
        assert (method, factor_id, version, proxy, unit) == (
            "scope1_cn",
            "CN_FUEL_NATGAS_CC",
            1,
            False,
            "Nm3",
        )
        assert activity == pytest.approx(quantity[ts])
        assert kg == pytest.approx(quantity[ts] * kg_per_nm3, rel=1e-12)
        assert row_lineage == lineage
        assert 0 <= coverage <= 1
    assert sum(r[7] for r in scope1) == pytest.approx(3.0 * kg_per_nm3)
    assert result.scope1_minutes == len(scope1)

    # The site's hours: Scope 1 from the gas, kWh and Scope 2 from electricity only.
    hourly = query(
        db_settings,
        "SELECT sum(kwh), sum(kg_co2e_scope1), sum(kg_co2e_scope2_location) FROM rollup_hourly"
        " WHERE node_kind = 'site' AND node_id = %s",
        site.site_id,
    )[0]
    scope2 = query(
        db_settings,
        "SELECT sum(kg_co2e) FROM emissions_1m WHERE device_id = %s AND scope = 'scope2'",
        power,
    )[0][0]
    assert hourly[0] == pytest.approx(0.594)
    assert hourly[1] == pytest.approx(3.0 * kg_per_nm3)
    assert hourly[2] == pytest.approx(scope2)
    assert scope2 > 0


def test_gas_without_a_complete_china_parameter_set_is_counted_not_priced(
    db_settings: DatabaseSettings,
) -> None:
    site = Site(uuid.uuid4().hex[:8])
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        site.create(conn, country="AQ", grid="AQ")  # only global (IPCC) factors apply
        meter = site.device(conn, "gas", GAS, "natural_gas")

    (result,) = store(db_settings, [record(meter, GAS, gas_meter(120))])

    assert result.fuel_minutes == 3
    assert result.scope1_minutes == 0
    assert result.unpriced_minutes == result.fuel_minutes
    assert query(db_settings, "SELECT 1 FROM emissions_1m WHERE device_id = %s", meter) == []


def test_a_swapped_meter_is_recorded_and_its_unexplained_value_not_counted(
    db_settings: DatabaseSettings, site: Site
) -> None:
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        device = site.device(conn, "swap", ENERGY, "electricity")
    # The new meter shows 100 kWh 10 s later: more than 10 MW (the default) can count.
    store(db_settings, [record(device, ENERGY, [(0.0, 9_000_000.0), (10.0, 100_000.0)])])
    ((ts, event, details),) = counter_events(db_settings, device)
    assert (ts, event) == (START + timedelta(seconds=10), "counter_reset")
    assert details["counted"] is None
    assert details["raw_delta"] == pytest.approx(100_000 - 9_000_000)
    assert "nothing counted" in details["reason"]
    assert sum(kwh for _, kwh, *_ in energy_rows(db_settings, device)) == 0


def test_restating_one_scope1_parameter_prices_the_fuel_minutes_again(
    db_settings: DatabaseSettings,
) -> None:
    """A region with China-method gas parameters of the test's own; restating the oxidation
    fraction (not the row's primary factor) must still reach every minute that used it."""
    site = Site(uuid.uuid4().hex[:8])
    region = f"CN-T{site.tag}"
    ids = {p: f"TEST_GAS_{p}_{site.tag.upper()}" for p in ("NCV", "CC", "OF")}
    parameters = {
        "NCV": ("ncv", "none", "GJ/Nm3", "0.038931"),
        "CC": ("carbon_content", "C", "kgC/TJ", "15300"),
        "OF": ("oxidation_fraction", "none", "fraction", "0.99"),
    }
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        site.create(conn, country="AQ", grid=region)
        meter = site.device(conn, "gas", GAS, "natural_gas")
        for key, (parameter, gas, unit, value) in parameters.items():
            conn.execute(
                "INSERT INTO emission_factors (factor_id, scope, category, region_code, carrier,"
                " parameter, gas, variant, unit, region_label, fuel_label, gas_label) VALUES"
                " (%s, 'scope1', 'fuel_combustion', %s, 'natural_gas', %s, %s, 'standard', %s,"
                " 'test', 'natural gas', 'test')",
                (ids[key], region, parameter, gas, unit),
            )
            conn.execute(
                "INSERT INTO emission_factor_versions (factor_id, version, value, source_value,"
                " source_unit, valid, source, reason) VALUES (%s, 1, %s, %s, %s,"
                " daterange(NULL, NULL), 'test', 'test factor')",
                (ids[key], value, value, unit),
            )

    store(db_settings, [record(meter, GAS, gas_meter(300))])
    per_nm3 = 0.038931 * 15300 / 1000 * 0.99 * 44 / 12
    sql = (
        "SELECT ts, activity, kg_co2e, lineage FROM emissions_1m WHERE device_id = %s"
        " AND scope = 'scope1' AND (superseded_at IS NULL) = %s ORDER BY ts"
    )
    before = query(db_settings, sql, meter, True)
    assert before
    assert all(r[2] == pytest.approx(r[1] * per_nm3) for r in before)

    with psycopg.connect(db_settings.conninfo()) as conn:
        factors.restate(conn, ids["OF"], "0.98", "fraction", None, None, "corrected", "test")
        conn.commit()
    repriced = reprice_now(db_settings, factor_id=ids["OF"])
    assert repriced.minutes == len(before)
    assert repriced.changed == len(before)

    after = query(db_settings, sql, meter, True)
    assert [r[0] for r in after] == [r[0] for r in before]
    assert all(r[2] == pytest.approx(r[1] * per_nm3 / 0.99 * 0.98) for r in after)
    assert all({"factor_id": ids["OF"], "version": 2} in r[3] for r in after)
    # The figures under version 1 stay, superseded.
    assert query(db_settings, sql, meter, False) == before
