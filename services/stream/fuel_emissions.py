"""Scope 1 emissions of fuel intervals by China's method, minute by minute (pure).

    kgCO2 = quantity x net calorific value x carbon content x oxidation fraction x 44/12

Each fuel device takes the three parameters of its carrier (``natural_gas``, ...) for its
site's local calendar day, each looked up on its own with ``carbonflow.factors.selection``
(grid region, then country, then global; a proxy when nothing is in force that day). The
formula is ``carbonflow.emissions.scope1_china``, evaluated once per device and day for one
unit of fuel: it is linear in the quantity, so the per-day coefficient (kgCO2 per Nm3)
becomes a piecewise-constant series per device and the emissions kernel multiplies, as for
Scope 2.

Units: a ``gas_volume`` register counts m3, and they are taken to be normal cubic metres
(0 degC, 101.325 kPa), the basis China's calorific values for gas are published on (per
10^4 Nm3). A meter that reports uncorrected volume needs a volume converter upstream.

Lineage: every row names all three factor versions (``lineage``, sorted by factor id); its
primary factor (``factor_id``/``factor_version``) is the carbon content, the parameter that
makes the fuel a CO2 source. A row is flagged ``proxy`` when any of the three is one. Minutes
no complete parameter set can price are returned as such, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np

from carbonflow.emissions import (
    CarbonContent,
    EmissionsError,
    FactorRef,
    FuelQuantity,
    NetCalorificValue,
    OxidationFraction,
)
from carbonflow.emissions.results import Method
from carbonflow.emissions.scope1 import ChinaFuelParameters, scope1_china
from carbonflow.emissions.units import CarbonContentUnit, NcvUnit, QuantityUnit
from carbonflow.factors.codes import Parameter
from carbonflow.factors.errors import FactorError
from carbonflow.factors.selection import FactorMatch, FactorVersion, region_chain, select
from services.stream.counter_routes import FuelIntervals
from services.stream.emission_kernels import NO_FACTOR, emissions_by_interval
from services.stream.emissions import DeviceSite, Unpriced
from services.stream.local_days import local_days, local_midnight_minute, minutes_on

SCOPE1 = "scope1"
CHINA_METHOD = Method.SCOPE1_CN.value
#: The parameters China's method needs, per carrier.
CHINA_PARAMETERS = (Parameter.NCV, Parameter.CARBON_CONTENT, Parameter.OXIDATION_FRACTION)
#: What a fuel register's unit is priced as (see the module docstring).
PRICED_AS: dict[str, QuantityUnit] = {"m3": QuantityUnit.NM3, "Nm3": QuantityUnit.NM3}

# Registry canonical units (carbonflow/factors/units.py) -> the calculation's units, with
# the scale between them. Volume bases other than Nm3 (m3 at standard conditions, litres)
# are refused rather than mixed with normal cubic metres.
_NCV_UNITS: dict[str, tuple[NcvUnit, Decimal]] = {
    "GJ/t": (NcvUnit.GJ_PER_T, Decimal(1)),
    "GJ/Nm3": (NcvUnit.GJ_PER_TEN_THOUSAND_NM3, Decimal(10_000)),
}
_CARBON_CONTENT_UNITS: dict[str, CarbonContentUnit] = {"kgC/TJ": CarbonContentUnit.KG_C_PER_TJ}


@dataclass(frozen=True, slots=True)
class FuelEmissionRows:
    """Columns of emissions_1m rows of Scope 1; ``lineage[i]``: every factor version used."""

    scope: str
    method: str
    device_id: list[str]
    minute: list[int]
    factor_id: list[str]
    factor_version: list[int]
    proxy: list[bool]
    quantity: list[float]
    unit: list[str]
    kg_co2e: list[float]
    coverage: list[float]
    lineage: list[tuple[FactorRef, ...]]

    def __len__(self) -> int:
        return len(self.minute)


@dataclass(frozen=True, slots=True)
class DayCoefficient:
    """kgCO2 per unit of fuel of one device on one local day, and what it rests on."""

    kg_per_unit: float
    primary: FactorRef
    lineage: tuple[FactorRef, ...]
    proxy: bool


def china_coefficient(
    candidates: Sequence[FactorVersion], site: DeviceSite, day: date, unit: QuantityUnit
) -> DayCoefficient:
    """kgCO2 per ``unit`` of the site's fuel carrier on a local day, by China's method.

    ``candidates``: every version of the carrier's calorific value, carbon content and
    oxidation factors (standard variant) in any region. Raises ``FactorError`` when one is
    missing and ``EmissionsError`` when their units do not fit.
    """
    chain = region_chain(site.grid_region, site.country)
    found: dict[Parameter, FactorMatch] = {}
    for parameter in CHINA_PARAMETERS:
        of_kind = [c for c in candidates if c.carrier == site.carrier and c.parameter == parameter]
        try:
            found[parameter] = select(of_kind, chain, day)
        except FactorError as exc:
            raise FactorError(f"{site.carrier} {parameter.value}: {exc}") from exc
    parameters = ChinaFuelParameters(
        ncv=_ncv(found[Parameter.NCV].factor),
        carbon_content=_carbon_content(found[Parameter.CARBON_CONTENT].factor),
        oxidation=OxidationFraction(
            _ref(found[Parameter.OXIDATION_FRACTION].factor),
            float(found[Parameter.OXIDATION_FRACTION].factor.value),
        ),
    )
    row = scope1_china(FuelQuantity(1.0, unit), parameters, coverage=1.0)
    return DayCoefficient(
        kg_per_unit=row.kg_co2e,
        primary=parameters.carbon_content.ref,
        lineage=tuple(sorted(row.factors)),
        proxy=any(match.proxy for match in found.values()),
    )


def scope1_china_minutes(
    fuel: FuelIntervals,
    sites: Mapping[str, DeviceSite],
    candidates: Sequence[FactorVersion],
) -> tuple[FuelEmissionRows, list[Unpriced]]:
    """Scope 1 emissions of the fuel intervals; minutes of devices without a site or with a
    unit that cannot be priced, and days without a complete parameter set, come back
    unpriced with the reason."""
    order: dict[str, list[int]] = {}
    unpriced: list[Unpriced] = []
    for index, device_id in enumerate(fuel.device_id):
        order.setdefault(device_id, []).append(index)
    devices: list[str] = []
    for device_id in sorted(order):
        unit = fuel.unit[order[device_id][0]]
        problem = (
            "the device is not registered at a site"
            if device_id not in sites
            else f"a fuel quantity in {unit} cannot be priced"
            if unit not in PRICED_AS
            else ""
        )
        if problem:
            own_minutes = [fuel.minute[i] for i in order[device_id]]
            day = datetime.fromtimestamp(min(own_minutes) * 60, UTC).date()
            unpriced.append(Unpriced(device_id, day, len(own_minutes), problem))
            continue
        devices.append(device_id)

    rows = np.fromiter((i for d in devices for i in order[d]), dtype=np.int64)
    minutes = np.asarray(fuel.minute, dtype=np.int64)[rows]
    quantity = np.asarray(fuel.quantity, dtype=np.float64)[rows]
    interval_starts = np.zeros(len(devices) + 1, dtype=np.int64)
    np.cumsum([len(order[d]) for d in devices], out=interval_starts[1:])

    coefficients: list[DayCoefficient] = []
    bp_minute: list[int] = []
    bp_value: list[float] = []
    bp_factor: list[int] = []
    bp_starts = [0]
    for g, device_id in enumerate(devices):
        site = sites[device_id]
        zone = ZoneInfo(site.timezone)
        unit = PRICED_AS[fuel.unit[order[device_id][0]]]
        own = minutes[interval_starts[g] : interval_starts[g + 1]]
        for day in local_days(own, zone):
            bp_minute.append(local_midnight_minute(day, zone))
            try:
                coefficient = china_coefficient(candidates, site, day, unit)
            except (FactorError, EmissionsError) as exc:
                count = minutes_on(own, day, zone)
                unpriced.append(Unpriced(device_id, day, count, str(exc)))
                bp_value.append(float("nan"))
                bp_factor.append(NO_FACTOR)
                continue
            bp_value.append(coefficient.kg_per_unit)
            bp_factor.append(len(coefficients))
            coefficients.append(coefficient)
        bp_starts.append(len(bp_minute))
    result = emissions_by_interval(
        minutes,
        quantity,
        interval_starts,
        np.asarray(bp_minute, dtype=np.int64),
        np.asarray(bp_value, dtype=np.float64),
        np.asarray(bp_factor, dtype=np.int64),
        np.asarray(bp_starts, dtype=np.int64),
    )
    priced = result.factor_index != NO_FACTOR
    group_of = np.repeat(np.arange(len(devices)), np.diff(interval_starts))
    used = [coefficients[i] for i in result.factor_index[priced].tolist()]
    return (
        FuelEmissionRows(
            scope=SCOPE1,
            method=CHINA_METHOD,
            device_id=[devices[g] for g in group_of[priced].tolist()],
            minute=minutes[priced].tolist(),
            factor_id=[c.primary.factor_id for c in used],
            factor_version=[c.primary.version for c in used],
            proxy=[c.proxy for c in used],
            quantity=quantity[priced].tolist(),
            unit=[PRICED_AS[fuel.unit[i]].value for i in rows[priced].tolist()],
            kg_co2e=result.kg_co2e[priced].tolist(),
            coverage=np.asarray(fuel.coverage, dtype=np.float64)[rows][priced].tolist(),
            lineage=[c.lineage for c in used],
        ),
        unpriced,
    )


def _ref(factor: FactorVersion) -> FactorRef:
    return FactorRef(factor.factor_id, factor.version)


def _ncv(factor: FactorVersion) -> NetCalorificValue:
    if factor.unit not in _NCV_UNITS:
        raise FactorError(f"{factor.factor_id}: a calorific value in {factor.unit} is not used")
    unit, scale = _NCV_UNITS[factor.unit]
    return NetCalorificValue(_ref(factor), float(factor.value * scale), unit)


def _carbon_content(factor: FactorVersion) -> CarbonContent:
    if factor.unit not in _CARBON_CONTENT_UNITS:
        raise FactorError(f"{factor.factor_id}: a carbon content in {factor.unit} is not used")
    return CarbonContent(_ref(factor), float(factor.value), _CARBON_CONTENT_UNITS[factor.unit])
