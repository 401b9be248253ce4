"""One Sparkplug B message in, everything ingest makes of it out (pure: no I/O, no clock).

Readings records for the readings topic, dead letters, device events, and MQTT commands
to publish (rebirth requests). Never raises: even a failure of the handling itself becomes a
dead letter, so one message can never stop the service.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import datetime

from schemas import DeadLetterReason, DeadLetterRecord, DeviceEvent, ReadingsRecord
from services.ingest.sparkplug.codec import (
    MalformedPayloadError,
    decode_payload,
    rebirth_request,
    render_payload,
)
from services.ingest.sparkplug.mapping import MetricMapper
from services.ingest.sparkplug.records import RecordContext, build_readings
from services.ingest.sparkplug.sessions import SparkplugSessions
from services.ingest.sparkplug.topics import InvalidTopicError, parse_topic
from services.ingest.validation import ValidationPolicy


@dataclass(slots=True)
class SparkplugOutcome:
    message_type: str = "invalid"
    records: list[ReadingsRecord] = field(default_factory=list)
    rejects: list[DeadLetterRecord] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    commands: list[tuple[str, bytes]] = field(default_factory=list)  # (MQTT topic, payload)
    skipped: Counter[str] = field(default_factory=Counter)


class SparkplugHost:
    """The host-application side of Sparkplug B for ingest."""

    def __init__(
        self, sessions: SparkplugSessions, mapper: MetricMapper, policy: ValidationPolicy
    ) -> None:
        self._sessions = sessions
        self._mapper = mapper
        self._policy = policy

    def handle(
        self,
        mqtt_topic: str,
        payload: bytes,
        *,
        received_at: datetime,
        known_devices: Container[str],
    ) -> SparkplugOutcome:
        try:
            return self._handle(
                mqtt_topic, payload, received_at=received_at, known_devices=known_devices
            )
        except Exception as exc:
            detail = f"Sparkplug handling failed: {type(exc).__name__}: {exc} (payload base64)"
            return SparkplugOutcome(
                rejects=[
                    _reject(
                        DeadLetterReason.UNPROCESSABLE, detail, mqtt_topic, received_at, payload
                    )
                ]
            )

    def _handle(
        self,
        mqtt_topic: str,
        payload: bytes,
        *,
        received_at: datetime,
        known_devices: Container[str],
    ) -> SparkplugOutcome:
        def refuse(reason: DeadLetterReason, detail: str) -> SparkplugOutcome:
            outcome.rejects.append(_reject(reason, detail, mqtt_topic, received_at, payload))
            return outcome

        outcome = SparkplugOutcome()
        try:
            topic = parse_topic(mqtt_topic)
        except InvalidTopicError as exc:
            return refuse(DeadLetterReason.SCHEMA_VIOLATION, f"{exc} (payload base64)")
        outcome.message_type = topic.message_type.value
        if len(payload) > self._policy.max_payload_bytes:
            detail = f"{len(payload)} bytes; at most {self._policy.max_payload_bytes} (base64)"
            return refuse(DeadLetterReason.PAYLOAD_TOO_LARGE, detail)
        try:
            decoded = decode_payload(payload)
        except MalformedPayloadError as exc:
            return refuse(DeadLetterReason.MALFORMED_PROTOBUF, f"{exc} (payload base64)")

        observation = self._sessions.observe(
            topic, decoded, mqtt_topic=mqtt_topic, received_at=received_at
        )
        outcome.events.extend(observation.events)
        if observation.rebirth:
            stamp = int(received_at.timestamp() * 1000)
            outcome.commands.append((topic.command_topic, rebirth_request(stamp)))
        if observation.refusal is not None:
            device_id = topic.device_id or topic.edge_node_id
            outcome.rejects.append(
                DeadLetterRecord.of(
                    observation.refusal.reason,
                    observation.refusal.detail,
                    source=mqtt_topic,
                    received_at=received_at,
                    device_id=device_id,
                    payload=render_payload(payload),
                )
            )
            return outcome
        context = RecordContext(topic, mqtt_topic, decoded, payload, received_at)
        readings = build_readings(
            context,
            observation,
            mapper=self._mapper,
            known_devices=known_devices,
            policy=self._policy,
        )
        outcome.records.extend(readings.records)
        outcome.rejects.extend(readings.rejects)
        outcome.skipped.update(readings.skipped)
        return outcome


def _reject(
    reason: DeadLetterReason, detail: str, topic: str, received_at: datetime, payload: bytes
) -> DeadLetterRecord:
    """A dead letter keeping the raw payload, base64-encoded (protobuf is binary)."""
    return DeadLetterRecord.of(
        reason,
        detail,
        source=topic,
        received_at=received_at,
        payload=base64.b64encode(payload).decode("ascii"),
    )
