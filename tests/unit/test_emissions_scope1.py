"""Scope 1 by China's method and IPCC 2006 Tier 1, on values from the project's factor data."""

from __future__ import annotations

import pytest

from carbonflow.emissions import (
    CarbonContent,
    CarbonContentUnit,
    ChinaFuelParameters,
    EmissionRow,
    FactorInputError,
    FactorRef,
    FuelQuantity,
    Gas,
    GwpSet,
    GwpValue,
    IpccFuelFactors,
    Method,
    NcvUnit,
    NetCalorificValue,
    OxidationFraction,
    PerEnergyUnit,
    PerTjFactor,
    QuantityUnit,
    scope1_china,
    scope1_ipcc,
)


def ref(factor_id: str, version: int = 1) -> FactorRef:
    return FactorRef(factor_id, version)


def co2e_of(row: EmissionRow, gas: Gas) -> float:
    (amount,) = [g for g in row.gases if g.gas is gas]
    return amount.kg_co2e


NATGAS_CN = ChinaFuelParameters(
    ncv=NetCalorificValue(ref("CN_FUEL_NATGAS_NCV"), 389.31, NcvUnit.GJ_PER_TEN_THOUSAND_NM3),
    carbon_content=CarbonContent(ref("CN_FUEL_NATGAS_CC"), 15.3, CarbonContentUnit.T_C_PER_TJ),
    oxidation=OxidationFraction(ref("CN_FUEL_NATGAS_OF"), 0.99),
)

AR5 = GwpSet(
    "AR5",
    ch4=GwpValue(ref("GWP_AR5_CH4"), Gas.CH4, 28.0),
    n2o=GwpValue(ref("GWP_AR5_N2O"), Gas.N2O, 265.0),
)
# GHG Protocol: combustion CH4 (fossil fuels included) takes AR6's non-fossil value.
AR6 = GwpSet(
    "AR6",
    ch4=GwpValue(ref("GWP_AR6_CH4_NONFOSSIL"), Gas.CH4, 27.0),
    n2o=GwpValue(ref("GWP_AR6_N2O"), Gas.N2O, 273.0),
)

DIESEL_IPCC = IpccFuelFactors(
    ncv=NetCalorificValue(ref("IPCC2006_DIESEL_NCV"), 43.0, NcvUnit.TJ_PER_GG),
    co2=PerTjFactor(ref("IPCC2006_DIESEL_CO2"), Gas.CO2, 74100.0, PerEnergyUnit.KG_PER_TJ),
    ch4=PerTjFactor(ref("IPCC2006_DIESEL_CH4_MANUF"), Gas.CH4, 3.0, PerEnergyUnit.KG_PER_TJ),
    n2o=PerTjFactor(ref("IPCC2006_DIESEL_N2O_MANUF"), Gas.N2O, 0.6, PerEnergyUnit.KG_PER_TJ),
)


def test_natural_gas_by_china_method() -> None:
    # 1 x 10^4 Nm3 x 389.31 GJ/10^4 Nm3             = 389.31 GJ
    # 389.31 GJ x 15.3 kgC/GJ (= tC/TJ)             = 5956.443 kgC
    # 5956.443 kgC x 0.99 oxidised                  = 5896.87857 kgC
    # 5896.87857 kgC x 44/12                        = 21621.88809 kgCO2
    row = scope1_china(FuelQuantity(1.0, QuantityUnit.TEN_THOUSAND_NM3), NATGAS_CN, coverage=0.75)
    assert row.kg_co2e == pytest.approx(21621.88809, rel=1e-12)
    assert row.kg_of(Gas.CO2) == row.kg_co2e
    assert row.method is Method.SCOPE1_CN
    assert row.coverage == 0.75
    assert row.factors == (
        ref("CN_FUEL_NATGAS_NCV"),
        ref("CN_FUEL_NATGAS_CC"),
        ref("CN_FUEL_NATGAS_OF"),
    )


