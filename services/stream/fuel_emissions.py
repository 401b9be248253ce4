"""Scope 1 emissions of fuel intervals, minute by minute (pure).

Each fuel device is priced per local calendar day of its site, by one of two methods:

1. **China's method** (``scope1_cn``) when the site's region chain (grid region, then
   country, then global; ``carbonflow.factors.selection``) holds all three of its carrier's
   parameters for the day and their units fit the meter's:

       kgCO2 = quantity x net calorific value x carbon content x oxidation fraction x 44/12

2. Otherwise **IPCC 2006 Tier 1** (``scope1_ipcc``) when the chain holds a net calorific value
   on the meter's basis (per mass for a ``fuel_mass`` meter) and per-TJ CO2, CH4 and N2O
   factors of the carrier:

       kgCO2e = quantity x NCV x (CO2 + CH4 x GWP(CH4) + N2O x GWP(N2O))   [per TJ]

   The per-TJ factors are the standard variant, which for CH4 and N2O are IPCC's
   manufacturing industries and construction values (Vol. 2 Table 2.3, ids ``..._MANUF``):
   a factory burns its fuel under that category; the energy industries values (Table 2.2)
   are the ``energy_industries`` variant and are not used here. CH4 and N2O become CO2e with
   the GWP set of the device's organisation (``organisations.gwp_set``, AR5 or AR6); for CH4
   the set's combustion value (``carbonflow.factors.store.COMBUSTION_CH4``: AR5 CH4, AR6
   CH4_non_fossil). A GWP belongs to the chosen assessment, not to a day: the latest version
   of each value in the set applies, as ``carbonflow.factors.store.gwp`` answers.

3. Otherwise the day's minutes are unpriced, with both methods' reasons. A volume meter
   (``gas_volume``) is never priced by IPCC with a calorific value per mass: that needs the
   gas's density, which is not configured, so gas m3 outside China's parameter set stay
   unpriced unless a calorific value per volume is registered for the site's region.

Both formulas are linear in the quantity, so each device and day gets one coefficient (kg
per unit of fuel) and the emissions kernel multiplies, as for Scope 2.

Units: a ``gas_volume`` register counts m3, and they are taken to be normal cubic metres
(0 degC, 101.325 kPa), the basis China's calorific values for gas are published on (per
10^4 Nm3). A meter that reports uncorrected volume needs a volume converter upstream. A
``fuel_mass`` register counts kg.

Lineage: every row names all the factor versions it used (``lineage``, sorted by factor id):
three for China's method (calorific value, carbon content, oxidation), six for IPCC's
(calorific value, the three per-TJ factors and the two GWP values). Its primary factor
(``factor_id``/``factor_version``) is the one that makes the fuel a CO2 source: the carbon
content (China) or the CO2 per-TJ factor (IPCC). A row is flagged ``proxy`` when any of its
dated factors is one.
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
    GwpValue,
    IpccFuelFactors,
    NetCalorificValue,
    OxidationFraction,
    PerTjFactor,
)
from carbonflow.emissions import GwpSet as GwpValues
from carbonflow.emissions.results import Method
from carbonflow.emissions.scope1 import ChinaFuelParameters, scope1_china, scope1_ipcc
from carbonflow.emissions.units import (
    Basis,
    CarbonContentUnit,
    Gas,
    NcvUnit,
    PerEnergyUnit,
    QuantityUnit,
)
from carbonflow.factors.codes import GwpSet, Parameter
from carbonflow.factors.errors import FactorError
from carbonflow.factors.selection import (
    FactorMatch,
    FactorVersion,
    Level,
    region_chain,
    select,
)
from carbonflow.factors.store import COMBUSTION_CH4
from services.stream.counter_routes import FuelIntervals
from services.stream.emission_kernels import NO_FACTOR, emissions_by_interval
from services.stream.emissions import DeviceSite, Unpriced
from services.stream.local_days import local_days, local_midnight_minute, minutes_on

SCOPE1 = "scope1"
CHINA_METHOD = Method.SCOPE1_CN.value
IPCC_METHOD = Method.SCOPE1_IPCC.value
#: The parameters China's method needs, per carrier.
CHINA_PARAMETERS = (Parameter.NCV, Parameter.CARBON_CONTENT, Parameter.OXIDATION_FRACTION)
#: The parameters either method may need, per carrier (GWP values are per gas, not carrier).
FUEL_PARAMETERS = (*CHINA_PARAMETERS, Parameter.EMISSION_FACTOR)
#: The gases of IPCC's per-TJ factors.
IPCC_GASES = (Gas.CO2, Gas.CH4, Gas.N2O)
#: What a fuel register's unit is priced as (see the module docstring).
PRICED_AS: dict[str, QuantityUnit] = {
    "m3": QuantityUnit.NM3,
    "Nm3": QuantityUnit.NM3,
    "kg": QuantityUnit.KG,
}

# Registry canonical units (carbonflow/factors/units.py) -> the calculation's units, with
# the scale between them. Volume bases other than Nm3 (m3 at standard conditions, litres)
# are refused rather than mixed with normal cubic metres.
_NCV_UNITS: dict[str, tuple[NcvUnit, Decimal]] = {
    "GJ/t": (NcvUnit.GJ_PER_T, Decimal(1)),
    "GJ/Nm3": (NcvUnit.GJ_PER_TEN_THOUSAND_NM3, Decimal(10_000)),
}
_CARBON_CONTENT_UNITS: dict[str, CarbonContentUnit] = {"kgC/TJ": CarbonContentUnit.KG_C_PER_TJ}
_GWP_UNIT = "kgCO2e/kg"


@dataclass(frozen=True, slots=True)
class FuelEmissionRows:
    """Columns of emissions_1m rows of Scope 1; ``method[i]``: how row i was priced,
    ``lineage[i]``: every factor version used."""

    scope: str
    method: list[str]
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
    """kgCO2e per unit of fuel of one device on one local day, and what it rests on."""

    kg_per_unit: float
    method: str
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
        method=CHINA_METHOD,
        primary=parameters.carbon_content.ref,
        lineage=tuple(sorted(row.factors)),
        proxy=any(match.proxy for match in found.values()),
    )


def ipcc_coefficient(
    candidates: Sequence[FactorVersion], site: DeviceSite, day: date, unit: QuantityUnit
) -> DayCoefficient:
    """kgCO2e per ``unit`` of the site's fuel carrier on a local day, by IPCC 2006 Tier 1
    with the GWP set of the site's organisation.

    ``candidates``: every version of the carrier's calorific values and emission factors
    (standard variant) in any region, and the GWP values. Raises ``FactorError`` when a
    factor is missing (a calorific value on the quantity's basis included) and
    ``EmissionsError`` when units do not fit.
    """
    chain = region_chain(site.grid_region, site.country)
    ncv, ncv_match = _ncv_on_basis(candidates, site, chain, day, unit)
    per_tj: dict[Gas, PerTjFactor] = {}
    matches = [ncv_match]
    for gas in IPCC_GASES:
        of_kind = [
            c
            for c in candidates
            if c.carrier == site.carrier
            and c.parameter == Parameter.EMISSION_FACTOR
            and c.gas == gas.value
            and c.unit == f"kg{gas.value}/TJ"
        ]
        try:
            match = select(of_kind, chain, day)
        except FactorError as exc:
            raise FactorError(f"{site.carrier} {gas.value} per TJ: {exc}") from exc
        matches.append(match)
        per_tj[gas] = PerTjFactor(
            _ref(match.factor), gas, float(match.factor.value), PerEnergyUnit.KG_PER_TJ
        )
    fuel = IpccFuelFactors(ncv, per_tj[Gas.CO2], per_tj[Gas.CH4], per_tj[Gas.N2O])
    row = scope1_ipcc(
        FuelQuantity(1.0, unit), fuel, gwp_values(candidates, site.gwp_set), coverage=1.0
    )
    return DayCoefficient(
        kg_per_unit=row.kg_co2e,
        method=IPCC_METHOD,
        primary=fuel.co2.ref,
        lineage=tuple(sorted(row.factors)),
        proxy=any(match.proxy for match in matches),
    )


def gwp_values(candidates: Sequence[FactorVersion], gwp_set: GwpSet) -> GwpValues:
    """The CH4 (combustion) and N2O values of a GWP set: each one's latest version."""
    return GwpValues(
        gwp_set.value,
        ch4=_gwp(candidates, gwp_set, COMBUSTION_CH4[gwp_set], Gas.CH4),
        n2o=_gwp(candidates, gwp_set, Gas.N2O.value, Gas.N2O),
    )


def day_coefficient(
    candidates: Sequence[FactorVersion], site: DeviceSite, day: date, unit: QuantityUnit
) -> DayCoefficient:
    """The coefficient of the method that can price the device's day: China's, else IPCC's
    (rule in the module docstring). Raises ``FactorError`` with both reasons when neither."""
    try:
        return china_coefficient(candidates, site, day, unit)
    except (FactorError, EmissionsError) as china:
        try:
            return ipcc_coefficient(candidates, site, day, unit)
        except (FactorError, EmissionsError) as ipcc:
            raise FactorError(f"China's method: {china}; IPCC 2006: {ipcc}") from ipcc


def scope1_fuel_minutes(
    fuel: FuelIntervals,
    sites: Mapping[str, DeviceSite],
    candidates: Sequence[FactorVersion],
) -> tuple[FuelEmissionRows, list[Unpriced]]:
    """Scope 1 emissions of the fuel intervals; minutes of devices without a site or with a
    unit that cannot be priced, and days neither method can price, come back unpriced with
    the reason. ``candidates``: what ``day_coefficient`` needs (see ``FUEL_PARAMETERS``)."""
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
                coefficient = day_coefficient(candidates, site, day, unit)
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
            method=[c.method for c in used],
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


def _ncv_on_basis(
    candidates: Sequence[FactorVersion],
    site: DeviceSite,
    chain: Sequence[tuple[str, Level]],
    day: date,
    unit: QuantityUnit,
) -> tuple[NetCalorificValue, FactorMatch]:
    """The nearest calorific value of the carrier on the quantity's basis (mass or volume).

    One on the other basis would need the fuel's density, which is not configured: it is
    named in the error instead of being converted with a guessed density.
    """
    of_carrier = [
        c for c in candidates if c.carrier == site.carrier and c.parameter == Parameter.NCV
    ]
    fitting = [c for c in of_carrier if _ncv_basis(c) == unit.basis]
    try:
        match = select(fitting, chain, day)
    except FactorError as exc:
        other = sorted({c.factor_id for c in of_carrier if c not in fitting})
        density = (
            f" ({', '.join(other)} is not per {unit.basis}: a quantity in {unit} needs the"
            " fuel's density to use it, and none is configured)"
            if other
            else ""
        )
        raise FactorError(
            f"{site.carrier} calorific value per {unit.basis}: {exc}{density}"
        ) from exc
    return _ncv(match.factor), match


def _ncv_basis(factor: FactorVersion) -> Basis | None:
    known = _NCV_UNITS.get(factor.unit)
    return None if known is None else known[0].basis


def _gwp(candidates: Sequence[FactorVersion], gwp_set: GwpSet, key: str, gas: Gas) -> GwpValue:
    of_key = [
        c
        for c in candidates
        if c.parameter == Parameter.GWP and c.gwp_set == gwp_set.value and c.gas == key
    ]
    if not of_key:
        raise FactorError(f"no {gwp_set.value} GWP for {key}")
    if len({c.factor_id for c in of_key}) > 1:
        ids = ", ".join(sorted({c.factor_id for c in of_key}))
        raise FactorError(f"{gwp_set.value} GWP for {key} is ambiguous: {ids}")
    latest = max(of_key, key=lambda c: c.version)
    if latest.unit != _GWP_UNIT:
        raise FactorError(f"{latest.factor_id}: a GWP in {latest.unit}, not {_GWP_UNIT}")
    return GwpValue(_ref(latest), gas, float(latest.value))


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
