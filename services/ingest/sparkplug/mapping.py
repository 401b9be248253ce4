"""Sparkplug metric names onto the platform's metrics, and their values onto canonical units.

Third-party edge nodes name their metrics as they like; CarbonFlow stores a fixed set of
metrics in canonical SI units (``schemas.METRIC_UNITS``). A Sparkplug metric becomes a
reading when its name resolves, in this order, through:

1. the exact names configured for the deployment (``CARBONFLOW_INGEST_SPARKPLUG_METRICS``, a
   JSON object), each with the unit the node publishes it in, for instance
   ``{"Meter 1/Total kW": {"metric": "active_power", "unit": "kW"}}``;
2. the built-in table ``COMMON_NAMES`` of widespread names, compared after normalising the
   name (lower case, every run of other characters becomes one ``_``, and a unit written in
   brackets at the end is taken off), so "Active Power [kW]", "active-power" and
   "ActivePower" are all found. The canonical names themselves (``active_power``...) are in it.

Names in folders ("Line 3/Press/Active Power") are not guessed from their last part: two
folders may hold the same name (phase A and phase B voltage), and mixing them up would be
silent. Configure those exactly (1).

The unit a value is in comes from, in this order: the configured unit (1); the metric's
engineering-unit property in its birth (``engUnit``, ``engUnits``, ``EngUnit`` or ``unit``);
a unit in brackets at the end of the name ("Active Power [kW]"); else the canonical unit.
``UNIT_CONVERSIONS`` turns it into the canonical unit; a unit it does not list for that metric
is a ``unit_mismatch``, a name that does not resolve an ``unknown_metric``, as for JSON
telemetry. Metrics of the Sparkplug control namespaces (``Node Control/...``,
``Device Control/...``, ``Properties/...``, ``bdSeq``) are protocol, not measurements: skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict, field_validator

from schemas import METRIC_UNITS, DeadLetterReason

CONTROL_PREFIXES: Final = ("Node Control/", "Device Control/", "Properties/")
CONTROL_NAMES: Final = frozenset({"bdSeq"})
UNIT_PROPERTIES: Final = ("engUnit", "engUnits", "EngUnit", "unit")


@dataclass(frozen=True, slots=True)
class Linear:
    """canonical = value * scale + offset"""

    scale: float
    offset: float = 0.0

    def __call__(self, value: float) -> float:
        return value * self.scale + self.offset


#: For each canonical unit, the units accepted for it and how to convert them.
UNIT_CONVERSIONS: Final[Mapping[str, Mapping[str, Linear]]] = {
    "W": {"W": Linear(1), "kW": Linear(1e3), "KW": Linear(1e3), "MW": Linear(1e6)},
    "var": {
        "var": Linear(1),
        "VAr": Linear(1),
        "VAR": Linear(1),
        "kvar": Linear(1e3),
        "kVAr": Linear(1e3),
        "kVAR": Linear(1e3),
        "Mvar": Linear(1e6),
        "MVAr": Linear(1e6),
    },
    "VA": {"VA": Linear(1), "kVA": Linear(1e3), "KVA": Linear(1e3), "MVA": Linear(1e6)},
    "Wh": {
        "Wh": Linear(1),
        "kWh": Linear(1e3),
        "KWh": Linear(1e3),
        "MWh": Linear(1e6),
        "GWh": Linear(1e9),
    },
    "V": {"V": Linear(1), "kV": Linear(1e3), "KV": Linear(1e3), "mV": Linear(1e-3)},
    "A": {"A": Linear(1), "kA": Linear(1e3), "mA": Linear(1e-3)},
    "1": {"1": Linear(1), "": Linear(1), "%": Linear(0.01)},
    "Hz": {"Hz": Linear(1)},
    "m3": {"m3": Linear(1), "m³": Linear(1), "m^3": Linear(1), "L": Linear(1e-3)},
    "K": {"K": Linear(1), "°C": Linear(1, 273.15), "degC": Linear(1, 273.15)},
}

#: Widespread metric names (normalised) -> canonical metric. Unit-like names ("kW") are left
#: out on purpose: the name alone must not decide a factor of 1000.
COMMON_NAMES: Final[Mapping[str, str]] = {
    **{metric: metric for metric in METRIC_UNITS},
    **dict.fromkeys(
        ("activepower", "power", "real_power", "total_active_power", "active_power_total"),
        "active_power",
    ),
    **dict.fromkeys(
        ("reactivepower", "total_reactive_power", "reactive_power_total"), "reactive_power"
    ),
    **dict.fromkeys(
        ("apparentpower", "total_apparent_power", "apparent_power_total"), "apparent_power"
    ),
    **dict.fromkeys(
        (
            "energy",
            "active_energy",
            "activeenergy",
            "energy_import",
            "import_active_energy",
            "active_energy_imported",
            "total_active_energy",
            "total_import_active_energy",
        ),
        "active_energy_import",
    ),
    **dict.fromkeys(("voltage_avg", "average_voltage"), "voltage"),
    **dict.fromkeys(("current_avg", "average_current"), "current"),
    **dict.fromkeys(("powerfactor", "pf", "cos_phi", "total_power_factor"), "power_factor"),
    **dict.fromkeys(("freq",), "frequency"),
    **dict.fromkeys(("gas", "gasvolume", "gas_volume_total"), "gas_volume"),
    **dict.fromkeys(("temp",), "temperature"),
}

_BRACKETED_UNIT = re.compile(r"^(?P<name>.*?)\s*[\[(](?P<unit>[^\[\]()]*)[\])]\s*$")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


class ConfiguredMetric(BaseModel):
    """One deployment-specific Sparkplug metric name and what it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str
    unit: str | None = None  # the unit the node publishes in; default: the metric's own

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRIC_UNITS:
            raise ValueError(f"{metric!r} is not one of {sorted(METRIC_UNITS)}")
        return metric