@pytest.mark.parametrize(
    ("fuel", "ncv_gj_per_t", "tc_per_tj", "oxidised", "printed_kg_co2_per_kg"),
    [
        # (CN_FUEL_*_NCV, _CC, _OF) and the coefficient CN_FUEL_*_EF printed by the source
        ("raw coal", 20.908, 26.37, 0.94, 1.9003),
        ("fuel oil", 41.816, 21.1, 0.98, 3.1705),
        ("gasoline", 43.070, 18.9, 0.98, 2.9251),
        ("diesel", 42.652, 20.2, 0.98, 3.0959),
        ("LPG", 50.179, 17.2, 0.98, 3.1013),
    ],
)
def test_china_method_reproduces_the_printed_coefficients(
    fuel: str,
    ncv_gj_per_t: float,
    tc_per_tj: float,
    oxidised: float,
    printed_kg_co2_per_kg: float,
) -> None:
    params = ChinaFuelParameters(
        NetCalorificValue(ref(f"{fuel} NCV"), ncv_gj_per_t, NcvUnit.GJ_PER_T),
        CarbonContent(ref(f"{fuel} CC"), tc_per_tj, CarbonContentUnit.T_C_PER_TJ),
        OxidationFraction(ref(f"{fuel} OF"), oxidised),
    )
    row = scope1_china(FuelQuantity(1.0, QuantityUnit.T), params, coverage=1.0)
    # The source prints 4 decimals per kg, i.e. the per-tonne figure to within 0.05 kg.
    assert row.kg_co2e / 1000 == pytest.approx(printed_kg_co2_per_kg, abs=5e-5)


def test_natural_gas_coefficient_per_nm3_matches_the_printed_one() -> None:
    row = scope1_china(FuelQuantity(1.0, QuantityUnit.NM3), NATGAS_CN, coverage=1.0)
    assert row.kg_co2e == pytest.approx(2.1622, abs=5e-5)  # CN_FUEL_NATGAS_EF, kgCO2/Nm3


def test_equivalent_units_give_the_same_figure() -> None:
    expected = scope1_china(
        FuelQuantity(2.0, QuantityUnit.TEN_THOUSAND_NM3), NATGAS_CN, coverage=1.0
    ).kg_co2e
    respelled = ChinaFuelParameters(
        NetCalorificValue(ref("CN_FUEL_NATGAS_NCV"), 38.931, NcvUnit.MJ_PER_NM3),
        CarbonContent(ref("CN_FUEL_NATGAS_CC"), 15300.0, CarbonContentUnit.KG_C_PER_TJ),
        OxidationFraction(ref("CN_FUEL_NATGAS_OF"), 0.99),
    )
    row = scope1_china(FuelQuantity(20_000.0, QuantityUnit.NM3), respelled, coverage=1.0)
    assert row.kg_co2e == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(2 * 21621.88809, rel=1e-12)


def test_mass_quantity_with_volume_calorific_value_is_refused() -> None:
    with pytest.raises(FactorInputError, match=r"GJ/10\^4 Nm3 does not fit .* in t"):
        scope1_china(FuelQuantity(3.0, QuantityUnit.T), NATGAS_CN, coverage=1.0)


