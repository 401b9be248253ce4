"""The emission factor registry in the real database: seeding, lookups, restatements."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import NamedTuple

import psycopg
import pytest
from typer.testing import CliRunner

from carbonflow.config import DatabaseSettings
from carbonflow.factors import store
from carbonflow.factors.codes import Parameter
from carbonflow.factors.errors import FactorNotFoundError, RestatementError
from carbonflow.factors.model import FactorRow
from carbonflow.factors.selection import FactorKey, Level

pytestmark = pytest.mark.integration

GRID_CO2 = FactorKey(carrier="electricity", parameter=Parameter.EMISSION_FACTOR, gas="CO2")


def _at(year: int, month: int = 6, day: int = 15) -> datetime:
    return datetime(year, month, day, 12, tzinfo=UTC)


def _snapshot(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT f.*, v.* FROM emission_factors f JOIN emission_factor_versions v"
        " USING (factor_id) ORDER BY f.factor_id, v.version"
    ).fetchall()


def test_seeding_again_changes_nothing(db_conn: psycopg.Connection) -> None:
    """The session database was seeded by its migration; seeding once more adds nothing."""
    before = _snapshot(db_conn)
    report = store.seed_from_file(db_conn)
    assert report.added == []
    assert report.differs == []
    assert report.unchanged >= 157
    assert _snapshot(db_conn) == before
    seeded = db_conn.execute(
        "SELECT count(*) FROM emission_factor_versions WHERE version = 1 AND reason = %s",
        (store.SEED_REASON,),
    ).fetchone()
    assert seeded == (157,)


def test_the_grid_region_factor_of_the_year_answers(db_conn: psycopg.Connection) -> None:
    match = store.lookup(db_conn, GRID_CO2, _at(2023), grid_region="CN-East", country="CN")
    assert (match.factor_id, match.version, match.level, match.proxy) == (
        "CN_GRID_EAST_2023", 1, Level.GRID_REGION, False,
    )  # fmt: skip
    assert match.factor.value == Decimal("0.5500")
    assert match.factor.unit == "kgCO2/kWh"
    earlier = store.lookup(db_conn, GRID_CO2, _at(2021), grid_region="CN-East", country="CN")
    assert (earlier.factor_id, earlier.factor.value) == ("CN_GRID_EAST_2021", Decimal("0.5992"))


def test_a_province_without_a_factor_for_the_year_falls_back_to_its_country(
    db_conn: psycopg.Connection,
) -> None:
    in_2022 = store.lookup(db_conn, GRID_CO2, _at(2022), grid_region="CN-Anhui", country="CN")
    assert (in_2022.factor_id, in_2022.level) == ("CN_GRID_PROV_ANHUI_2022", Level.GRID_REGION)
    in_2023 = store.lookup(db_conn, GRID_CO2, _at(2023), grid_region="CN-Anhui", country="CN")
    assert (in_2023.factor_id, in_2023.level, in_2023.proxy) == (
        "CN_GRID_NATIONAL_2023", Level.COUNTRY, False,
    )  # fmt: skip


def test_a_fuel_without_national_factors_falls_back_to_the_ipcc_default(
    db_conn: psycopg.Connection,
) -> None:
    key = FactorKey(carrier="natural_gas", parameter=Parameter.EMISSION_FACTOR, gas="CH4")
    match = store.lookup(db_conn, key, _at(2024), grid_region="CN-East", country="CN")
    assert (match.factor_id, match.level, match.factor.unit) == (
        "IPCC2006_NATGAS_CH4_MANUF", Level.GLOBAL, "kgCH4/TJ",
    )  # fmt: skip
    china_ncv = store.lookup(
        db_conn, FactorKey(carrier="raw_coal", parameter=Parameter.NCV), _at(2024),
        grid_region="CN-East", country="CN",
    )  # fmt: skip
    assert (china_ncv.factor_id, china_ncv.factor.value) == (
        "CN_FUEL_RAWCOAL_NCV",
        Decimal("20.908"),
    )


def test_after_the_newest_published_year_the_answer_is_a_flagged_proxy(
    db_conn: psycopg.Connection,
) -> None:
    match = store.lookup(db_conn, GRID_CO2, _at(2026), grid_region="CN-East", country="CN")
    assert (match.factor_id, match.proxy) == ("CN_GRID_EAST_2023", True)
    assert "PROXY" in match.note
    with pytest.raises(FactorNotFoundError, match="proxies not allowed"):
        store.lookup(
            db_conn, GRID_CO2, _at(2026), grid_region="CN-East", country="CN", allow_proxy=False
        )


def test_a_site_lookup_takes_the_date_in_the_site_time_zone(
    db_conn: psycopg.Connection, run_id: str
) -> None:
    org, site = f"factors-org-{run_id}", f"factors-site-{run_id}"
    db_conn.execute("INSERT INTO organisations (org_id, name) VALUES (%s, 'F')", (org,))
    db_conn.execute(
        "INSERT INTO sites (site_id, org_id, name, timezone, country, grid_region)"
        " VALUES (%s, %s, 'S', 'Asia/Shanghai', 'CN', 'CN-East')",
        (site, org),
    )
    new_year_in_shanghai = datetime(2022, 12, 31, 17, 30, tzinfo=UTC)
    match = store.lookup_for_site(db_conn, site, GRID_CO2, new_year_in_shanghai)
    assert match.factor_id == "CN_GRID_EAST_2023"
    with pytest.raises(FactorNotFoundError, match="unknown site"):
        store.lookup_for_site(db_conn, f"nowhere-{run_id}", GRID_CO2, new_year_in_shanghai)


def test_gwp_values_by_set_and_gas(db_conn: psycopg.Connection) -> None:
    assert store.gwp(db_conn, "AR5", "CH4").value == 28
    assert store.gwp(db_conn, "AR6", store.COMBUSTION_CH4["AR6"]).value == Decimal("27.0")
    assert store.gwp(db_conn, "AR6", "N2O").value == 273
    with pytest.raises(FactorNotFoundError, match="AR4"):
        store.gwp(db_conn, "AR4", "CH4")


class OwnFactors(NamedTuple):
    region: str
    id_2022: str
    id_2023: str


@pytest.fixture
def own(db_conn: psycopg.Connection) -> OwnFactors:
    """A grid region of this test only, with factors for 2022 and 2023 to restate freely."""
    tag = uuid.uuid4().hex[:10].upper()
    region = f"ZZ-T{tag}"
    rows = [
        FactorRow(
            factor_id=f"ZZ_{tag}_{year}",
            scope="scope2",
            category="grid_electricity",
            region=region,
            region_code=region,
            fuel="electricity",
            carrier="electricity",
            gas="CO2",
            gas_key="CO2",
            parameter=Parameter.EMISSION_FACTOR,
            variant="standard",
            gwp_set=None,
            value=Decimal(value),
            unit="kgCO2/kWh",
            canonical_unit="kgCO2/kWh",
            valid_from=date(year, 1, 1),
            valid_to=date(year, 12, 31),
            source="test data",
            source_detail="",
        )
        for year, value in ((2022, "0.60"), (2023, "0.50"))
    ]
    assert len(store.seed(db_conn, rows).added) == 2
    return OwnFactors(region, rows[0].factor_id, rows[1].factor_id)


def test_a_restatement_adds_version_2_and_keeps_version_1(
    db_conn: psycopg.Connection, own: OwnFactors
) -> None:
    factor_id = own.id_2023
    original = store.get_version(db_conn, factor_id, 1)
    restated = store.restate(
        db_conn, factor_id, "480", "gCO2/kWh", date(2023, 1, 1), date(2023, 12, 31),
        reason="corrected by the publisher", source="erratum 2025-03",
    )  # fmt: skip
    assert (restated.version, restated.value, restated.unit) == (2, Decimal("0.48"), "kgCO2/kWh")
    assert (restated.source_value, restated.source_unit) == (Decimal("480"), "gCO2/kWh")
    assert [v.version for v in store.versions(db_conn, factor_id)] == [1, 2]
    assert store.get_version(db_conn, factor_id, 1) == original
    assert original.value == Decimal("0.50")

    def lookup(at: datetime, known_at: datetime | None = None) -> tuple[str, int, bool]:
        match = store.lookup(
            db_conn, GRID_CO2, at, grid_region=own.region, country="ZZ", known_at=known_at
        )
        return match.factor_id, match.version, match.proxy

    assert lookup(_at(2023)) == (factor_id, 2, False)
    # As the registry stood before the restatement: version 1.
    assert lookup(_at(2023), known_at=original.recorded_at) == (factor_id, 1, False)
    # An earlier period keeps its own factor.
    assert lookup(_at(2022)) == (own.id_2022, 1, False)
    # Later than anything published: the restated 2023 factor, as a proxy.
    assert lookup(_at(2025)) == (factor_id, 2, True)


def test_a_restatement_for_a_new_period_leaves_the_old_period_alone(
    db_conn: psycopg.Connection, own: OwnFactors
) -> None:
    factor_id = own.id_2022
    store.restate(
        db_conn, factor_id, "0.7", "kgCO2/kWh", date(2022, 7, 1), date(2022, 12, 31),
        reason="second-half value published", source="test",
    )  # fmt: skip
    first_half = store.lookup(db_conn, GRID_CO2, _at(2022, 3), grid_region=own.region, country=None)
    second_half = store.lookup(
        db_conn, GRID_CO2, _at(2022, 9), grid_region=own.region, country=None
    )
    assert (first_half.version, first_half.factor.value) == (1, Decimal("0.60"))
    assert (second_half.version, second_half.factor.value) == (2, Decimal("0.7"))


def test_a_restatement_is_refused_when_it_cannot_be_applied(
    db_conn: psycopg.Connection, own: OwnFactors
) -> None:
    factor_id = own.id_2023
    args = (date(2023, 1, 1), date(2023, 12, 31))
    with pytest.raises(RestatementError, match="kgCO2/TJ"):
        store.restate(db_conn, factor_id, "1", "kg/TJ", *args, reason="r", source="s")
    with pytest.raises(RestatementError, match="mile"):
        store.restate(db_conn, factor_id, "1", "kgCO2/mile", *args, reason="r", source="s")
    with pytest.raises(RestatementError, match="reason"):
        store.restate(db_conn, factor_id, "1", "kgCO2/kWh", *args, reason=" ", source="s")
    with pytest.raises(RestatementError, match="before"):
        store.restate(db_conn, factor_id, "1", "kgCO2/kWh", args[1], args[0], "r", "s")
    with pytest.raises(RestatementError, match="finite"):
        store.restate(db_conn, factor_id, "-1", "kgCO2/kWh", *args, reason="r", source="s")
    with pytest.raises(FactorNotFoundError, match="unknown factor"):
        store.restate(db_conn, "NO_SUCH_FACTOR", "1", "kgCO2/kWh", *args, "r", "s")
    assert [v.version for v in store.versions(db_conn, factor_id)] == [1]


def test_history_cannot_be_rewritten_in_the_database(
    db_conn: psycopg.Connection, own: OwnFactors
) -> None:
    factor_id = own.id_2023
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="restate"):
        db_conn.execute(
            "UPDATE emission_factor_versions SET value = 0 WHERE factor_id = %s", (factor_id,)
        )
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="restate"):
        db_conn.execute("DELETE FROM emission_factor_versions WHERE factor_id = %s", (factor_id,))
    assert store.get_version(db_conn, factor_id, 1).value == Decimal("0.50")


def test_the_command_line_shows_and_looks_up_factors(
    db_settings: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from carbonflow.cli import app

    monkeypatch.setenv("CARBONFLOW_DB_NAME", db_settings.name)
    runner = CliRunner()
    shown = runner.invoke(app, ["factors", "show", "US_EGRID2022_CO2"])
    assert shown.exit_code == 0, shown.output
    assert "0.37337410577313 kgCO2/kWh" in shown.output
    assert "as published: 823.149 lb/MWh" in shown.output
    found = runner.invoke(
        app,
        ["factors", "lookup", "--carrier", "electricity", "--parameter", "emission_factor",
         "--grid-region", "CN-East", "--country", "CN", "--at", "2022-05-01"],
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    assert "CN_GRID_EAST_2022" in found.output
    missing = runner.invoke(app, ["factors", "show", "NO_SUCH_FACTOR"])
    assert missing.exit_code == 1
    assert "unknown factor NO_SUCH_FACTOR" in missing.output
