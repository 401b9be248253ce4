"""Presence: retained gateway and meter status messages become device events (pure).

Every valid status message becomes an ``online`` / ``offline`` event at the status's own
``ts`` and ``session_id``, never at the receive time: the broker hands every (re)started
ingest instance the retained statuses again, and those must converge on the rows already
stored. Which of them are transitions is decided where the recorded history is, by the
store (see ``schemas.events``). An empty retained message only clears the topic: ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from schemas import (
    DeadLetterReason,
    DeadLetterRecord,
    DeviceEvent,
    DeviceStatus,
    EventKind,
    GatewayStatus,
    SourceKind,
)
from schemas.events import DetailValue


@dataclass(slots=True)
class PresenceOutcome:
    events: list[DeviceEvent] = field(default_factory=list)
    rejects: list[DeadLetterRecord] = field(default_factory=list)


def presence_outcome(
    topic: str, payload: bytes, *, topic_root: str, received_at: datetime
) -> PresenceOutcome:
    """The event a status message means, or a dead letter saying why it means none."""

    def reject(reason: DeadLetterReason, detail: str, device_id: str | None = None) -> None:
        outcome.rejects.append(
            DeadLetterRecord.of(
                reason,
                detail,
                source=topic,
                received_at=received_at,
                device_id=device_id,
                payload=payload,
            )
        )

    outcome = PresenceOutcome()
    try:
        ids = _ids_from_topic(topic, topic_root)
        if ids is None:
            reject(DeadLetterReason.SCHEMA_VIOLATION, "not a gateway or device status topic")
            return outcome
        if not payload:
            return outcome  # the retained status was cleared
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            reject(DeadLetterReason.MALFORMED_JSON, f"not JSON: {exc}")
            return outcome
        device_id = ids[1]
        try:
            status: GatewayStatus | DeviceStatus = (
                GatewayStatus.model_validate(document)
                if device_id is None
                else DeviceStatus.model_validate(document)
            )
        except ValidationError as exc:
            reject(DeadLetterReason.SCHEMA_VIOLATION, _describe(exc), device_id)
            return outcome
        claimed = (status.gateway_id, getattr(status, "device_id", None))
        if claimed != ids:
            detail = f"topic names {ids} but the status is for {claimed}"
            reject(DeadLetterReason.TOPIC_MISMATCH, detail, device_id)
            return outcome
        outcome.events.append(_event(status, topic, received_at))
    except Exception as exc:  # never let one message stop the service
        outcome.rejects.clear()
        outcome.events.clear()
        reject(DeadLetterReason.UNPROCESSABLE, f"{type(exc).__name__}: {exc}")
    return outcome


def _event(status: GatewayStatus | DeviceStatus, topic: str, received_at: datetime) -> DeviceEvent:
    if isinstance(status, GatewayStatus):
        kind, source_id = SourceKind.GATEWAY, status.gateway_id
        details: dict[str, DetailValue] = {
            "will": status.will,
            "devices": list(status.devices),
        }
    else:
        kind, source_id = SourceKind.DEVICE, status.device_id
        details = {"gateway_id": status.gateway_id, "reason": status.reason}
    return DeviceEvent(
        source_kind=kind,
        source_id=source_id,
        event=EventKind(status.state.value),
        ts=status.ts,
        session=status.session_id,
        details=details,
        observed_at=received_at,
        topic=topic,
    )


def _ids_from_topic(topic: str, topic_root: str) -> tuple[str, str | None] | None:
    """(gateway, device or None) of ``{root}/status/gateway/{gw}`` or ``.../device/{gw}/{dev}``."""
    prefix = f"{topic_root}/status/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    if len(parts) == 2 and parts[0] == "gateway" and parts[1]:
        return parts[1], None
    if len(parts) == 3 and parts[0] == "device" and parts[1] and parts[2]:
        return parts[1], parts[2]
    return None


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: {error['msg']}"
        for error in exc.errors()[:5]
    )
