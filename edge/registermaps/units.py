"""Conversions from the units meters report in to the platform's canonical units.

Each canonical unit of :data:`schemas.telemetry.METRIC_UNITS` lists the source units a
register map may name for it, as ``canonical = source * factor + offset``. A unit missing
here cannot be converted, so a map naming it is rejected when it is loaded rather than
producing numbers in the wrong unit later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class UnitConversion:
    """``canonical = source * factor + offset``."""

    factor: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        return value * self.factor + self.offset


_SI_PREFIXED: Final = {"": 1.0, "k": 1e3, "M": 1e6}

#: Source units per canonical unit. Spelling is exact: "kW", not "KW" or "kw".
CONVERSIONS: Final[dict[str, dict[str, UnitConversion]]] = {
    "W": {f"{p}W": UnitConversion(f) for p, f in _SI_PREFIXED.items()},
    "var": {f"{p}var": UnitConversion(f) for p, f in _SI_PREFIXED.items()},
    "VA": {f"{p}VA": UnitConversion(f) for p, f in _SI_PREFIXED.items()},
    "Wh": {f"{p}Wh": UnitConversion(f) for p, f in _SI_PREFIXED.items()},
    "V": {"mV": UnitConversion(1e-3), "V": UnitConversion(1.0), "kV": UnitConversion(1e3)},
    "A": {"mA": UnitConversion(1e-3), "A": UnitConversion(1.0), "kA": UnitConversion(1e3)},
    "1": {"1": UnitConversion(1.0), "%": UnitConversion(1e-2)},
    "Hz": {"mHz": UnitConversion(1e-3), "Hz": UnitConversion(1.0)},
    "m3": {"m3": UnitConversion(1.0), "L": UnitConversion(1e-3)},
    "kg": {"g": UnitConversion(1e-3), "kg": UnitConversion(1.0), "t": UnitConversion(1e3)},
    "K": {"K": UnitConversion(1.0), "degC": UnitConversion(1.0, 273.15)},
}


def conversion(source_unit: str, canonical_unit: str) -> UnitConversion | None:
    """How to turn ``source_unit`` into ``canonical_unit``; None if it cannot be done."""
    return CONVERSIONS.get(canonical_unit, {}).get(source_unit)


def source_units(canonical_unit: str) -> list[str]:
    """The source units that convert to ``canonical_unit``, for error messages."""
    return list(CONVERSIONS.get(canonical_unit, {}))