def test_oxidation_as_a_percentage_is_refused() -> None:
    with pytest.raises(FactorInputError, match="not a percentage"):
        OxidationFraction(ref("CN_FUEL_NATGAS_OF"), 99.0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_quantities_are_refused(bad: float) -> None:
    with pytest.raises(FactorInputError):
        FuelQuantity(bad, QuantityUnit.T)


def test_coverage_outside_unit_interval_is_refused() -> None:
    with pytest.raises(FactorInputError, match="coverage"):
        scope1_china(FuelQuantity(1.0, QuantityUnit.TEN_THOUSAND_NM3), NATGAS_CN, coverage=1.5)


def test_diesel_by_ipcc_tier1_under_ar5_and_ar6() -> None:
    # 10 t x 43.0 GJ/t = 430 GJ = 0.43 TJ
    # CO2: 0.43 TJ x 74100 kg/TJ = 31863 kg
    # CH4: 0.43 TJ x 3 kg/TJ     = 1.29 kg  -> AR5 x 28 = 36.12,  AR6 x 27 = 34.83
    # N2O: 0.43 TJ x 0.6 kg/TJ   = 0.258 kg -> AR5 x 265 = 68.37, AR6 x 273 = 70.434
    quantity = FuelQuantity(10.0, QuantityUnit.T)
    ar5 = scope1_ipcc(quantity, DIESEL_IPCC, AR5, coverage=1.0)
    ar6 = scope1_ipcc(quantity, DIESEL_IPCC, AR6, coverage=1.0)

    for row in (ar5, ar6):
        assert row.method is Method.SCOPE1_IPCC
        assert row.kg_of(Gas.CO2) == pytest.approx(31863.0)
        assert row.kg_of(Gas.CH4) == pytest.approx(1.29)
        assert row.kg_of(Gas.N2O) == pytest.approx(0.258)
    assert co2e_of(ar5, Gas.CH4) == pytest.approx(36.12)
    assert co2e_of(ar6, Gas.CH4) == pytest.approx(34.83)
    assert co2e_of(ar5, Gas.N2O) == pytest.approx(68.37)
    assert co2e_of(ar6, Gas.N2O) == pytest.approx(70.434)
    assert ar5.kg_co2e == pytest.approx(31863.0 + 36.12 + 68.37)
    assert ar6.kg_co2e == pytest.approx(31863.0 + 34.83 + 70.434)
    assert ar6.kg_co2e - ar5.kg_co2e == pytest.approx(0.774)

    assert ar5.factors[:4] == (
        ref("IPCC2006_DIESEL_NCV"),
        ref("IPCC2006_DIESEL_CO2"),
        ref("IPCC2006_DIESEL_CH4_MANUF"),
        ref("IPCC2006_DIESEL_N2O_MANUF"),
    )
    assert ar5.factors[4:] == (ref("GWP_AR5_CH4"), ref("GWP_AR5_N2O"))
    assert ar6.factors[4:] == (ref("GWP_AR6_CH4_NONFOSSIL"), ref("GWP_AR6_N2O"))


def test_ipcc_carbon_content_and_co2_factor_agree_through_china_formula() -> None:
    # IPCC2006_NATGAS_CC 15.3 kgC/GJ x 44/12 = 56.1 kgCO2/GJ = IPCC2006_NATGAS_CO2 56100 kg/TJ
    # (IPCC's default oxidation fraction is 1).
    quantity = FuelQuantity(5.0, QuantityUnit.T)
    ncv = NetCalorificValue(ref("IPCC2006_NATGAS_NCV"), 48.0, NcvUnit.TJ_PER_GG)
    by_carbon = scope1_china(
        quantity,
        ChinaFuelParameters(
            ncv,
            CarbonContent(ref("IPCC2006_NATGAS_CC"), 15.3, CarbonContentUnit.KG_C_PER_GJ),
            OxidationFraction(ref("unit oxidation"), 1.0),
        ),
        coverage=1.0,
    )
    by_factor = scope1_ipcc(
        quantity,
        IpccFuelFactors(
            ncv,
            PerTjFactor(ref("IPCC2006_NATGAS_CO2"), Gas.CO2, 56100.0, PerEnergyUnit.KG_PER_TJ),
            PerTjFactor(ref("IPCC2006_NATGAS_CH4_MANUF"), Gas.CH4, 1.0, PerEnergyUnit.KG_PER_TJ),
            PerTjFactor(ref("IPCC2006_NATGAS_N2O_MANUF"), Gas.N2O, 0.1, PerEnergyUnit.KG_PER_TJ),
        ),
        AR6,
        coverage=1.0,
    )
    # 5 t x 48 GJ/t = 240 GJ = 0.24 TJ; x 56100 kg/TJ = 13464 kgCO2
    assert by_factor.kg_of(Gas.CO2) == pytest.approx(13464.0)
    assert by_carbon.kg_co2e == pytest.approx(by_factor.kg_of(Gas.CO2), rel=1e-12)


def test_per_tj_factor_in_the_wrong_slot_is_refused() -> None:
    with pytest.raises(FactorInputError, match="CH4 expected"):
        IpccFuelFactors(DIESEL_IPCC.ncv, DIESEL_IPCC.co2, DIESEL_IPCC.n2o, DIESEL_IPCC.n2o)


def test_gwp_set_checks_its_gases() -> None:
    with pytest.raises(FactorInputError, match="CH4"):
        GwpSet("AR5", ch4=AR5.n2o, n2o=AR5.n2o)


def test_factor_versions_are_carried_into_the_lineage() -> None:
    restated = ChinaFuelParameters(
        NATGAS_CN.ncv,
        CarbonContent(ref("CN_FUEL_NATGAS_CC", 2), 15.32, CarbonContentUnit.T_C_PER_TJ),
        NATGAS_CN.oxidation,
    )
    row = scope1_china(FuelQuantity(1.0, QuantityUnit.TEN_THOUSAND_NM3), restated, coverage=1.0)
    assert ref("CN_FUEL_NATGAS_CC", 2) in row.factors
    assert str(row.factors[1]) == "CN_FUEL_NATGAS_CC@v2"
    assert row.kg_co2e == pytest.approx(389.31 * 15.32 * 0.99 * 44 / 12)
