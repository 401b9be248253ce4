"""Scope 1: direct emissions from burning fuel, by China's method or IPCC 2006 Tier 1.

China's method (GB/T 32150 and the sector accounting guidelines):

    kgCO2 = quantity x net calorific value x carbon content per unit of heat
            x oxidation fraction x 44/12

IPCC 2006 Tier 1 (Vol. 2, ch. 2), per gas, with oxidation already inside the default factor:

    heat (TJ) = quantity x net calorific value
    kg gas    = heat x factor (kg/TJ)          for CO2, CH4 and N2O
    kgCO2e    = kgCO2 + kgCH4 x GWP(CH4) + kgN2O x GWP(N2O)

with the GWP set (AR5 or AR6) the organisation reports with. Units are converted through
``carbonflow.emissions.units``; a quantity by mass with a calorific value per volume (or the
reverse) is refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from carbonflow.emissions.errors import FactorInputError
from carbonflow.emissions.factors import (
    CarbonContent,
    FuelQuantity,
    GwpSet,
    NetCalorificValue,
    OxidationFraction,
    PerTjFactor,
    check_coverage,
)
from carbonflow.emissions.results import EmissionRow, GasAmount, Method, unique_refs
from carbonflow.emissions.units import CO2_PER_C, GJ_PER_TJ, Gas


@dataclass(frozen=True, slots=True)
class ChinaFuelParameters:
    """The three parameters of one fuel under China's method."""

    ncv: NetCalorificValue
    carbon_content: CarbonContent
    oxidation: OxidationFraction


@dataclass(frozen=True, slots=True)
class IpccFuelFactors:
    """IPCC default net calorific value and per-TJ factors of one fuel."""

    ncv: NetCalorificValue
    co2: PerTjFactor
    ch4: PerTjFactor
    n2o: PerTjFactor

    def __post_init__(self) -> None:
        for factor, gas in ((self.co2, Gas.CO2), (self.ch4, Gas.CH4), (self.n2o, Gas.N2O)):
            if factor.gas is not gas:
                raise FactorInputError(f"{factor.ref} is a {factor.gas} factor, {gas} expected")


def heat_gj(quantity: FuelQuantity, ncv: NetCalorificValue) -> float:
    """Heat released by ``quantity`` of fuel, in GJ; refuses a mass/volume mismatch."""
    if quantity.unit.basis is not ncv.unit.basis:
        raise FactorInputError(
            f"{ncv.ref}: calorific value in {ncv.unit} does not fit a fuel quantity in "
            f"{quantity.unit} ({ncv.unit.basis} vs {quantity.unit.basis} basis)"
        )
    return quantity.unit.to_base(quantity.amount) * ncv.unit.to_gj_per_base(ncv.value)


def scope1_china(
    quantity: FuelQuantity, fuel: ChinaFuelParameters, *, coverage: float
) -> EmissionRow:
    """CO2 from burning ``quantity`` of a fuel, by China's accounting method."""
    check_coverage(coverage)
    kg_carbon = (
        heat_gj(quantity, fuel.ncv)
        * fuel.carbon_content.unit.to_kg_c_per_gj(fuel.carbon_content.value)
        * fuel.oxidation.value
    )
    kg_co2 = kg_carbon * CO2_PER_C
    return EmissionRow(
        method=Method.SCOPE1_CN,
        kg_co2e=kg_co2,
        gases=(GasAmount(Gas.CO2, kg_co2, kg_co2),),
        factors=unique_refs(fuel.ncv.ref, fuel.carbon_content.ref, fuel.oxidation.ref),
        coverage=coverage,
    )


def scope1_ipcc(
    quantity: FuelQuantity, fuel: IpccFuelFactors, gwp: GwpSet, *, coverage: float
) -> EmissionRow:
    """CO2, CH4 and N2O from burning ``quantity`` of a fuel, by IPCC 2006 Tier 1."""
    check_coverage(coverage)
    heat_tj = heat_gj(quantity, fuel.ncv) / GJ_PER_TJ
    kg_co2 = heat_tj * fuel.co2.unit.to_kg_per_tj(fuel.co2.value)
    kg_ch4 = heat_tj * fuel.ch4.unit.to_kg_per_tj(fuel.ch4.value)
    kg_n2o = heat_tj * fuel.n2o.unit.to_kg_per_tj(fuel.n2o.value)
    gases = (
        GasAmount(Gas.CO2, kg_co2, kg_co2),
        GasAmount(Gas.CH4, kg_ch4, kg_ch4 * gwp.ch4.value),
        GasAmount(Gas.N2O, kg_n2o, kg_n2o * gwp.n2o.value),
    )
    return EmissionRow(
        method=Method.SCOPE1_IPCC,
        kg_co2e=sum(g.kg_co2e for g in gases),
        gases=gases,
        factors=unique_refs(
            fuel.ncv.ref, fuel.co2.ref, fuel.ch4.ref, fuel.n2o.ref, gwp.ch4.ref, gwp.n2o.ref
        ),
        coverage=coverage,
    )
