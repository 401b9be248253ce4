"""Readings from the resolved metrics of one Sparkplug message (pure).

The edge node plays the gateway (``gateway_id``), the Sparkplug device id is the registered
``device_id``; metrics of the node itself (NBIRTH, NDATA) belong to a device registered under
the edge node's id. Each metric becomes a reading in its canonical metric and unit
(``mapping``), at its own timestamp or else the payload's (ms since the epoch, UTC), with
the same checks as JSON telemetry. Besides:

- ``is_null`` metrics carry no value: skipped (and counted).
- ``is_transient`` metrics are, by the specification, not to be stored: skipped (and counted).
- ``is_historical`` metrics are measurements sent late (e.g. from the node's own
  store-and-forward): stored like any other, at their own time, within the age limit.
- quality: a ``Quality`` property (OPC DA code such as 192, a 32-bit code whose top two bits
  give the level, or a word like "Good") sets the reading's quality; bad readings are stored
  as bad and left out of energy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from pydantic import TypeAdapter, ValidationError

from schemas import DeadLetterReason, DeadLetterRecord, Quality, Reading, ReadingsRecord
from schemas.telemetry import MAX_READINGS, Identifier
from services.ingest.sparkplug.codec import (
    DatatypeMismatchError,
    Scalar,
    SpPayload,
    number,
    render_payload,
)
from services.ingest.sparkplug.mapping import MetricMapper, Unmapped, is_control_metric
from services.ingest.sparkplug.sessions import (
    Observation,
    ResolvedMetric,
    ms_to_datetime,
    payload_time,
)
from services.ingest.sparkplug.topics import SparkplugTopic
from services.ingest.validation import ValidationPolicy

_IDENTIFIER: Final = TypeAdapter(Identifier)


@dataclass(slots=True)
class Readings:
    records: list[ReadingsRecord] = field(default_factory=list)
    rejects: list[DeadLetterRecord] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # why metrics were left out


@dataclass(frozen=True, slots=True)
class RecordContext:
    topic: SparkplugTopic
    mqtt_topic: str
    payload: SpPayload
    raw_payload: bytes
    received_at: datetime


def build_readings(
    c: RecordContext,
    observation: Observation,
    *,
    mapper: MetricMapper,
    known_devices: Container[str],
    policy: ValidationPolicy,
) -> Readings:
    """Readings records and per-metric dead letters for one observed message."""
    device_id = c.topic.device_id or c.topic.edge_node_id
    out = Readings()

    def reject(reason: DeadLetterReason, detail: str, item: str, index: int | None) -> None:
        out.rejects.append(
            DeadLetterRecord.of(
                reason,
                detail,
                source=c.mqtt_topic,
                received_at=c.received_at,
                device_id=device_id,
                reading_index=index,
                payload=item,
            )
        )

    for problem in observation.problems:
        reject(problem.reason, problem.detail, problem.metric.as_json(), problem.metric.index)
    measured = []
    for resolved in observation.resolved:
        metric = resolved.metric
        if is_control_metric(resolved.definition.name):
            continue
        if metric.is_null or metric.is_transient:
            out.skipped["null" if metric.is_null else "transient"] += 1
            continue
        measured.append(resolved)
    if not measured:
        return out
    if not _is_identifier(device_id) or device_id not in known_devices:
        reject(
            DeadLetterReason.UNKNOWN_DEVICE,
            f"device {device_id!r} is not registered",
            render_payload(c.raw_payload),
            None,
        )
        return out
    if not _is_identifier(c.topic.edge_node_id):
        detail = f"edge node id {c.topic.edge_node_id!r} is not a valid gateway id"
        reject(DeadLetterReason.SCHEMA_VIOLATION, detail, render_payload(c.raw_payload), None)
        return out

    readings: list[Reading] = []
    seen: dict[tuple[str, datetime], str] = {}
    for resolved in measured:
        metric, name = resolved.metric, resolved.definition.name
        reading = _reading(resolved, c, mapper, policy)
        if isinstance(reading, Reading) and (reading.metric, reading.ts) in seen:
            other = seen[(reading.metric, reading.ts)]
            detail = f"{name!r} and {other!r} both map to {reading.metric} at {reading.ts}"
            reading = (DeadLetterReason.SCHEMA_VIOLATION, detail)
        if isinstance(reading, Reading):
            seen[(reading.metric, reading.ts)] = name
            readings.append(reading)
        else:
            reject(*reading, metric.as_json(), metric.index)
    out.records.extend(_records(c, device_id, observation.session, readings))
    return out


def _reading(
    resolved: ResolvedMetric, c: RecordContext, mapper: MetricMapper, policy: ValidationPolicy
) -> Reading | tuple[DeadLetterReason, str]:
    """The reading a metric makes, or why it makes none."""
    metric, definition = resolved.metric, resolved.definition
    mapped = mapper.resolve(definition.name, definition.unit)
    if isinstance(mapped, Unmapped):
        return mapped.reason, mapped.detail
    try:
        raw = number(metric.value_kind, metric.value, definition.datatype)
    except DatatypeMismatchError as exc:
        return DeadLetterReason.DATATYPE_MISMATCH, f"metric {definition.name!r}: {exc}"
    value = mapped.convert(raw)
    if not math.isfinite(value):
        detail = f"metric {definition.name!r}: value {raw} is not a finite number"
        return DeadLetterReason.NON_FINITE_VALUE, detail
    if metric.timestamp_ms is not None:
        ts = ms_to_datetime(metric.timestamp_ms)
    else:
        ts = payload_time(c.payload)
    if ts is None:
        detail = f"metric {definition.name!r} has no usable timestamp, nor has its payload"
        return DeadLetterReason.SCHEMA_VIOLATION, detail
    if ts > c.received_at + policy.max_future:
        detail = f"ts {ts.isoformat()} is more than {policy.max_future} in the future"
        return DeadLetterReason.TIMESTAMP_IN_FUTURE, detail
    if ts < c.received_at - policy.max_age:
        return (
            DeadLetterReason.TIMESTAMP_TOO_OLD,
            f"ts {ts.isoformat()} is older than {policy.max_age}",
        )
    return Reading(
        ts=ts,
        metric=mapped.metric,
        value=value,
        unit=mapped.unit,
        quality=quality(metric.properties),
    )


def _records(
    c: RecordContext, device_id: str, session: str | None, readings: Sequence[Reading]
) -> list[ReadingsRecord]:
    sent_at = payload_time(c.payload) or c.received_at
    return [
        ReadingsRecord(
            gateway_id=c.topic.edge_node_id,
            device_id=device_id,
            session_id=session or "sparkplug",
            seq=c.payload.seq or 0,
            sent_at=sent_at,
            readings=list(readings[start : start + MAX_READINGS]),
            received_at=c.received_at,
        )
        for start in range(0, len(readings), MAX_READINGS)
    ]


def _is_identifier(value: str) -> bool:
    try:
        _IDENTIFIER.validate_python(value)
    except ValidationError:
        return False
    return True


def quality(properties: Mapping[str, Scalar]) -> Quality:
    """The quality a metric's ``Quality`` property gives (good when there is none)."""
    raw = properties.get("Quality", properties.get("quality"))
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word.startswith("good"):
            return Quality.GOOD
        return Quality.UNCERTAIN if word.startswith("uncertain") else Quality.BAD
    if not isinstance(raw, int) or isinstance(raw, bool):
        return Quality.GOOD
    if 0 <= raw < 256:  # OPC DA: the top two bits of the low byte
        level = raw & 0xC0
        return {0xC0: Quality.GOOD, 0x40: Quality.UNCERTAIN}.get(level, Quality.BAD)
    level = (raw >> 30) & 0b11  # 32-bit codes: 0 good, 1 uncertain, 2 bad, 3 error
    return {0: Quality.GOOD, 1: Quality.UNCERTAIN}.get(level, Quality.BAD)
