"""Unit normalisation of factor values: one canonical unit per kind of quantity.

Canonical units (value in the unit on the left of each arrow):

* mass of a substance per electrical-style energy (kWh, MWh) -> ``kg<S>/kWh``
* mass of a substance per heat-style energy (GJ, TJ)         -> ``kg<S>/TJ``
* mass of a substance per mass of fuel (kg, t, Gg)            -> ``kg<S>/kg``
* mass of a substance per volume (m3, Nm3, litre)             -> ``kg<S>/m3``, ``kg<S>/Nm3``,
  ``kg<S>/L`` (normal and standard cubic metres are different references; never mixed)
* energy per mass (net calorific value)                       -> ``GJ/t`` (== TJ/Gg)
* energy per volume                                           -> ``GJ/Nm3``, ``GJ/m3``, ``GJ/L``
* a share                                                     -> ``fraction`` (``%`` / 100)

``<S>`` is the substance (CO2, CO2e, CH4, N2O, SF6, or C for carbon). A unit without one
(``kg/TJ``, ``lb/MWh``) takes the substance of the factor's gas. Arithmetic is decimal, so a
source value converts exactly. An unknown unit or qualifier raises ``UnknownUnitError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from carbonflow.factors.errors import UnknownUnitError

CalorificBasis = Literal["net", "gross"]

SUBSTANCES = ("CO2e", "CO2", "CH4", "N2O", "SF6", "C")

# Mass units in kg; the pound is defined as exactly 0.45359237 kg.
_MASS_KG: dict[str, Decimal] = {
    "g": Decimal("0.001"),
    "kg": Decimal(1),
    "t": Decimal(1000),
    "Gg": Decimal(10) ** 6,
    "lb": Decimal("0.45359237"),
}
# Energy: electrical style in kWh, heat style in GJ.
_ENERGY_KWH: dict[str, Decimal] = {"kWh": Decimal(1), "MWh": Decimal(1000)}
_ENERGY_GJ: dict[str, Decimal] = {"GJ": Decimal(1), "TJ": Decimal(1000)}
# Volume: (reference, amount of it).
_VOLUME: dict[str, tuple[str, Decimal]] = {
    "m3": ("m3", Decimal(1)),
    "Nm3": ("Nm3", Decimal(1)),
    "10^4 Nm3": ("Nm3", Decimal(10_000)),
    "10^4 m3": ("m3", Decimal(10_000)),
    "litre": ("L", Decimal(1)),
    "L": ("L", Decimal(1)),
}
# Parenthesised qualifiers seen in published units.
_QUALIFIERS: dict[str, CalorificBasis | None] = {
    "NCV basis": "net",
    "net CV": "net",
    "gross CV": "gross",
}

_MASS_NUMERATOR = re.compile(
    rf"(?P<mass>{'|'.join(_MASS_KG)})(?P<substance>{'|'.join(SUBSTANCES)})?"
)
_UNIT = re.compile(r"(?P<num>[^/()]+)/(?P<den>[^()]+?)\s*(?:\((?P<qualifier>[^)]*)\))?")


@dataclass(frozen=True)
class Normalised:
    """A value in its canonical unit, and the calorific basis the source unit named, if any."""

    value: Decimal
    unit: str
    calorific_basis: CalorificBasis | None = None


def normalise(value: Decimal, unit: str, substance: str | None = None) -> Normalised:
    """Convert ``value`` in ``unit`` to the canonical unit of its kind.

    ``substance`` is used when the unit names none (``kg/TJ`` of CH4 becomes ``kgCH4/TJ``);
    when the unit names one, it must agree.
    """
    text = unit.strip()
    if text == "fraction":
        return Normalised(value, "fraction")
    if text == "%":
        return Normalised(value / 100, "fraction")
    match = _UNIT.fullmatch(text)
    if match is None:
        raise UnknownUnitError(f"unknown unit {unit!r}")
    basis = _qualifier(match["qualifier"], unit)
    numerator, denominator = match["num"].strip(), match["den"].strip()
    mass = _MASS_NUMERATOR.fullmatch(numerator)
    if mass is not None:
        named = mass["substance"]
        if named is not None and substance is not None and named != substance:
            raise UnknownUnitError(f"unit {unit!r} is for {named}, not {substance}")
        what = named or substance
        if what is None:
            raise UnknownUnitError(f"unit {unit!r} names no substance and none was given")
        scaled, per = _per(value * _MASS_KG[mass["mass"]], denominator, unit, mass_per="kg")
        normalised = Normalised(scaled, f"kg{what}/{per}", basis)
    elif numerator in _ENERGY_GJ:
        scaled, per = _per(value * _ENERGY_GJ[numerator], denominator, unit, mass_per="t")
        if per in ("kWh", "TJ"):
            raise UnknownUnitError(f"energy per energy is not a factor unit: {unit!r}")
        normalised = Normalised(scaled, f"GJ/{per}", basis)
    else:
        raise UnknownUnitError(f"unknown numerator {numerator!r} in unit {unit!r}")
    _check_annotation(match["qualifier"], normalised.unit, unit)
    return normalised


def _per(amount: Decimal, denominator: str, unit: str, *, mass_per: str) -> tuple[Decimal, str]:
    """Divide ``amount`` by one ``denominator`` expressed in its canonical unit."""
    if denominator in _ENERGY_KWH:
        return amount / _ENERGY_KWH[denominator], "kWh"
    if denominator in _ENERGY_GJ:
        return amount / (_ENERGY_GJ[denominator] / 1000), "TJ"
    if denominator in _MASS_KG:
        per_kg = amount / _MASS_KG[denominator]
        return (per_kg * 1000, "t") if mass_per == "t" else (per_kg, "kg")
    if denominator in _VOLUME:
        reference, size = _VOLUME[denominator]
        return amount / size, reference
    raise UnknownUnitError(f"unknown denominator {denominator!r} in unit {unit!r}")


def _qualifier(qualifier: str | None, unit: str) -> CalorificBasis | None:
    if qualifier is None or qualifier.startswith("="):
        return None
    if qualifier.strip() not in _QUALIFIERS:
        raise UnknownUnitError(f"unknown qualifier ({qualifier}) in unit {unit!r}")
    return _QUALIFIERS[qualifier.strip()]


def _check_annotation(qualifier: str | None, canonical: str, unit: str) -> None:
    """A qualifier like ``(=GJ/t)`` restates the unit; it must agree with the conversion."""
    if qualifier is not None and qualifier.startswith("="):
        stated = normalise(Decimal(1), qualifier[1:].strip())
        if stated.unit != canonical or stated.value != 1:
            raise UnknownUnitError(f"unit {unit!r} contradicts its own annotation")
