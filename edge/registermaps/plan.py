"""Turning a register map into as few reads as possible, and their registers into values.

Pure: no I/O. The adapter performs the reads a :class:`ReadPlan` asks for and hands the
registers back to :meth:`ReadPlan.decode`. Decoding uses pymodbus's own codec.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pymodbus.client.mixin import ModbusClientMixin

from edge.registermaps.errors import MissingMetricsError
from edge.registermaps.model import MetricRegister, RegisterMap, RegisterType
from schemas.telemetry import METRIC_UNITS, Quality

__all__ = ["DecodeProblem", "DecodedValue", "ReadBlock", "ReadPlan", "encode_raw"]

# SunSpec marks an unimplemented scale factor with int16 -32768; real exponents are small.
_MAX_EXPONENT: Final = 10
_CODEC: Final = ModbusClientMixin


@dataclass(frozen=True, order=True)
class ReadBlock:
    """One read request: ``count`` registers of one type from ``address`` on."""

    register_type: RegisterType
    address: int
    count: int

    @property
    def last_address(self) -> int:
        return self.address + self.count - 1

    def slice(self, registers: Sequence[int], address: int, count: int) -> list[int]:
        start = address - self.address
        return list(registers[start : start + count])


@dataclass(frozen=True)
class DecodedValue:
    """A metric's value in its canonical unit; bad quality says why in ``reason``."""

    metric: str
    value: float
    unit: str
    quality: Quality
    reason: str | None = None


@dataclass(frozen=True)
class DecodeProblem:
    """A metric whose registers were read but hold no usable number."""

    metric: str
    reason: str


@dataclass(frozen=True)
class _Span:
    register_type: RegisterType
    address: int
    count: int

    @property
    def last_address(self) -> int:
        return self.address + self.count - 1


def _spans(register: MetricRegister) -> list[_Span]:
    spans = [_Span(register.register_type, register.address, register.register_count)]
    if register.scale_exponent is not None:
        exponent = register.scale_exponent
        spans.append(_Span(exponent.register_type, exponent.address, 1))
    return spans


def _group(spans: Iterable[_Span], max_registers: int, max_gap: int) -> list[ReadBlock]:
    """Merge spans of one register type into blocks, in address order."""
    blocks: list[ReadBlock] = []
    ordered = sorted(set(spans), key=lambda span: (span.register_type, span.address))
    for span in ordered:
        if blocks:
            last = blocks[-1]
            end = max(last.last_address, span.last_address)
            joins = (
                last.register_type == span.register_type
                and span.address <= last.last_address + 1 + max_gap
                and end - last.address + 1 <= max_registers
            )
            if joins:
                blocks[-1] = ReadBlock(last.register_type, last.address, end - last.address + 1)
                continue
        blocks.append(ReadBlock(span.register_type, span.address, span.count))
    return blocks


