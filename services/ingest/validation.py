"""Validation of incoming telemetry: the telemetry contract plus the platform's own rules.

Pure domain code: the caller passes the clock reading and the device directory. A bad
reading is rejected on its own; the valid readings next to it go through.

Two paths with one outcome: a message that is valid through and through (nearly all of them)
is recognised in one native pass (``fastpath``); anything that pass declines is examined here
reading by reading against the contract's pydantic models, which names each problem and keeps
the valid neighbours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from schemas import (
    METRIC_UNITS,
    DeadLetterReason,
    DeadLetterRecord,
    Reading,
    ReadingsRecord,
    TelemetryBatch,
)
from schemas.telemetry import MAX_READINGS
from services.ingest.accepted import AcceptedBatch
from services.ingest.fastpath import Window, clean_batch


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    max_future: timedelta = timedelta(minutes=5)
    max_age: timedelta = timedelta(days=30)
    #: A full batch of MAX_READINGS readings is about 1.2 MB of JSON.
    max_payload_bytes: int = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """The batch to forward (``None`` when nothing in the message was valid) and the rejects."""

    accepted: AcceptedBatch | None
    rejects: list[DeadLetterRecord] = field(default_factory=list)


def validate_message(
    topic: str,
    payload: bytes,
    *,
    received_at: datetime,
    known_devices: Container[str],
    topic_device_id: str | None,
    policy: ValidationPolicy,
) -> Outcome:
    """Check one MQTT message; every problem becomes a dead-letter record with a reason.

    Never raises: even a failure of the checks themselves becomes a dead letter, so one
    message can never stop the service (and be redelivered to stop it again).
    """
    try:
        if len(payload) <= policy.max_payload_bytes:
            clean = clean_batch(
                payload,
                window=_window(received_at, policy),
                known_devices=known_devices,
                topic_device_id=topic_device_id,
            )
            if clean is not None:
                return Outcome(clean)
        return examine(
            topic,
            payload,
            received_at=received_at,
            known_devices=known_devices,
            topic_device_id=topic_device_id,
            policy=policy,
        )
    except Exception as exc:
        reject = DeadLetterRecord.of(
            DeadLetterReason.UNPROCESSABLE,
            f"validation failed: {type(exc).__name__}: {exc}",
            source=topic,
            received_at=received_at,
            payload=payload,
        )
        return Outcome(None, [reject])


@lru_cache(maxsize=8)
def _window(received_at: datetime, policy: ValidationPolicy) -> Window:
    # A whole burst of messages shares one received_at: work its window out once.
    return Window.around(received_at, max_age=policy.max_age, max_future=policy.max_future)


def examine(
    topic: str,
    payload: bytes,
    *,
    received_at: datetime,
    known_devices: Container[str],
    topic_device_id: str | None,
    policy: ValidationPolicy,
) -> Outcome:
    """The slow path alone: the message checked against the contract reading by reading."""

    def reject(
        reason: DeadLetterReason,
        detail: str,
        device_id: str | None = None,
        index: int | None = None,
        item: Any = None,
    ) -> DeadLetterRecord:
        echo = payload if item is None else json.dumps(item, allow_nan=True)
        return DeadLetterRecord.of(
            reason,
            detail,
            source=topic,
            received_at=received_at,
            device_id=device_id,
            reading_index=index,
            payload=echo,
        )

    if len(payload) > policy.max_payload_bytes:
        detail = f"{len(payload)} bytes; at most {policy.max_payload_bytes} are accepted"
        return Outcome(None, [reject(DeadLetterReason.PAYLOAD_TOO_LARGE, detail)])
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return Outcome(None, [reject(DeadLetterReason.MALFORMED_JSON, f"not JSON: {detail}")])
    if not isinstance(document, dict) or not isinstance(document.get("readings"), list):
        detail = "expected an object with a 'readings' array"
        return Outcome(None, [reject(DeadLetterReason.SCHEMA_VIOLATION, detail)])

    raw_readings: list[Any] = document["readings"]
    if len(raw_readings) > MAX_READINGS:
        detail = f"{len(raw_readings)} readings in one batch; at most {MAX_READINGS} are allowed"
        return Outcome(None, [reject(DeadLetterReason.SCHEMA_VIOLATION, detail)])
    try:
        # The envelope is checked with a placeholder reading; readings are checked one by one.
        envelope = TelemetryBatch.model_validate(
            {**document, "readings": [_PLACEHOLDER]} if raw_readings else document
        )
    except ValidationError as exc:
        return Outcome(None, [reject(DeadLetterReason.SCHEMA_VIOLATION, _describe(exc))])

    device_id = envelope.device_id
    if topic_device_id is not None and topic_device_id != device_id:
        detail = f"topic names device {topic_device_id!r} but the batch is for {device_id!r}"
        return Outcome(None, [reject(DeadLetterReason.TOPIC_MISMATCH, detail, device_id)])
    if device_id not in known_devices:
        detail = f"device {device_id!r} is not registered"
        return Outcome(None, [reject(DeadLetterReason.UNKNOWN_DEVICE, detail, device_id)])

    accepted: list[Reading] = []
    rejects: list[DeadLetterRecord] = []
    for index, item in enumerate(raw_readings):
        problem = _check_reading(item, received_at, policy)
        if isinstance(problem, Reading):
            accepted.append(problem)
        else:
            reason, detail = problem
            rejects.append(reject(reason, detail, device_id, index, item))
    if not accepted:
        return Outcome(None, rejects)
    record = ReadingsRecord.model_construct(
        **envelope.model_dump(exclude={"readings"}), readings=accepted, received_at=received_at
    )
    return Outcome(AcceptedBatch.of(record), rejects)


_PLACEHOLDER = {"ts": "2000-01-01T00:00:00Z", "metric": "active_power", "value": 0, "unit": "W"}


def _check_reading(
    item: Any, received_at: datetime, policy: ValidationPolicy
) -> Reading | tuple[DeadLetterReason, str]:
    if isinstance(item, dict):
        value = item.get("value")
        if isinstance(value, float) and not math.isfinite(value):
            return DeadLetterReason.NON_FINITE_VALUE, f"value {value} is not a finite number"
    try:
        reading = Reading.model_validate(item)
    except ValidationError as exc:
        return DeadLetterReason.SCHEMA_VIOLATION, _describe(exc)
    expected_unit = METRIC_UNITS.get(reading.metric)
    if expected_unit is None:
        return DeadLetterReason.UNKNOWN_METRIC, f"metric {reading.metric!r} is not known"
    if reading.unit != expected_unit:
        detail = f"{reading.metric} must be in {expected_unit!r}, got {reading.unit!r}"
        return DeadLetterReason.UNIT_MISMATCH, detail
    if reading.ts > received_at + policy.max_future:
        detail = f"ts {reading.ts.isoformat()} is more than {policy.max_future} in the future"
        return DeadLetterReason.TIMESTAMP_IN_FUTURE, detail
    if reading.ts < received_at - policy.max_age:
        detail = f"ts {reading.ts.isoformat()} is older than {policy.max_age}"
        return DeadLetterReason.TIMESTAMP_TOO_OLD, detail
    return reading


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(part) for part in error["loc"]) or "(root)"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def device_from_topic(topic: str, topic_root: str) -> str | None:
    """The device id in ``<root>/telemetry/<gateway>/<device>``, or None if it does not fit."""
    prefix = f"{topic_root}/telemetry/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    return parts[1] if len(parts) == 2 else None