@dataclass(frozen=True, slots=True)
class Mapped:
    metric: str
    unit: str  # canonical
    convert: Linear


@dataclass(frozen=True, slots=True)
class Unmapped:
    reason: DeadLetterReason  # unknown_metric or unit_mismatch
    detail: str


def is_control_metric(name: str) -> bool:
    """True for Sparkplug protocol metrics, which are never readings."""
    return name in CONTROL_NAMES or name.startswith(CONTROL_PREFIXES)


def normalise(name: str) -> str:
    return _NON_ALNUM.sub("_", name.lower()).strip("_")


class MetricMapper:
    """Resolves Sparkplug metric names (and their units) onto canonical metrics."""

    def __init__(self, configured: Mapping[str, ConfiguredMetric] | None = None) -> None:
        self._configured = dict(configured or {})
        for entry in self._configured.values():
            if entry.unit is not None:
                self._conversion(entry.metric, entry.unit)  # fail at start-up, not per message

    def resolve(self, name: str, declared_unit: str | None) -> Mapped | Unmapped:
        """Map metric ``name`` whose birth declared ``declared_unit`` (or None)."""
        unit = declared_unit
        if (entry := self._configured.get(name)) is not None:
            metric = entry.metric
            unit = entry.unit if entry.unit is not None else unit
        else:
            bare, bracketed = _split_unit(name)
            found = COMMON_NAMES.get(normalise(bare))
            if found is None:
                detail = f"metric {name!r} maps to no known metric"
                return Unmapped(DeadLetterReason.UNKNOWN_METRIC, detail)
            metric = found
            unit = unit if unit is not None else bracketed
        canonical = METRIC_UNITS[metric]
        try:
            convert = self._conversion(metric, canonical if unit is None else unit)
        except ValueError as exc:
            return Unmapped(DeadLetterReason.UNIT_MISMATCH, f"metric {name!r}: {exc}")
        return Mapped(metric, canonical, convert)

    @staticmethod
    def _conversion(metric: str, unit: str) -> Linear:
        canonical = METRIC_UNITS[metric]
        convert = UNIT_CONVERSIONS.get(canonical, {}).get(unit.strip())
        if convert is None:
            accepted = ", ".join(repr(u) for u in UNIT_CONVERSIONS.get(canonical, {canonical: 0}))
            raise ValueError(
                f"unit {unit!r} cannot be converted to {metric}; use one of {accepted}"
            )
        return convert


def _split_unit(name: str) -> tuple[str, str | None]:
    match = _BRACKETED_UNIT.match(name)
    if match is None or not match["name"]:
        return name, None
    return match["name"], match["unit"].strip()


def declared_unit(properties: Mapping[str, object]) -> str | None:
    """The engineering unit a metric's properties declare, if any."""
    for key in UNIT_PROPERTIES:
        value = properties.get(key)
        if isinstance(value, str):
            return value
    return None
