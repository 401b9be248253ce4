"""Market-based Scope 2 per site and local month on the real database: instruments first in
the documented order, the residual factor for the rest, every figure versioned."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import psycopg
import pytest

from carbonflow import instruments
from carbonflow.config import DatabaseSettings
from carbonflow.instruments import InstrumentError
from services.stream.market_store import compute_month

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
MARCH = date(2024, 3, 1)
KWH_PER_MINUTE = 0.1
MARCH_KWH = 31 * 1440 * KWH_PER_MINUTE  # 4464 kWh
RESIDUAL = 0.7


@dataclass(frozen=True)
class Factory:
    """One site in a grid region of its own (with a residual mix), one electricity meter."""

    tag: str
    grid_region: str = ""

    @property
    def org(self) -> str:
        return f"mk-{self.tag}"

    @property
    def site(self) -> str:
        return f"mk-{self.tag}-site"

    @property
    def device(self) -> str:
        return f"mk-{self.tag}-meter"

    @property
    def region(self) -> str:
        return self.grid_region or f"CN-M{self.tag}"

    def create(self, conn: psycopg.Connection, country: str = "AQ") -> None:
        conn.execute("INSERT INTO organisations (org_id, name) VALUES (%s, 'x')", (self.org,))
        conn.execute(
            "INSERT INTO sites (site_id, org_id, name, timezone, country, grid_region)"
            " VALUES (%s, %s, 'x', 'Asia/Shanghai', %s, %s)",
            (self.site, self.org, country, self.region),
        )
        conn.execute(
            "INSERT INTO assets (asset_id, site_id, kind, name) VALUES (%s, %s, 'machine', 'x')",
            (f"{self.site}-m", self.site),
        )
        conn.execute(
            "INSERT INTO devices (device_id, asset_id, gateway_id, metric, unit, energy_carrier)"
            " VALUES (%s, %s, 'gw', 'active_power', 'W', 'electricity')",
            (self.device, f"{self.site}-m"),
        )

    def add_grid_factor(self, conn: psycopg.Connection, variant: str, value: float) -> str:
        factor_id = f"TEST_{variant.upper()}_{self.tag.upper()}"
        conn.execute(
            "INSERT INTO emission_factors (factor_id, scope, category, region_code, carrier,"
            " parameter, gas, variant, unit, region_label, fuel_label, gas_label) VALUES"
            " (%s, 'scope2', 'grid_electricity', %s, 'electricity', 'emission_factor', 'CO2e',"
            " %s, 'kgCO2e/kWh', 'test grid', 'electricity', 'CO2e')",
            (factor_id, self.region, variant),
        )
        conn.execute(
            "INSERT INTO emission_factor_versions (factor_id, version, value, source_value,"
            " source_unit, valid, source, reason) VALUES (%s, 1, %s, %s, 'kgCO2e/kWh',"
            " daterange('2024-01-01', '2025-01-01', '[)'), 'test', 'test factor')",
            (factor_id, value, value),
        )
        return factor_id

    def energy(self, conn: psycopg.Connection, first: datetime, last: datetime, kwh: float) -> None:
        """kwh in every minute from first to last (inclusive), fully measured."""
        conn.execute(
            "INSERT INTO energy_1m (device_id, ts, kwh, sample_count, coverage)"
            " SELECT %s, ts, %s, 7, 1.0 FROM generate_series(%s::timestamptz, %s::timestamptz,"
            " interval '1 minute') AS ts",
            (self.device, kwh, first, last),
        )

    def instrument(self, conn: psycopg.Connection, instrument_id: str, **fields: object) -> None:
        holder = {"site_id": self.site} if "org_id" not in fields else {}
        instruments.record(
            conn,
            instruments.validate(instrument_id=f"{self.tag}-{instrument_id}", **holder, **fields),
        )


@pytest.fixture
def factory(db_settings: DatabaseSettings) -> Factory:
    factory = Factory(uuid.uuid4().hex[:8])
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        factory.create(conn)
        factory.add_grid_factor(conn, "residual_mix", RESIDUAL)
        factory.add_grid_factor(conn, "standard", 0.5)
        # Every minute of March in Shanghai, and one heavy minute on each side of it.
        factory.energy(
            conn,
            datetime(2024, 3, 1, 0, 0, tzinfo=SHANGHAI),
            datetime(2024, 3, 31, 23, 59, tzinfo=SHANGHAI),
            KWH_PER_MINUTE,
        )
        for outside in (
            datetime(2024, 2, 29, 23, 59, tzinfo=SHANGHAI),
            datetime(2024, 4, 1, 0, 0, tzinfo=SHANGHAI),
        ):
            factory.energy(conn, outside, outside, 50.0)
        factory.instrument(
            conn,
            "GEC",
            kind="certificate",
            first_day=date(2024, 3, 1),
            last_day=date(2024, 3, 31),
            volume_kwh="1000",
            kg_co2e_per_kwh="0",
            evidence="GEC 2024-000123",
        )
        factory.instrument(
            conn,
            "PPA",
            kind="ppa",
            first_day=date(2024, 1, 1),
            last_day=date(2024, 12, 31),
            volume_kwh="1500",
            kg_co2e_per_kwh="0.02",
            evidence="PPA contract 7",
        )
        factory.instrument(
            conn,
            "SUP",
            kind="supplier",
            first_day=date(2024, 3, 1),
            last_day=date(2024, 3, 31),
            volume_kwh="1200",
            kg_co2e_per_kwh="0.3",
            evidence="supplier invoice 2024-03",
        )
    return factory


def current(conn: psycopg.Connection, site: str, month: date) -> list[tuple]:
    return conn.execute(
        "SELECT version, kwh, kg_co2e, residual_kwh, residual_factor_id, residual_basis"
        " FROM emissions_market_monthly WHERE site_id = %s AND month = %s"
        " ORDER BY version",
        (site, month),
    ).fetchall()


def test_a_month_with_a_certificate_a_ppa_a_supplier_and_residual(
    db_conn: psycopg.Connection, factory: Factory
) -> None:
    [stored] = compute_month(db_conn, MARCH, site_id=factory.site)
    figure = stored.figure
    assert (stored.version, stored.new) == (1, True)
    # By hand: 4464 kWh; certificate 1000 at 0, PPA 1500 at 0.02, supplier 1200 at 0.3,
    # residual 764 at 0.7.
    residual_kwh = MARCH_KWH - 1000 - 1500 - 1200
    want_kg = 1500 * 0.02 + 1200 * 0.3 + residual_kwh * RESIDUAL
    assert figure.kwh == pytest.approx(MARCH_KWH)
    assert figure.kg_co2e == pytest.approx(want_kg)
    assert figure.coverage == pytest.approx(1.0)
    assert {(s.ref.factor_id, s.kind): round(s.kwh, 6) for s in figure.instruments} == {
        (f"{factory.tag}-GEC", "certificate"): 1000,
        (f"{factory.tag}-PPA", "ppa"): 1500,
        (f"{factory.tag}-SUP", "supplier"): 1200,
    }
    assert figure.residual_kwh == pytest.approx(residual_kwh)
    assert figure.residual.basis == "residual_mix"

    rows = current(db_conn, factory.site, MARCH)
    assert len(rows) == 1
    assert rows[0][:4] == (
        1,
        pytest.approx(MARCH_KWH),
        pytest.approx(want_kg),
        pytest.approx(residual_kwh),
    )
    assert rows[0][4:] == (f"TEST_RESIDUAL_MIX_{factory.tag.upper()}", "residual_mix")
    shares = db_conn.execute(
        "SELECT instrument_id, kwh, kg_co2e FROM emissions_market_allocations"
        " WHERE site_id = %s AND month = %s ORDER BY instrument_id",
        (factory.site, MARCH),
    ).fetchall()
    assert [(i, round(k, 6), round(g, 6)) for i, k, g in shares] == [
        (f"{factory.tag}-GEC", 1000, 0),
        (f"{factory.tag}-PPA", 1500, 30),
        (f"{factory.tag}-SUP", 1200, 360),
    ]

    # April: the PPA's volume went to March; April's minutes take the residual mix.
    factory.energy(
        db_conn,
        datetime(2024, 4, 2, 0, 0, tzinfo=SHANGHAI),
        datetime(2024, 4, 2, 0, 9, tzinfo=SHANGHAI),
        KWH_PER_MINUTE,
    )
    [april] = compute_month(db_conn, date(2024, 4, 1), site_id=factory.site)
    assert april.figure.kwh == pytest.approx(50.0 + 1.0)  # the heavy minute is April's
    assert april.figure.instruments == ()
    assert april.figure.kg_co2e == pytest.approx(51.0 * RESIDUAL)


def test_recomputing_after_a_new_instrument_adds_a_version_and_keeps_the_old(
    db_conn: psycopg.Connection, factory: Factory
) -> None:
    [first] = compute_month(db_conn, MARCH, site_id=factory.site)
    [same] = compute_month(db_conn, MARCH, site_id=factory.site)
    assert (same.version, same.new) == (1, False)

    # An organisation-wide certificate of 300 kWh: the residual shrinks by as much.
    factory.instrument(
        db_conn,
        "ORG-GEC",
        org_id=factory.org,
        kind="certificate",
        first_day=date(2024, 3, 1),
        last_day=date(2024, 3, 31),
        volume_kwh="300",
        kg_co2e_per_kwh="0",
        evidence="GEC 2024-000999",
    )
    [second] = compute_month(db_conn, MARCH, site_id=factory.site)
    assert (second.version, second.new) == (2, True)
    assert second.figure.kg_co2e == pytest.approx(first.figure.kg_co2e - 300 * RESIDUAL)

    rows = db_conn.execute(
        "SELECT version, kg_co2e, superseded_at IS NOT NULL FROM emissions_market_monthly"
        " WHERE site_id = %s AND month = %s ORDER BY version",
        (factory.site, MARCH),
    ).fetchall()
    assert [(v, s) for v, _, s in rows] == [(1, True), (2, False)]
    assert rows[0][1] == pytest.approx(first.figure.kg_co2e)
    assert db_conn.execute(
        "SELECT count(*) FROM emissions_market_allocations WHERE site_id = %s AND version = 1",
        (factory.site,),
    ).fetchone() == (3,)

    # A correction of an instrument is a version too; the figure follows it.
    with pytest.raises(InstrumentError, match="reason"):
        factory.instrument(
            db_conn,
            "ORG-GEC",
            org_id=factory.org,
            kind="certificate",
            first_day=date(2024, 3, 1),
            last_day=date(2024, 3, 31),
            volume_kwh="100",
            kg_co2e_per_kwh="0",
            evidence="GEC 2024-000999",
        )
    factory.instrument(
        db_conn,
        "ORG-GEC",
        org_id=factory.org,
        kind="certificate",
        first_day=date(2024, 3, 1),
        last_day=date(2024, 3, 31),
        volume_kwh="100",
        kg_co2e_per_kwh="0",
        evidence="GEC 2024-000999",
        reason="registry shows 100 kWh",
    )
    [third] = compute_month(db_conn, MARCH, site_id=factory.site)
    assert third.version == 3
    assert third.figure.kg_co2e == pytest.approx(first.figure.kg_co2e - 100 * RESIDUAL)
    assert [
        v.version for v in instruments.listing(db_conn, org_id=factory.org, all_versions=True)
    ] == [1, 2]
    # A stored figure is never edited.
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        db_conn.execute(
            "UPDATE emissions_market_monthly SET kg_co2e = 0 WHERE site_id = %s",
            (factory.site,),
        )


def test_without_a_residual_mix_the_fallback_is_named(
    db_conn: psycopg.Connection,
) -> None:
    china = Factory(uuid.uuid4().hex[:8], grid_region="CN-East")
    china.create(db_conn, country="CN")
    moment = datetime(2023, 6, 1, 8, 0, tzinfo=SHANGHAI)
    china.energy(db_conn, moment, moment, 10.0)
    [stored] = compute_month(db_conn, date(2023, 6, 1), site_id=china.site)
    residual = stored.figure.residual
    assert residual.basis == "excl_market_non_fossil"
    assert str(residual.factor.ref) == "CN_GRID_NATIONAL_EXCLMKT_2023@v1"
    assert "no residual mix" in residual.note
    assert stored.figure.kg_co2e == pytest.approx(10.0 * 0.6096)

    plain = Factory(uuid.uuid4().hex[:8])
    plain.create(db_conn)
    standard = plain.add_grid_factor(db_conn, "standard", 0.5)
    moment = datetime(2024, 6, 1, 8, 0, tzinfo=SHANGHAI)
    plain.energy(db_conn, moment, moment, 10.0)
    [stored] = compute_month(db_conn, date(2024, 6, 1), site_id=plain.site)
    residual = stored.figure.residual
    assert (residual.basis, str(residual.factor.ref)) == ("location_grid", f"{standard}@v1")
    assert "location-based grid factor used instead" in residual.note
    assert stored.figure.kg_co2e == pytest.approx(10.0 * 0.5)
