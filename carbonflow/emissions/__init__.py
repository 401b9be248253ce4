"""Emissions calculation methods: pure domain code (no I/O, no clock, no environment).

* Scope 1 from fuel quantities: China's method (``scope1_china``) and IPCC 2006 Tier 1 with a
  chosen GWP set (``scope1_ipcc``).
* Scope 2 location-based from a period-average grid factor (``scope2_location_annual``) or an
  hourly grid-intensity series (``scope2_location_hourly``; import format in
  ``grid_series``).
* Scope 2 market-based from contractual instruments and a residual mix
  (``allocate_market_based``).

Every result is an ``EmissionRow``: method, per-gas amounts, total kgCO2e, the id and version
of every factor used, and the coverage of the input interval.
"""

from carbonflow.emissions.errors import (
    AllocationError,
    EmissionsError,
    FactorInputError,
    FormatProblem,
    GridSeriesFormatError,
    MissingFactorError,
)
from carbonflow.emissions.factors import (
    CarbonContent,
    FactorRef,
    FuelQuantity,
    GridFactor,
    GwpSet,
    GwpValue,
    NetCalorificValue,
    OxidationFraction,
    PerTjFactor,
)
from carbonflow.emissions.grid_series import (
    GridIntensityFile,
    HourGap,
    HourlyGridSeries,
    HourlyIntensity,
    parse_grid_intensity_csv,
)
from carbonflow.emissions.results import EmissionRow, GasAmount, Method
from carbonflow.emissions.scope1 import (
    ChinaFuelParameters,
    IpccFuelFactors,
    scope1_china,
    scope1_ipcc,
)
from carbonflow.emissions.scope2_location import scope2_location_annual, scope2_location_hourly
from carbonflow.emissions.scope2_market import (
    Allocation,
    ConsumptionInterval,
    ContractualInstrument,
    InstrumentKind,
    InstrumentUse,
    MarketBasedResult,
    MarketIntervalResult,
    allocate_market_based,
)
from carbonflow.emissions.units import (
    CarbonContentUnit,
    Gas,
    IntensityUnit,
    NcvUnit,
    PerEnergyUnit,
    QuantityUnit,
)

__all__ = [
    "Allocation",
    "AllocationError",
    "CarbonContent",
    "CarbonContentUnit",
    "ChinaFuelParameters",
    "ConsumptionInterval",
    "ContractualInstrument",
    "EmissionRow",
    "EmissionsError",
    "FactorInputError",
    "FactorRef",
    "FormatProblem",
    "FuelQuantity",
    "Gas",
    "GasAmount",
    "GridFactor",
    "GridIntensityFile",
    "GridSeriesFormatError",
    "GwpSet",
    "GwpValue",
    "HourGap",
    "HourlyGridSeries",
    "HourlyIntensity",
    "InstrumentKind",
    "InstrumentUse",
    "IntensityUnit",
    "IpccFuelFactors",
    "MarketBasedResult",
    "MarketIntervalResult",
    "Method",
    "MissingFactorError",
    "NcvUnit",
    "NetCalorificValue",
    "OxidationFraction",
    "PerEnergyUnit",
    "PerTjFactor",
    "QuantityUnit",
    "allocate_market_based",
    "parse_grid_intensity_csv",
    "scope1_china",
    "scope1_ipcc",
    "scope2_location_annual",
    "scope2_location_hourly",
]
