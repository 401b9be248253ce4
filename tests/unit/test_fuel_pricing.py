"""Which Scope 1 method prices a fuel device's day, and IPCC's coefficient from registry rows."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from carbonflow.emissions.units import QuantityUnit
from carbonflow.factors.codes import GwpSet, Parameter
from carbonflow.factors.errors import FactorError
from carbonflow.factors.selection import FactorVersion
from services.stream.emissions import DeviceSite
from services.stream.fuel_emissions import day_coefficient, gwp_values, ipcc_coefficient

DAY = date(2024, 6, 3)


def factor(
    factor_id: str,
    parameter: Parameter,
    value: str,
    unit: str,
    *,
    carrier: str = "diesel",
    gas: str = "none",
    region: str = "GLOBAL",
    gwp_set: str = "",
    version: int = 1,
) -> FactorVersion:
    return FactorVersion(
        factor_id=factor_id,
        version=version,
        region_code=region,
        carrier=carrier,
        parameter=parameter,
        gas=gas,
        variant="standard",
        gwp_set=gwp_set,
        unit=unit,
        value=Decimal(value),
        source_value=Decimal(value),
        source_unit=unit,
        valid_from=None,
        valid_until=None,
        source="t",
        source_detail="",
        reason="t",
        recorded_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


EF = Parameter.EMISSION_FACTOR
IPCC_DIESEL = [
    factor("NCV", Parameter.NCV, "43.0", "GJ/t"),
    factor("CO2", EF, "74100", "kgCO2/TJ", gas="CO2"),
    factor("CH4", EF, "3", "kgCH4/TJ", gas="CH4"),
    factor("N2O", EF, "0.6", "kgN2O/TJ", gas="N2O"),
]
GWPS = [
    factor("AR5_CH4", Parameter.GWP, "28", "kgCO2e/kg", carrier="none", gas="CH4", gwp_set="AR5"),
    factor("AR5_N2O", Parameter.GWP, "265", "kgCO2e/kg", carrier="none", gas="N2O", gwp_set="AR5"),
    # AR6 has a generic CH4 value too: combustion takes the non-fossil one.
    factor("AR6_CH4", Parameter.GWP, "27.9", "kgCO2e/kg", carrier="none", gas="CH4", gwp_set="AR6"),
    factor(
        "AR6_CH4_NF",
        Parameter.GWP,
        "27.0",
        "kgCO2e/kg",
        carrier="none",
        gas="CH4_non_fossil",
        gwp_set="AR6",
    ),
    factor("AR6_N2O", Parameter.GWP, "273", "kgCO2e/kg", carrier="none", gas="N2O", gwp_set="AR6"),
]


def site(gwp_set: GwpSet, carrier: str = "diesel") -> DeviceSite:
    return DeviceSite("d", carrier, "UTC", "AQ", "AQ", gwp_set)


@pytest.mark.parametrize(
    ("gwp_set", "ch4", "n2o"), [(GwpSet.AR5, 28.0, 265.0), (GwpSet.AR6, 27.0, 273.0)]
)
def test_ipcc_prices_a_kg_of_diesel_with_the_organisations_gwp_set(
    gwp_set: GwpSet, ch4: float, n2o: float
) -> None:
    found = ipcc_coefficient([*IPCC_DIESEL, *GWPS], site(gwp_set), DAY, QuantityUnit.KG)
    heat_tj = 1e-3 * 43.0 / 1e3
    assert found.kg_per_unit == pytest.approx(heat_tj * (74100 + 3 * ch4 + 0.6 * n2o), rel=1e-12)
    assert found.method == "scope1_ipcc"
    assert str(found.primary) == "CO2@v1"
    gwp_ids = {"AR5": ["AR5_CH4", "AR5_N2O"], "AR6": ["AR6_CH4_NF", "AR6_N2O"]}[gwp_set]
    assert [r.factor_id for r in found.lineage] == sorted(["NCV", "CO2", "CH4", "N2O", *gwp_ids])
    assert found.proxy is False


def test_the_latest_version_of_a_gwp_value_applies() -> None:
    restated = factor(
        "AR5_N2O",
        Parameter.GWP,
        "264",
        "kgCO2e/kg",
        carrier="none",
        gas="N2O",
        gwp_set="AR5",
        version=2,
    )
    values = gwp_values([*GWPS, restated], GwpSet.AR5)
    assert (str(values.n2o.ref), values.n2o.value) == ("AR5_N2O@v2", 264.0)


def test_chinas_method_wins_where_its_parameter_set_is_complete() -> None:
    china = [
        factor("CN_NCV", Parameter.NCV, "42.652", "GJ/t", region="AQ"),
        factor("CN_CC", Parameter.CARBON_CONTENT, "20200", "kgC/TJ", gas="C", region="AQ"),
        factor("CN_OF", Parameter.OXIDATION_FRACTION, "0.98", "fraction", region="AQ"),
    ]
    everything = [*IPCC_DIESEL, *GWPS, *china]
    found = day_coefficient(everything, site(GwpSet.AR6), DAY, QuantityUnit.KG)
    assert (found.method, str(found.primary)) == ("scope1_cn", "CN_CC@v1")
    assert found.kg_per_unit == pytest.approx(42.652e-3 * 20.2 * 0.98 * 44 / 12, rel=1e-12)
    # Without the oxidation fraction, IPCC prices the day (with the nearer calorific value).
    found = day_coefficient(everything[:-1], site(GwpSet.AR6), DAY, QuantityUnit.KG)
    assert (found.method, str(found.primary)) == ("scope1_ipcc", "CO2@v1")
    assert "CN_NCV" in {r.factor_id for r in found.lineage}


def test_gas_by_volume_is_not_priced_by_ipcc_with_a_calorific_value_per_mass() -> None:
    gas = [
        factor(f.factor_id, f.parameter, str(f.value), f.unit, carrier="natural_gas", gas=f.gas)
        for f in IPCC_DIESEL
    ]
    with pytest.raises(FactorError) as refused:
        day_coefficient([*gas, *GWPS], site(GwpSet.AR6, "natural_gas"), DAY, QuantityUnit.NM3)
    reason = str(refused.value)
    assert "China's method: natural_gas carbon_content" in reason
    assert "IPCC 2006: natural_gas calorific value per volume" in reason
    assert "NCV is not per volume" in reason
    assert "density" in reason


def test_a_missing_per_tj_factor_or_gwp_value_is_named() -> None:
    with pytest.raises(FactorError, match="diesel N2O per TJ"):
        ipcc_coefficient([*IPCC_DIESEL[:3], *GWPS], site(GwpSet.AR5), DAY, QuantityUnit.KG)
    with pytest.raises(FactorError, match="no AR6 GWP for CH4_non_fossil"):
        ipcc_coefficient([*IPCC_DIESEL, *GWPS[:3], GWPS[4]], site(GwpSet.AR6), DAY, QuantityUnit.KG)
