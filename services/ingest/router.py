"""Which handler a message goes to, and everything it makes of it (pure: no I/O, no clock).

- ``{root}/telemetry/{gateway}/{device}``: JSON telemetry (``validation``), plus seq gaps;
- ``{root}/status/gateway/...`` and ``{root}/status/device/...``: presence (``presence``);
- ``spBv1.0/...``: Sparkplug B (``sparkplug.host``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from schemas import DeadLetterReason, DeadLetterRecord, DeviceEvent
from services.ingest.accepted import AcceptedBatch
from services.ingest.presence import presence_outcome
from services.ingest.sequences import BatchSequences
from services.ingest.sparkplug.host import SparkplugHost
from services.ingest.sparkplug.topics import InvalidTopicError, is_sparkplug, parse_topic
from services.ingest.validation import ValidationPolicy, device_from_topic, validate_message


class MessageKind(StrEnum):
    TELEMETRY = "telemetry"
    PRESENCE = "presence"
    SPARKPLUG = "sparkplug"
    UNEXPECTED = "unexpected"


@dataclass(slots=True)
class Routed:
    kind: MessageKind
    batches: list[AcceptedBatch] = field(default_factory=list)
    rejects: list[DeadLetterRecord] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    commands: list[tuple[str, bytes]] = field(default_factory=list)  # MQTT (topic, payload)
    sparkplug_type: str | None = None
    skipped: Counter[str] = field(default_factory=Counter)


class MessageRouter:
    def __init__(
        self,
        *,
        topic_root: str,
        policy: ValidationPolicy,
        sparkplug: SparkplugHost | None,
        sequences: BatchSequences | None,
    ) -> None:
        self._root = topic_root
        self._telemetry_prefix = f"{topic_root}/telemetry/"
        self._status_prefix = f"{topic_root}/status/"
        self._policy = policy
        self._sparkplug = sparkplug
        self._sequences = sequences

    def device_of(self, topic: str) -> str | None:
        """The registered device a message would be for, judging by its topic alone.

        Sparkplug node messages name none: most edge nodes are gateways, not meters, and
        asking the registry about them on every message would be wasted.
        """
        if is_sparkplug(topic):
            try:
                return parse_topic(topic).device_id
            except InvalidTopicError:
                return None
        return device_from_topic(topic, self._root)

    def route(
        self,
        topic: str,
        payload: bytes,
        *,
        received_at: datetime,
        known_devices: Container[str],
    ) -> Routed:
        if topic.startswith(self._telemetry_prefix):
            return self._telemetry(topic, payload, received_at, known_devices)
        if topic.startswith(self._status_prefix):
            presence = presence_outcome(
                topic, payload, topic_root=self._root, received_at=received_at
            )
            return Routed(MessageKind.PRESENCE, rejects=presence.rejects, events=presence.events)
        if self._sparkplug is not None and is_sparkplug(topic):
            outcome = self._sparkplug.handle(
                topic, payload, received_at=received_at, known_devices=known_devices
            )
            return Routed(
                MessageKind.SPARKPLUG,
                batches=[AcceptedBatch.of(record) for record in outcome.records],
                rejects=outcome.rejects,
                events=outcome.events,
                commands=outcome.commands,
                sparkplug_type=outcome.message_type,
                skipped=outcome.skipped,
            )
        reject = DeadLetterRecord.of(
            DeadLetterReason.SCHEMA_VIOLATION,
            "no handler for this topic",
            source=topic,
            received_at=received_at,
            payload=payload,
        )
        return Routed(MessageKind.UNEXPECTED, rejects=[reject])

    def _telemetry(
        self, topic: str, payload: bytes, received_at: datetime, known_devices: Container[str]
    ) -> Routed:
        outcome = validate_message(
            topic,
            payload,
            received_at=received_at,
            known_devices=known_devices,
            topic_device_id=device_from_topic(topic, self._root),
            policy=self._policy,
        )
        routed = Routed(MessageKind.TELEMETRY, rejects=outcome.rejects)
        accepted = outcome.accepted
        if accepted is not None:
            routed.batches.append(accepted)
            if self._sequences is not None:
                gap = self._sequences.observe(accepted, topic=topic, received_at=received_at)
                if gap is not None:
                    routed.events.append(gap)
        return routed
