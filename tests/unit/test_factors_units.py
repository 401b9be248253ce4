"""Unit normalisation of factor values, checked against values worked out by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from carbonflow.factors.errors import UnknownUnitError
from carbonflow.factors.units import normalise


@pytest.mark.parametrize(
    ("value", "unit", "substance", "expected", "canonical"),
    [
        # 1 lb = 0.45359237 kg; per MWh -> per kWh divides by 1000 (eGRID: "=0.3734 kg/kWh").
        ("823.149", "lb/MWh", "CO2", "0.37337410577313", "kgCO2/kWh"),
        ("0.066", "lb/MWh", "CH4", "0.00002993709642", "kgCH4/kWh"),
        ("0.86", "lb/kWh", "CO2", "0.3900894382", "kgCO2/kWh"),
        ("384", "gCO2/kWh", None, "0.384", "kgCO2/kWh"),
        ("281", "gCO2e/kWh", "CO2e", "0.281", "kgCO2e/kWh"),
        ("0.5703", "tCO2/MWh", None, "0.5703", "kgCO2/kWh"),  # t/MWh == kg/kWh
        ("0.5568", "kgCO2/kWh", "CO2", "0.5568", "kgCO2/kWh"),
        ("26.37", "tC/TJ", "C", "26370", "kgC/TJ"),
        ("15.3", "kgC/GJ", "C", "15300", "kgC/TJ"),
        ("44.3", "TJ/Gg (=GJ/t)", None, "44.3", "GJ/t"),  # 10^3 GJ / 10^3 t
        ("20.908", "GJ/t", None, "20.908", "GJ/t"),
        ("389.31", "GJ/10^4 Nm3", None, "0.038931", "GJ/Nm3"),
        ("56100", "kg/TJ (NCV basis)", "CO2", "56100", "kgCO2/TJ"),
        ("1.5", "kg/TJ (NCV basis)", "N2O", "1.5", "kgN2O/TJ"),
        ("1.9003", "kgCO2/kg", "CO2", "1.9003", "kgCO2/kg"),
        ("2.1622", "kgCO2/Nm3", "CO2", "2.1622", "kgCO2/Nm3"),
        ("2.02633", "kgCO2e/m3", "CO2e", "2.02633", "kgCO2e/m3"),
        ("2.58354", "kgCO2e/litre", "CO2e", "2.58354", "kgCO2e/L"),
        ("28", "kgCO2e/kg", None, "28", "kgCO2e/kg"),
        ("0.94", "fraction", None, "0.94", "fraction"),
        ("98", "%", None, "0.98", "fraction"),
    ],
)
def test_published_units_convert_to_canonical_ones(
    value: str, unit: str, substance: str | None, expected: str, canonical: str
) -> None:
    normalised = normalise(Decimal(value), unit, substance)
    assert normalised.unit == canonical
    assert normalised.value == Decimal(expected)


def test_the_calorific_basis_of_a_unit_is_reported() -> None:
    assert normalise(Decimal("56100"), "kg/TJ (NCV basis)", "CO2").calorific_basis == "net"
    gross = normalise(Decimal("0.18231"), "kgCO2e/kWh (gross CV)", "CO2e")
    assert (gross.unit, gross.calorific_basis) == ("kgCO2e/kWh", "gross")
    assert normalise(Decimal("0.5"), "kgCO2/kWh", "CO2").calorific_basis is None


@pytest.mark.parametrize(
    ("unit", "substance", "complaint"),
    [
        ("kgCO2/mile", "CO2", "denominator"),
        ("furlongs", None, "unknown unit"),
        ("stoneCO2/kWh", "CO2", "numerator"),
        ("kgCO2/kWh (per fortnight)", "CO2", "qualifier"),
        ("kgCH4/TJ", "CO2", "is for CH4"),
        ("kg/TJ", None, "names no substance"),
        ("GJ/kWh", None, "energy per energy"),
        ("TJ/Gg (=GJ/kg)", None, "contradicts"),
    ],
)
def test_unknown_or_inconsistent_units_are_refused(
    unit: str, substance: str | None, complaint: str
) -> None:
    with pytest.raises(UnknownUnitError, match=complaint):
        normalise(Decimal(1), unit, substance)
