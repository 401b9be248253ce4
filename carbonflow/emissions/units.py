"""The units the calculations accept, each with its conversion to one working unit.

Factors arrive in the units their sources print (GJ/t, GJ/10^4 Nm3, tC/TJ, kg/TJ, ...). Each
enum below lists the spellings accepted and maps them to a single working unit, so a formula
never multiplies numbers whose units it has not checked:

* fuel quantity -> kg (mass) or Nm3 (volume)
* net calorific value -> GJ per kg or GJ per Nm3 (and its basis must match the quantity's)
* carbon content per unit of heat -> kgC/GJ (tC/TJ is numerically the same)
* gas emitted per unit of heat -> kg/TJ
* emission intensity of electricity -> kg per kWh of CO2 or CO2e
"""

from __future__ import annotations

from enum import StrEnum


class Gas(StrEnum):
    """A greenhouse gas, or CO2e for a figure that already folds gases together."""

    CO2 = "CO2"
    CH4 = "CH4"
    N2O = "N2O"
    CO2E = "CO2e"


class Basis(StrEnum):
    """What a fuel quantity measures: mass or volume at normal conditions."""

    MASS = "mass"
    VOLUME = "volume"


class QuantityUnit(StrEnum):
    """Unit of a fuel quantity."""

    KG = "kg"
    T = "t"
    NM3 = "Nm3"
    TEN_THOUSAND_NM3 = "10^4 Nm3"

    @property
    def basis(self) -> Basis:
        return _QUANTITY[self][0]

    def to_base(self, amount: float) -> float:
        """The amount in kg (mass) or Nm3 (volume)."""
        return amount * _QUANTITY[self][1]


_QUANTITY: dict[QuantityUnit, tuple[Basis, float]] = {
    QuantityUnit.KG: (Basis.MASS, 1.0),
    QuantityUnit.T: (Basis.MASS, 1e3),
    QuantityUnit.NM3: (Basis.VOLUME, 1.0),
    QuantityUnit.TEN_THOUSAND_NM3: (Basis.VOLUME, 1e4),
}


class NcvUnit(StrEnum):
    """Unit of a net calorific value (heat per unit of fuel)."""

    GJ_PER_T = "GJ/t"
    TJ_PER_GG = "TJ/Gg"  # IPCC's spelling of GJ/t
    MJ_PER_KG = "MJ/kg"
    KJ_PER_KG = "kJ/kg"
    GJ_PER_TEN_THOUSAND_NM3 = "GJ/10^4 Nm3"
    MJ_PER_NM3 = "MJ/Nm3"
    KJ_PER_NM3 = "kJ/Nm3"

    @property
    def basis(self) -> Basis:
        return _NCV[self][0]

    def to_gj_per_base(self, value: float) -> float:
        """The value in GJ per kg (mass basis) or GJ per Nm3 (volume basis)."""
        return value * _NCV[self][1]


_NCV: dict[NcvUnit, tuple[Basis, float]] = {
    NcvUnit.GJ_PER_T: (Basis.MASS, 1e-3),
    NcvUnit.TJ_PER_GG: (Basis.MASS, 1e-3),
    NcvUnit.MJ_PER_KG: (Basis.MASS, 1e-3),
    NcvUnit.KJ_PER_KG: (Basis.MASS, 1e-6),
    NcvUnit.GJ_PER_TEN_THOUSAND_NM3: (Basis.VOLUME, 1e-4),
    NcvUnit.MJ_PER_NM3: (Basis.VOLUME, 1e-3),
    NcvUnit.KJ_PER_NM3: (Basis.VOLUME, 1e-6),
}


class CarbonContentUnit(StrEnum):
    """Unit of carbon content per unit of heat."""

    T_C_PER_TJ = "tC/TJ"
    KG_C_PER_GJ = "kgC/GJ"
    KG_C_PER_TJ = "kgC/TJ"

    def to_kg_c_per_gj(self, value: float) -> float:
        return value * _CARBON_CONTENT[self]


_CARBON_CONTENT: dict[CarbonContentUnit, float] = {
    CarbonContentUnit.T_C_PER_TJ: 1.0,
    CarbonContentUnit.KG_C_PER_GJ: 1.0,
    CarbonContentUnit.KG_C_PER_TJ: 1e-3,
}


class PerEnergyUnit(StrEnum):
    """Unit of a gas emitted per unit of heat (IPCC default factors, NCV basis)."""

    KG_PER_TJ = "kg/TJ"
    G_PER_GJ = "g/GJ"
    KG_PER_GJ = "kg/GJ"
    T_PER_TJ = "t/TJ"

    def to_kg_per_tj(self, value: float) -> float:
        return value * _PER_ENERGY[self]


_PER_ENERGY: dict[PerEnergyUnit, float] = {
    PerEnergyUnit.KG_PER_TJ: 1.0,
    PerEnergyUnit.G_PER_GJ: 1.0,
    PerEnergyUnit.KG_PER_GJ: 1e3,
    PerEnergyUnit.T_PER_TJ: 1e3,
}


class IntensityUnit(StrEnum):
    """Unit of an emission intensity of electricity; names the gas basis (CO2 or CO2e)."""

    KG_CO2E_PER_KWH = "kgCO2e/kWh"
    G_CO2E_PER_KWH = "gCO2e/kWh"
    T_CO2E_PER_MWH = "tCO2e/MWh"
    KG_CO2_PER_KWH = "kgCO2/kWh"
    G_CO2_PER_KWH = "gCO2/kWh"
    T_CO2_PER_MWH = "tCO2/MWh"

    @property
    def gas(self) -> Gas:
        return _INTENSITY[self][0]

    def to_kg_per_kwh(self, value: float) -> float:
        return value * _INTENSITY[self][1]


_INTENSITY: dict[IntensityUnit, tuple[Gas, float]] = {
    IntensityUnit.KG_CO2E_PER_KWH: (Gas.CO2E, 1.0),
    IntensityUnit.G_CO2E_PER_KWH: (Gas.CO2E, 1e-3),
    IntensityUnit.T_CO2E_PER_MWH: (Gas.CO2E, 1.0),
    IntensityUnit.KG_CO2_PER_KWH: (Gas.CO2, 1.0),
    IntensityUnit.G_CO2_PER_KWH: (Gas.CO2, 1e-3),
    IntensityUnit.T_CO2_PER_MWH: (Gas.CO2, 1.0),
}

GJ_PER_TJ = 1e3
CO2_PER_C = 44.0 / 12.0  # molar mass of CO2 over that of carbon
