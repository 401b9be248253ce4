"""Publishes each meter's retained status when it starts or stops answering.

While the broker is away only the latest status per meter is kept, and sent after the next
connect: a meter flapping through a long outage costs one message, not one per flap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from edge.errors import PublishError
from edge.gateway.link import MqttLink
from edge.gateway.presence import DevicePresence, StatusMessage

logger = logging.getLogger(__name__)


class DeviceAnnouncer:
    def __init__(
        self, link: MqttLink, presence: DevicePresence, clock: Callable[[], datetime]
    ) -> None:
        self._link = link
        self._presence = presence
        self._clock = clock
        self._held: dict[str, StatusMessage] = {}

    def answered(self, device_id: str) -> None:
        self._send(device_id, self._presence.answered(device_id, self._clock()))

    def failed(self, device_id: str, reason: str) -> None:
        self._send(device_id, self._presence.failed(device_id, reason, self._clock()))

    def connected(self) -> None:
        held, self._held = self._held, {}
        for device_id, message in held.items():
            self._send(device_id, message)

    def _send(self, device_id: str, message: StatusMessage | None) -> None:
        if message is None:
            return
        if not self._link.connected:
            self._held[device_id] = message
            return
        try:
            self._link.publish(message.topic, message.payload, retain=True)
        except PublishError as exc:
            logger.error("cannot publish the status of %s: %s", device_id, exc)