class ReadPlan:
    """The reads that fetch the chosen metrics of one meter, and how to decode them."""

    def __init__(self, register_map: RegisterMap, metrics: Sequence[str]) -> None:
        missing = [metric for metric in metrics if metric not in register_map.metrics]
        if missing:
            raise MissingMetricsError(
                f"the register map of {register_map.meter.manufacturer} "
                f"{register_map.meter.model} has no {', '.join(missing)}"
            )
        self.register_map = register_map
        self.metrics = tuple(metrics)
        spans = [span for metric in self.metrics for span in _spans(register_map.metrics[metric])]
        self.blocks = tuple(
            _group(spans, register_map.reads.max_registers, register_map.reads.max_gap)
        )

    def metrics_in(self, block: ReadBlock) -> list[str]:
        """The metrics that need ``block`` (for reporting a failed read)."""
        return [
            metric
            for metric in self.metrics
            if any(
                self._block_of(span) == block for span in _spans(self.register_map.metrics[metric])
            )
        ]

    def decode(
        self, registers: Mapping[ReadBlock, Sequence[int]]
    ) -> list[DecodedValue | DecodeProblem]:
        """Values of every metric whose blocks are in ``registers``; the others are skipped."""
        results: list[DecodedValue | DecodeProblem] = []
        for metric in self.metrics:
            register = self.register_map.metrics[metric]
            words = [self._words(span, registers) for span in _spans(register)]
            if any(word is None for word in words):
                continue
            value_words, *exponent_words = [word for word in words if word is not None]
            results.append(self._decode_one(metric, register, value_words, exponent_words))
        return results

    def _block_of(self, span: _Span) -> ReadBlock:
        for block in self.blocks:
            if (
                block.register_type == span.register_type
                and block.address <= span.address
                and span.last_address <= block.last_address
            ):
                return block
        raise LookupError(span)  # pragma: no cover - every span is in a block by construction

    def _words(self, span: _Span, registers: Mapping[ReadBlock, Sequence[int]]) -> list[int] | None:
        block = self._block_of(span)
        read = registers.get(block)
        if read is None:
            return None
        return block.slice(read, span.address, span.count)

    def _decode_one(
        self,
        metric: str,
        register: MetricRegister,
        words: list[int],
        exponent_words: list[list[int]],
    ) -> DecodedValue | DecodeProblem:
        raw = _number(words, register)
        if not math.isfinite(raw):
            return DecodeProblem(metric, f"the meter reports {raw} (no valid measurement)")
        scaled = raw * register.scale
        if exponent_words:
            exponent = _exponent(exponent_words[0])
            if abs(exponent) > _MAX_EXPONENT:
                return DecodeProblem(
                    metric, f"scale exponent register reads {exponent}, not a usable exponent"
                )
            scaled *= 10.0**exponent
        unit = METRIC_UNITS[metric]
        value = self.register_map.unit_conversion(metric).apply(scaled)
        if not math.isfinite(value):
            return DecodeProblem(metric, f"{raw} overflows once scaled to {unit}")
        reason = _implausible(metric, register, value)
        quality = Quality.BAD if reason else Quality.GOOD
        return DecodedValue(metric, value, unit, quality, reason)


def _number(words: list[int], register: MetricRegister) -> float:
    if register.byte_order == "little":
        words = [((word & 0xFF) << 8) | (word >> 8) for word in words]
    data_type = _CODEC.DATATYPE[register.data_type.upper()]
    decoded = _CODEC.convert_from_registers(words, data_type, word_order=register.word_order)
    if not isinstance(decoded, int | float):  # pragma: no cover - scalar types only
        raise TypeError(f"{register.data_type} decoded to {decoded!r}")
    return float(decoded)


def encode_raw(register: MetricRegister, raw: float) -> list[int]:
    """The registers a meter holds for the raw (unscaled) ``raw``: the inverse of decoding.

    For simulated meters and tests; integer types take an int-valued ``raw``.
    """
    data_type = _CODEC.DATATYPE[register.data_type.upper()]
    value: int | float = raw if register.data_type.startswith("float") else int(raw)
    words = _CODEC.convert_to_registers(value, data_type, word_order=register.word_order)
    if register.byte_order == "little":
        words = [((word & 0xFF) << 8) | (word >> 8) for word in words]
    return words


def _exponent(words: list[int]) -> int:
    decoded = _CODEC.convert_from_registers(words, _CODEC.DATATYPE.INT16)
    if not isinstance(decoded, int):  # pragma: no cover - int16 decodes to int
        raise TypeError(f"int16 decoded to {decoded!r}")
    return decoded


def _implausible(metric: str, register: MetricRegister, value: float) -> str | None:
    if register.kind == "cumulative" and value < 0:
        return f"counter reads {value}, below 0"
    if register.valid_min is not None and value < register.valid_min:
        return f"{value} is below the plausible minimum {register.valid_min}"
    if register.valid_max is not None and value > register.valid_max:
        return f"{value} is above the plausible maximum {register.valid_max}"
    return None
