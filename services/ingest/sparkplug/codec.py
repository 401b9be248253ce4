"""Sparkplug B payloads: protobuf bytes to plain values and back (pure).

The protobuf code is generated from ``sparkplug_b.proto`` (see ``codegen``); this
module is the only one that touches it, so the rest of ingest works on plain dataclasses.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import DecodeError

from carbonflow.errors import CarbonFlowError
from services.ingest.sparkplug import sparkplug_b_pb2 as pb

REBIRTH_METRIC: Final = "Node Control/Rebirth"
BDSEQ_METRIC: Final = "bdSeq"

#: Bits of each integer datatype, and whether it is signed.
INTEGER_TYPES: Final[Mapping[int, tuple[int, bool]]] = {
    pb.Int8: (8, True),
    pb.Int16: (16, True),
    pb.Int32: (32, True),
    pb.Int64: (64, True),
    pb.UInt8: (8, False),
    pb.UInt16: (16, False),
    pb.UInt32: (32, False),
    pb.UInt64: (64, False),
}
FLOAT_TYPES: Final = frozenset({pb.Float, pb.Double})

Scalar = int | float | bool | str | bytes


class MalformedPayloadError(CarbonFlowError):
    """The bytes are not a Sparkplug B protobuf payload."""


class DatatypeMismatchError(CarbonFlowError):
    """A metric value that is not of its datatype, or not a number at all."""


@dataclass(frozen=True, slots=True)
class SpMetric:
    """One metric of a payload, as sent: names and aliases are resolved later, by the session."""

    index: int  # position in the payload, for dead letters
    name: str | None = None
    alias: int | None = None
    timestamp_ms: int | None = None
    datatype: int | None = None
    value_kind: str | None = None  # which field of the value oneof is set, e.g. "double_value"
    value: Scalar | None = None  # its value (None for datasets, templates, extensions)
    is_null: bool = False
    is_historical: bool = False
    is_transient: bool = False
    properties: Mapping[str, Scalar] = field(default_factory=dict)

    def as_json(self) -> str:
        """The metric as JSON (bytes base64-encoded), to keep in a dead letter."""
        fields: dict[str, object] = {}
        for name in ("name", "alias", "timestamp_ms", "datatype", "value_kind", "value"):
            if (value := getattr(self, name)) is not None:
                fields[name] = value
        for flag in ("is_null", "is_historical", "is_transient"):
            if getattr(self, flag):
                fields[flag] = True
        if self.properties:
            fields["properties"] = dict(self.properties)
        return json.dumps(fields, default=_json_default, allow_nan=True)


@dataclass(frozen=True, slots=True)
class SpPayload:
    timestamp_ms: int | None
    seq: int | None
    metrics: tuple[SpMetric, ...]

    def metric_named(self, name: str) -> SpMetric | None:
        return next((m for m in self.metrics if m.name == name), None)


def decode_payload(data: bytes) -> SpPayload:
    """Parse a Sparkplug B payload; raise MalformedPayloadError if it is not one."""
    message = pb.Payload()
    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError) as exc:
        raise MalformedPayloadError(f"not a Sparkplug B payload: {exc}") from exc
    return SpPayload(
        timestamp_ms=message.timestamp if message.HasField("timestamp") else None,
        seq=message.seq if message.HasField("seq") else None,
        metrics=tuple(_metric(index, m) for index, m in enumerate(message.metrics)),
    )


def _metric(index: int, m: pb.Payload.Metric) -> SpMetric:
    kind = m.WhichOneof("value")
    value = getattr(m, kind) if kind in _SCALAR_FIELDS else None
    return SpMetric(
        index=index,
        name=m.name if m.HasField("name") else None,
        alias=m.alias if m.HasField("alias") else None,
        timestamp_ms=m.timestamp if m.HasField("timestamp") else None,
        datatype=m.datatype if m.HasField("datatype") else None,
        value_kind=kind,
        value=value,
        is_null=m.is_null,
        is_historical=m.is_historical,
        is_transient=m.is_transient,
        properties=_properties(m.properties) if m.HasField("properties") else {},
    )


_SCALAR_FIELDS: Final = frozenset(
    {
        "int_value",
        "long_value",
        "float_value",
        "double_value",
        "boolean_value",
        "string_value",
        "bytes_value",
    }
)


def _properties(properties: pb.Payload.PropertySet) -> dict[str, Scalar]:
    """Scalar properties by key (nested property sets are not needed by ingest)."""
    found: dict[str, Scalar] = {}
    for key, prop in zip(properties.keys, properties.values, strict=False):
        kind = prop.WhichOneof("value")
        if kind in _SCALAR_FIELDS and not prop.is_null:
            found[key] = getattr(prop, kind)
    return found


def number(value_kind: str | None, value: Scalar | None, datatype: int) -> float:
    """The numeric value of a metric of ``datatype``; raise DatatypeMismatchError if none.

    Signed integers come in two's complement, either in their own width (Tahu's Python
    client: Int8 -1 is 255) or in 32 bits (Tahu's Java client: Int8 -1 is 4294967295);
    both read as -1. Int64 comes as 64-bit two's complement in ``long_value``.
    """
    if datatype in INTEGER_TYPES:
        if value_kind not in ("int_value", "long_value") or not isinstance(value, int):
            raise DatatypeMismatchError(
                f"datatype {_name(datatype)} but {value_kind or 'no value'}"
            )
        bits, signed = INTEGER_TYPES[datatype]
        integer = _signed(value, bits) if signed else value
        low, high = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
        if not low <= integer < high:
            raise DatatypeMismatchError(f"{value} does not fit {_name(datatype)}")
        return float(integer)
    if datatype in FLOAT_TYPES:
        if value_kind not in ("float_value", "double_value") or not isinstance(value, float):
            raise DatatypeMismatchError(
                f"datatype {_name(datatype)} but {value_kind or 'no value'}"
            )
        return value
    raise DatatypeMismatchError(f"datatype {_name(datatype)} is not a number")


def _signed(raw: int, bits: int) -> int:
    if raw >= 2**63:
        return raw - 2**64
    if bits < 32 and 2**31 <= raw < 2**32:
        return raw - 2**32
    if 1 << (bits - 1) <= raw < 1 << bits:
        return raw - (1 << bits)
    return raw


def _name(datatype: int) -> str:
    try:
        return str(pb.DataType.Name(datatype))
    except ValueError:
        return f"#{datatype}"


def rebirth_request(timestamp_ms: int) -> bytes:
    """The NCMD payload that asks an edge node to publish its births again."""
    payload = pb.Payload(timestamp=timestamp_ms)
    payload.metrics.add(
        name=REBIRTH_METRIC, timestamp=timestamp_ms, datatype=pb.Boolean, boolean_value=True
    )
    return payload.SerializeToString()


def render_payload(data: bytes) -> str:
    """A payload as JSON for a dead letter, or base64 if it does not parse."""
    message = pb.Payload()
    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError):
        return base64.b64encode(data).decode("ascii")
    return MessageToJson(message, preserving_proto_field_name=True, indent=None)


def _json_default(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot render {type(value).__name__}")
