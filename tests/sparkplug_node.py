"""A Sparkplug B edge node for tests: its payloads are encoded with message classes built from
Eclipse Tahu's own sparkplug_b.proto (see tests/tahu_reference.py), as a third-party edge
node's would be, never with CarbonFlow's generated code.

``EdgeNode`` numbers its messages as the specification says (seq 0..255 per node, NBIRTH
first, wrapping) unless a test asks for another seq, e.g. to make a gap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from tests.tahu_reference import reference_datatypes, reference_payload_class

NAMESPACE = "spBv1.0"
Payload: Any = reference_payload_class()
DataType: Any = SimpleNamespace(**reference_datatypes())
_LONG_TYPES = {DataType.Int64, DataType.UInt64, DataType.DateTime}
_INT_TYPES = {
    DataType.Int8,
    DataType.Int16,
    DataType.Int32,
    DataType.UInt8,
    DataType.UInt16,
    DataType.UInt32,
}


def metric(
    *,
    name: str | None = None,
    alias: int | None = None,
    datatype: int | None = None,
    value: object = None,
    ts_ms: int | None = None,
    properties: Mapping[str, object] | None = None,
    value_type: int | None = None,
    **flags: bool,
) -> Any:
    """A metric; the value goes into the field its datatype (or ``value_type``, or else its
    Python type) calls for."""
    m = Payload.Metric()
    if name is not None:
        m.name = name
    if alias is not None:
        m.alias = alias
    if datatype is not None:
        m.datatype = datatype
    if ts_ms is not None:
        m.timestamp = ts_ms
    for flag, on in flags.items():
        setattr(m, flag, on)
    carrier = value_type if value_type is not None else datatype
    if carrier is None:  # no datatype (a data message): carry the value by its Python type
        carrier = {bool: DataType.Boolean, int: DataType.Int64, float: DataType.Double}.get(
            type(value), DataType.String
        )
    if value is not None:
        if carrier in _LONG_TYPES:
            m.long_value = value
        elif carrier in _INT_TYPES:
            m.int_value = value
        elif carrier == DataType.Float:
            m.float_value = value
        elif carrier == DataType.Double:
            m.double_value = value
        elif carrier == DataType.Boolean:
            m.boolean_value = value
        else:
            m.string_value = value
    for key, prop in (properties or {}).items():
        m.properties.keys.append(key)
        pv = m.properties.values.add()
        if isinstance(prop, str):
            pv.type, pv.string_value = DataType.String, prop
        else:
            pv.type, pv.int_value = DataType.UInt32, prop
    return m


def payload(metrics: Sequence[Any], *, ts_ms: int | None, seq: int | None) -> bytes:
    message = Payload()
    if ts_ms is not None:
        message.timestamp = ts_ms
    if seq is not None:
        message.seq = seq
    message.metrics.extend(metrics)
    return message.SerializeToString()


@dataclass
class EdgeNode:
    group_id: str
    edge_node_id: str
    bd_seq: int = 0
    seq: int = field(default=0, init=False)

    def topic(self, message_type: str, device_id: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group_id}/{message_type}/{self.edge_node_id}"
        return base if device_id is None else f"{base}/{device_id}"

    def _next_seq(self, seq: int | None) -> int:
        value = self.seq if seq is None else seq
        self.seq = (value + 1) % 256
        return value

    def nbirth(self, ts_ms: int, metrics: Sequence[Any] = ()) -> bytes:
        self.seq = 0
        own = [
            metric(name="bdSeq", datatype=DataType.UInt64, value=self.bd_seq, ts_ms=ts_ms),
            metric(
                name="Node Control/Rebirth", datatype=DataType.Boolean, value=False, ts_ms=ts_ms
            ),
        ]
        return payload([*own, *metrics], ts_ms=ts_ms, seq=self._next_seq(None))

    def ndeath(self, *, bd_seq: int | None = None, ts_ms: int | None = None) -> bytes:
        value = self.bd_seq if bd_seq is None else bd_seq
        return payload(
            [metric(name="bdSeq", datatype=DataType.UInt64, value=value)], ts_ms=ts_ms, seq=None
        )

    def dbirth(self, ts_ms: int, metrics: Sequence[Any], *, seq: int | None = None) -> bytes:
        return payload(metrics, ts_ms=ts_ms, seq=self._next_seq(seq))

    def data(self, ts_ms: int, metrics: Sequence[Any], *, seq: int | None = None) -> bytes:
        """An NDATA or DDATA payload (the topic says which)."""
        return payload(metrics, ts_ms=ts_ms, seq=self._next_seq(seq))

    def ddeath(self, ts_ms: int, *, seq: int | None = None) -> bytes:
        return payload([], ts_ms=ts_ms, seq=self._next_seq(seq))
