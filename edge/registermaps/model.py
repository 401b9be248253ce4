"""A meter's register map as data: where each metric lives and how to decode it.

Addresses are **protocol addresses**: the 0-based number sent in the Modbus request, the
same for holding and input registers. Manuals often print register *numbers* instead:
Modicon style (30001 is input register address 0, 40001 is holding register address 0) or
simply counting from 1. Subtract before writing them here; a map file's comments should say
which number of the manual each entry came from.

Validation reports every problem at the field it blames (``metrics.voltage.unit: ...``),
so a map file can be fixed in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    Field,
    model_validator,
)

from edge.registermaps.units import UnitConversion, conversion, source_units
from edge.tables import Loc, StrictTable
from schemas.telemetry import METRIC_UNITS

__all__ = [
    "CUMULATIVE_METRICS",
    "MAX_ADDRESS",
    "MODBUS_MAX_READ_REGISTERS",
    "REGISTER_COUNTS",
    "ByteOrder",
    "DataType",
    "MeterInfo",
    "MetricDefaults",
    "MetricKind",
    "MetricRegister",
    "ReadLimits",
    "RegisterMap",
    "RegisterType",
    "ScaleExponentRegister",
]

RegisterType: TypeAlias = Literal["holding", "input"]
DataType: TypeAlias = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"
]
ByteOrder: TypeAlias = Literal["big", "little"]
MetricKind: TypeAlias = Literal["instantaneous", "cumulative"]

MAX_ADDRESS: Final = 65535
#: The protocol's limit for one read of holding or input registers (function 3 or 4).
MODBUS_MAX_READ_REGISTERS: Final = 125
REGISTER_COUNTS: Final[dict[str, int]] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
#: Metrics that are counters (they only grow); every other metric is a momentary value.
CUMULATIVE_METRICS: Final = frozenset({"active_energy_import", "gas_volume", "fuel_mass"})

Address = Annotated[int, Field(ge=0, le=MAX_ADDRESS)]


def _known_metric(value: str) -> str:
    if value not in METRIC_UNITS:
        raise ValueError(f"unknown metric {value!r}; known metrics: {', '.join(METRIC_UNITS)}")
    return value


KnownMetric = Annotated[str, AfterValidator(_known_metric)]


class MeterInfo(StrictTable):
    """Which meter the map is for, and the manufacturer document it was taken from."""

    manufacturer: str = Field(min_length=1)
    model: str = Field(min_length=1)
    source: str = Field(min_length=1, description="Manufacturer document name and version")


class ReadLimits(StrictTable):
    """How the adapter may group registers into reads."""

    max_registers: int = Field(default=MODBUS_MAX_READ_REGISTERS, ge=1, le=125)
    # Registers between two mapped ones that may be read and thrown away to save a request.
    # 0 by default: many meters answer "illegal data address" for unmapped registers.
    max_gap: int = Field(default=0, ge=0, le=MODBUS_MAX_READ_REGISTERS - 2)


class ScaleExponentRegister(StrictTable):
    """A signed 16-bit register holding a power-of-ten exponent (SunSpec ``*_SF`` points)."""

    address: Address
    register_type: RegisterType


class MetricDefaults(StrictTable):
    """Values every metric of the map takes unless it sets its own."""

    register_type: RegisterType | None = None
    data_type: DataType | None = None
    word_order: ByteOrder | None = None
    byte_order: ByteOrder | None = None


class MetricRegister(StrictTable):
    """Where one metric lives and how its raw value becomes a canonical one.

    canonical value = unit conversion(raw * scale * 10 ** scale_exponent)
    """

    address: Address = Field(description="0-based protocol address of the first register")
    register_type: RegisterType
    data_type: DataType
    # "little" word order: the least significant 16-bit register comes first.
    word_order: ByteOrder = "big"
    # "little" byte order: the two bytes inside every register are swapped.
    byte_order: ByteOrder = "big"
    scale: float = 1.0
    scale_exponent: ScaleExponentRegister | None = None
    unit: str = Field(min_length=1, description="The unit the meter reports in (after scale)")
    kind: MetricKind
    # Plausible range in the canonical unit; a value outside it is kept with quality bad.
    valid_min: float | None = None
    valid_max: float | None = None
    description: str | None = Field(default=None, description="The manual's name for it")

    @property
    def register_count(self) -> int:
        return REGISTER_COUNTS[self.data_type]

    @property
    def last_address(self) -> int:
        return self.address + self.register_count - 1


class RegisterMap(StrictTable):
    """One meter model's register map (a built-in map or an operator's own file)."""

    meter: MeterInfo
    reads: ReadLimits = ReadLimits()
    defaults: MetricDefaults = MetricDefaults()
    metrics: dict[KnownMetric, MetricRegister] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        # Fill each metric table from [defaults] before validation, so a missing field is
        # reported at the metric and a default can be overridden per metric.
        if not isinstance(data, Mapping):
            return data
        defaults = data.get("defaults")
        metrics = data.get("metrics")
        if not isinstance(defaults, Mapping) or not isinstance(metrics, Mapping):
            return data
        merged = {
            name: {**defaults, **table} if isinstance(table, Mapping) else table
            for name, table in metrics.items()
        }
        return {**data, "metrics": merged}

    def _rule_problems(self) -> list[tuple[Loc, str, object]]:
        problems: list[tuple[Loc, str, object]] = []
        for name, register in self.metrics.items():
            problems.extend(_metric_problems(name, register))
        problems.extend(self._overlaps())
        return problems

    def _overlaps(self) -> list[tuple[Loc, str, object]]:
        # Two metrics on the same registers are a copy-paste slip in almost every case.
        # Scale exponent registers may be shared (SunSpec shares W_SF across phases) but
        # must not sit on a value register.
        problems: list[tuple[Loc, str, object]] = []
        values: list[tuple[str, RegisterType, int, int]] = []
        for name, register in self.metrics.items():
            span = (register.register_type, register.address, register.last_address)
            for other, kind, first, last in values:
                if kind == span[0] and first <= span[2] and span[1] <= last:
                    problems.append(
                        (
                            ("metrics", name, "address"),
                            f"{register.register_type} registers {span[1]}-{span[2]} overlap "
                            f"those of {other} ({first}-{last})",
                            register.address,
                        )
                    )
            values.append((name, *span))
        for name, register in self.metrics.items():
            exponent = register.scale_exponent
            if exponent is None:
                continue
            for other, kind, first, last in values:
                if kind == exponent.register_type and first <= exponent.address <= last:
                    problems.append(
                        (
                            ("metrics", name, "scale_exponent", "address"),
                            f"{exponent.register_type} register {exponent.address} is a value "
                            f"register of {other} ({first}-{last})",
                            exponent.address,
                        )
                    )
        return problems

    def unit_conversion(self, metric: str) -> UnitConversion:
        """How to turn the metric's scaled value into its canonical unit (checked on load)."""
        found = conversion(self.metrics[metric].unit, METRIC_UNITS[metric])
        if found is None:  # pragma: no cover - rejected by validation
            raise KeyError(metric)
        return found


