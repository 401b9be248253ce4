"""Immutable inputs of the calculations: factor values that know their id, version and unit.

The factor registry maps its rows onto these types; the calculations only ever see these, so
every figure can name the exact factor versions behind it (``FactorRef``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from carbonflow.emissions.errors import FactorInputError
from carbonflow.emissions.units import (
    CarbonContentUnit,
    Gas,
    IntensityUnit,
    NcvUnit,
    PerEnergyUnit,
    QuantityUnit,
)


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise FactorInputError(f"{name} must be a finite number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    _finite(name, value)
    if value < 0:
        raise FactorInputError(f"{name} must not be negative, got {value!r}")


def check_coverage(coverage: float) -> float:
    """The fraction of an interval actually measured: a number in [0, 1]."""
    _finite("coverage", coverage)
    if not 0.0 <= coverage <= 1.0:
        raise FactorInputError(f"coverage must be within [0, 1], got {coverage!r}")
    return coverage


@dataclass(frozen=True, slots=True, order=True)
class FactorRef:
    """Identity of one version of a factor (restating a factor creates a new version)."""

    factor_id: str
    version: int

    def __post_init__(self) -> None:
        if not self.factor_id.strip():
            raise FactorInputError("factor_id must not be empty")
        if self.version < 1:
            raise FactorInputError(f"{self.factor_id}: version must be >= 1, got {self.version}")

    def __str__(self) -> str:
        return f"{self.factor_id}@v{self.version}"


@dataclass(frozen=True, slots=True)
class FuelQuantity:
    """An amount of fuel burnt, e.g. 2.5 t of coal or 1.2 x 10^4 Nm3 of natural gas."""

    amount: float
    unit: QuantityUnit

    def __post_init__(self) -> None:
        _non_negative("fuel quantity", self.amount)


@dataclass(frozen=True, slots=True)
class NetCalorificValue:
    """Heat released per unit of fuel (lower heating value)."""

    ref: FactorRef
    value: float
    unit: NcvUnit

    def __post_init__(self) -> None:
        _finite(str(self.ref), self.value)
        if self.value <= 0:
            raise FactorInputError(f"{self.ref}: net calorific value must be positive")


@dataclass(frozen=True, slots=True)
class CarbonContent:
    """Carbon per unit of heat (China: 单位热值含碳量)."""

    ref: FactorRef
    value: float
    unit: CarbonContentUnit

    def __post_init__(self) -> None:
        _non_negative(str(self.ref), self.value)


@dataclass(frozen=True, slots=True)
class OxidationFraction:
    """Share of the fuel's carbon oxidised to CO2 (China: 碳氧化率), a fraction in (0, 1]."""

    ref: FactorRef
    value: float

    def __post_init__(self) -> None:
        _finite(str(self.ref), self.value)
        if not 0.0 < self.value <= 1.0:
            raise FactorInputError(
                f"{self.ref}: oxidation fraction must be within (0, 1], got {self.value!r}"
                " (give a fraction, not a percentage)"
            )


@dataclass(frozen=True, slots=True)
class PerTjFactor:
    """Mass of one gas emitted per unit of heat, on a net calorific value basis (IPCC)."""

    ref: FactorRef
    gas: Gas
    value: float
    unit: PerEnergyUnit

    def __post_init__(self) -> None:
        _non_negative(str(self.ref), self.value)
        if self.gas is Gas.CO2E:
            raise FactorInputError(f"{self.ref}: a per-TJ factor is for one gas, not CO2e")


@dataclass(frozen=True, slots=True)
class GwpValue:
    """Global warming potential of one gas (kgCO2e per kg of the gas) from one assessment."""

    ref: FactorRef
    gas: Gas
    value: float

    def __post_init__(self) -> None:
        _finite(str(self.ref), self.value)
        if self.value <= 0:
            raise FactorInputError(f"{self.ref}: GWP must be positive")


@dataclass(frozen=True, slots=True)
class GwpSet:
    """The GWP values an organisation reports with, e.g. AR5 (CH4 28, N2O 265) or AR6.

    The values are inputs (from the factor registry), never constants in a formula. CO2 has
    a GWP of 1 by definition and needs no factor.
    """

    name: str  # e.g. "AR5", "AR6"
    ch4: GwpValue
    n2o: GwpValue

    def __post_init__(self) -> None:
        if self.ch4.gas is not Gas.CH4:
            raise FactorInputError(f"{self.ch4.ref}: GWP set {self.name} needs a CH4 value here")
        if self.n2o.gas is not Gas.N2O:
            raise FactorInputError(f"{self.n2o.ref}: GWP set {self.name} needs an N2O value here")


@dataclass(frozen=True, slots=True)
class GridFactor:
    """Emission intensity of electricity: annual/regional grid average, residual mix, ..."""

    ref: FactorRef
    value: float
    unit: IntensityUnit

    def __post_init__(self) -> None:
        _non_negative(str(self.ref), self.value)

    @property
    def kg_per_kwh(self) -> float:
        return self.unit.to_kg_per_kwh(self.value)

    @property
    def gas(self) -> Gas:
        return self.unit.gas
