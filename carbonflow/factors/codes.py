"""Machine keys of the factor data: region codes, carriers, gases, parameters, variants.

Region codes (``region_code``), derived from a published region label:

1. Keep the text before any parenthesis or Chinese name: ``CN-East (华东)`` -> ``CN-East``,
   ``CN-Anhui 安徽`` -> ``CN-Anhui``, ``US (national average)`` -> ``US``.
2. ``global ...`` becomes ``GLOBAL``; ``UK`` becomes ``GB`` (ISO 3166-1 alpha-2, as sites
   name their country); ``EU-27`` becomes ``EU27``.
3. What is left is an alpha-2 country code, or ``<alpha-2>-<Name>`` with the name's words
   capitalised and joined (``CN-Inner Mongolia`` -> ``CN-InnerMongolia``).

The qualifier a label drops (``utility-scale generation``) lives on as the factor's variant.
"""

from __future__ import annotations

import re
from enum import StrEnum

GLOBAL_REGION = "GLOBAL"
STANDARD_VARIANT = "standard"
NO_GAS = "none"
NO_CARRIER = "none"

_REGION_ALIASES = {"UK": "GB", "EU-27": "EU27"}


class Parameter(StrEnum):
    """What a factor's value measures."""

    EMISSION_FACTOR = "emission_factor"  # mass of a gas per unit of activity
    NCV = "ncv"  # net calorific value
    CARBON_CONTENT = "carbon_content"  # carbon per unit of heat
    OXIDATION_FRACTION = "oxidation_fraction"
    GWP = "gwp"  # global warming potential, kgCO2e per kg of the gas


class GwpSet(StrEnum):
    AR5 = "AR5"
    AR6 = "AR6"


# Published fuel / carrier labels -> the machine carrier key.
CARRIERS: dict[str, str] = {
    "electricity": "electricity",
    "electricity (T&D losses)": "electricity",
    "natural gas": "natural_gas",
    "natural gas 天然气": "natural_gas",
    "raw coal 原煤": "raw_coal",
    "other bituminous coal": "bituminous_coal",
    "sub-bituminous coal": "sub_bituminous_coal",
    "anthracite": "anthracite",
    "lignite": "lignite",
    "gas/diesel oil": "diesel",
    "diesel 柴油": "diesel",
    "diesel (average biofuel blend)": "diesel",
    # China's 燃料油 is residual fuel oil: same carbon content as the IPCC default.
    "residual fuel oil": "fuel_oil",
    "fuel oil 燃料油": "fuel_oil",
    "motor gasoline": "gasoline",
    "gasoline 汽油": "gasoline",
    "liquefied petroleum gases": "lpg",
    "LPG 液化石油气": "lpg",
    "LPG": "lpg",
    "": NO_CARRIER,  # GWP values apply to a gas, not to a carrier
}

# Published gas labels -> the machine gas key.
GASES: dict[str, str] = {
    "CO2": "CO2",
    "CO2e": "CO2e",
    "CH4": "CH4",
    "CH4 (fossil)": "CH4_fossil",
    "CH4 (non-fossil)": "CH4_non_fossil",
    "N2O": "N2O",
    "SF6": "SF6",
    "n/a": NO_GAS,
}

# Factors that are not the plain default of their kind, by factor id pattern; every other
# factor is "standard". A lookup names the variant it wants (default: standard).
VARIANTS: tuple[tuple[str, str], ...] = (
    (r"^CN_GRID_NATIONAL_EXCLMKT_", "excl_market_non_fossil"),
    (r"^CN_GRID_FOSSIL_", "fossil_generation"),
    (r"^CN_GRID_ETS_REPORTING_", "ets_reporting"),
    (r"^CN_ELEC_FOOTPRINT_", "life_cycle"),
    (r"^US_EIA_", "utility_generation"),
    (r"_ELEC_TD$", "td_losses"),
    # A factory is "manufacturing industries": those CH4 values are the standard ones.
    (r"_CH4_ENERGY$", "energy_industries"),
    (r"_KWH_GCV$", "gross_cv"),
)

_CJK_OR_PAREN = re.compile(r"[(\u3400-\u9fff]")
_CODE = re.compile(r"[A-Z]{2}(-[A-Z][A-Za-z0-9]*)?|GLOBAL|EU27")


def region_code(label: str) -> str:
    """The ASCII region code of a published region label (rule in the module docstring)."""
    head = _CJK_OR_PAREN.split(label, maxsplit=1)[0].strip()
    if head.casefold().startswith("global"):
        return GLOBAL_REGION
    head = _REGION_ALIASES.get(head, head)
    country, dash, name = head.partition("-")
    code = f"{country}-{''.join(w[:1].upper() + w[1:] for w in name.split())}" if dash else head
    if not is_region_code(code):
        raise ValueError(f"cannot derive a region code from {label!r}")
    return code


def is_region_code(code: str) -> bool:
    return _CODE.fullmatch(code) is not None


def variant_of(factor_id: str) -> str:
    for pattern, variant in VARIANTS:
        if re.search(pattern, factor_id):
            return variant
    return STANDARD_VARIANT


def gwp_set_of(factor_id: str) -> GwpSet:
    match = re.match(r"GWP_(AR\d)_", factor_id)
    if match is None:
        raise ValueError(f"a GWP factor id names its set (GWP_AR5_...): {factor_id!r}")
    return GwpSet(match[1])


def parameter_of(category: str, unit: str) -> Parameter:
    """What a factor measures follows from its category and the kind of its published unit."""
    if category == "gwp":
        return Parameter.GWP
    text = unit.strip()
    if text in ("fraction", "%"):
        return Parameter.OXIDATION_FRACTION
    numerator = text.split("/", 1)[0].strip()
    if numerator in ("GJ", "TJ"):
        return Parameter.NCV
    if re.fullmatch(r"(g|kg|t|lb)C", numerator):
        return Parameter.CARBON_CONTENT
    return Parameter.EMISSION_FACTOR