def _metric_problems(name: str, register: MetricRegister) -> list[tuple[Loc, str, object]]:
    problems: list[tuple[Loc, str, object]] = []
    loc: Loc = ("metrics", name)
    canonical = METRIC_UNITS[name]
    if conversion(register.unit, canonical) is None:
        problems.append(
            (
                (*loc, "unit"),
                f"{register.unit!r} does not convert to {canonical!r}, the unit of {name}; "
                f"use one of: {', '.join(source_units(canonical))}",
                register.unit,
            )
        )
    expected_kind = "cumulative" if name in CUMULATIVE_METRICS else "instantaneous"
    if register.kind != expected_kind:
        problems.append(
            ((*loc, "kind"), f"{name} is {expected_kind}, not {register.kind}", register.kind)
        )
    if register.last_address > MAX_ADDRESS:
        problems.append(
            (
                (*loc, "address"),
                f"a {register.data_type} needs {register.register_count} registers, "
                f"so the address must be at most {MAX_ADDRESS - register.register_count + 1}",
                register.address,
            )
        )
    if register.scale == 0 or not math.isfinite(register.scale):
        problems.append(((*loc, "scale"), "must be a finite number other than 0", register.scale))
    low, high = register.valid_min, register.valid_max
    if low is not None and high is not None and low > high:
        problems.append(((*loc, "valid_min"), f"must be at most valid_max ({high})", low))
    return problems
