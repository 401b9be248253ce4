"""The project's factor file: every row loads, keys follow the documented rules, bad rows
are refused with their row and column named."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from carbonflow.factors.build import PUBLISHED_COLUMNS, build
from carbonflow.factors.codes import Parameter, region_code
from carbonflow.factors.errors import FactorDataError
from carbonflow.factors.model import (
    COLUMNS,
    DEFAULT_FACTORS_FILE,
    FactorRow,
    load_factors,
    parse_factors,
    write_factors,
)


@pytest.fixture(scope="module")
def rows() -> list[FactorRow]:
    return load_factors()


@pytest.fixture(scope="module")
def text() -> str:
    return DEFAULT_FACTORS_FILE.read_text(encoding="utf-8")


def test_every_row_of_the_file_loads(rows: list[FactorRow], text: str) -> None:
    assert len(rows) == 157 == len(text.splitlines()) - 1
    by_id = {row.factor_id: row for row in rows}
    assert by_id["CN_GRID_EAST_2023"].canonical_value == Decimal("0.5500")
    assert by_id["CN_GRID_EAST_2023"].region == "CN-East (华东)"
    assert by_id["DE_IEA_SDES_2021"].canonical_value == Decimal("0.384")
    assert by_id["CN_FUEL_RAWCOAL_CC"].canonical_value == Decimal("26370")
    assert by_id["IPCC2006_NATGAS_CC"].canonical_value == Decimal("15300")


def test_every_row_keeps_a_source(rows: list[FactorRow]) -> None:
    assert all(row.source for row in rows)


def test_the_file_is_what_the_build_makes_of_its_published_columns(text: str) -> None:
    """Rebuilding from the published columns alone reproduces the file byte for byte."""
    published = io.StringIO()
    writer = csv.DictWriter(published, fieldnames=PUBLISHED_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in csv.DictReader(io.StringIO(text)):
        writer.writerow({column: record[column] for column in PUBLISHED_COLUMNS})
    rebuilt = io.StringIO()
    write_factors(build(published.getvalue()), rebuilt)
    assert rebuilt.getvalue() == text


@pytest.mark.parametrize(
    ("label", "code"),
    [
        ("CN-East (华东)", "CN-East"),
        ("CN-Northeast (东北)", "CN-Northeast"),
        ("CN-Anhui 安徽", "CN-Anhui"),
        ("CN-Inner Mongolia 内蒙古", "CN-InnerMongolia"),
        ("US (national average)", "US"),
        ("US (utility-scale generation)", "US"),
        ("global (IPCC default)", "GLOBAL"),
        ("global", "GLOBAL"),
        ("UK", "GB"),
        ("EU-27", "EU27"),
        ("DE", "DE"),
    ],
)
def test_region_codes_follow_the_documented_rule(label: str, code: str) -> None:
    assert region_code(label) == code


@pytest.mark.parametrize("label", ["Mars", "cn-east", "华东", "C-East"])
def test_a_region_label_outside_the_rule_is_refused(label: str) -> None:
    with pytest.raises(ValueError, match="region code"):
        region_code(label)


def test_machine_keys_of_representative_rows(rows: list[FactorRow]) -> None:
    by_id = {row.factor_id: row for row in rows}
    east = by_id["CN_GRID_EAST_2022"]
    assert (east.region_code, east.carrier, east.parameter, east.gas_key, east.variant) == (
        "CN-East", "electricity", Parameter.EMISSION_FACTOR, "CO2", "standard",
    )  # fmt: skip
    assert by_id["CN_GRID_FOSSIL_2022"].variant == "fossil_generation"
    assert by_id["US_EIA_2023"].variant == "utility_generation"
    assert by_id["IPCC2006_BITCOAL_CH4_ENERGY"].variant == "energy_industries"
    assert by_id["IPCC2006_BITCOAL_CH4_MANUF"].variant == "standard"
    coal = [by_id[f"CN_FUEL_RAWCOAL_{p}"] for p in ("NCV", "CC", "OF", "EF")]
    assert [(r.carrier, r.parameter.value, r.gas_key) for r in coal] == [
        ("raw_coal", "ncv", "none"),
        ("raw_coal", "carbon_content", "C"),
        ("raw_coal", "oxidation_fraction", "none"),
        ("raw_coal", "emission_factor", "CO2"),
    ]
    assert by_id["IPCC2006_RFO_CC"].carrier == by_id["CN_FUEL_FUELOIL_CC"].carrier == "fuel_oil"
    ar6 = by_id["GWP_AR6_CH4_NONFOSSIL"]
    assert (ar6.gwp_set, ar6.gas_key, ar6.carrier) == ("AR6", "CH4_non_fossil", "none")


def _with_cell(text: str, factor_id: str, column: str, value: str) -> str:
    records = list(csv.DictReader(io.StringIO(text)))
    for record in records:
        if record["factor_id"] == factor_id:
            record[column] = value
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def _row_of(text: str, factor_id: str) -> int:
    ids = [record["factor_id"] for record in csv.DictReader(io.StringIO(text))]
    return ids.index(factor_id) + 2  # the header is row 1


@pytest.mark.parametrize(
    ("column", "value", "complaint"),
    [
        ("value", "zero point five", "decimal"),
        ("value", "NaN", "finite"),
        ("valid_from", "2023-13-01", "date"),
        ("region_code", "East China", "region code"),
        ("carrier", "Electricity", "pattern"),
        ("unit", "kgCO2/mile", "denominator"),
        ("canonical_unit", "gCO2/kWh", "canonical_unit"),
        ("source", "", "at least 1 character"),
    ],
)
def test_a_bad_cell_is_refused_naming_its_row_and_column(
    text: str, column: str, value: str, complaint: str
) -> None:
    bad = _with_cell(text, "CN_GRID_EAST_2023", column, value)
    with pytest.raises(FactorDataError, match=complaint) as caught:
        parse_factors(bad)
    assert caught.value.row == _row_of(text, "CN_GRID_EAST_2023")
    if column in ("value", "valid_from", "region_code", "carrier", "source"):
        assert caught.value.column == column
    assert f"row {caught.value.row}" in str(caught.value)


def test_two_factors_answering_the_same_lookup_at_once_are_refused(text: str) -> None:
    bad = _with_cell(text, "CN_GRID_FOSSIL_2022", "variant", "standard")
    with pytest.raises(FactorDataError, match="CN_GRID_NATIONAL_2022") as caught:
        parse_factors(bad)
    assert caught.value.row == _row_of(text, "CN_GRID_FOSSIL_2022")


def test_a_repeated_factor_id_is_refused(text: str) -> None:
    lines = text.splitlines(keepends=True)
    with pytest.raises(FactorDataError, match="repeats row 2"):
        parse_factors("".join([*lines, lines[1]]))


def test_a_missing_column_is_refused() -> None:
    with pytest.raises(FactorDataError, match="missing \\['source_detail'\\]"):
        parse_factors(",".join(c for c in COLUMNS if c != "source_detail") + "\n")
