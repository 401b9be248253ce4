"""Presence messages of a gateway and its meters (``schemas.presence``), and when to send them.

Pure domain code: the caller passes the time. ``GatewayPresence`` builds the retained birth
(published after every connect), the last will (registered with every connect) and the
clean-shutdown death. ``DevicePresence`` turns each poll outcome into a retained
``DeviceStatus`` only when a meter starts or stops answering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from carbonflow.config import MqttSettings
from schemas.presence import DeviceStatus, GatewayStatus, PresenceState

_MAX_REASON: Final = 500


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A retained status to publish at QoS 1."""

    topic: str
    payload: bytes


class GatewayPresence:
    """The status messages of one gateway session."""

    def __init__(
        self, mqtt: MqttSettings, gateway_id: str, session_id: str, devices: Sequence[str]
    ) -> None:
        self._topic = mqtt.gateway_status_topic(gateway_id)
        self._gateway_id = gateway_id
        self._session_id = session_id
        self._devices = list(devices)

    @property
    def topic(self) -> str:
        return self._topic

    def birth(self, now: datetime) -> StatusMessage:
        return self._message(PresenceState.ONLINE, now, will=False, devices=self._devices)

    def will(self, connect_time: datetime) -> StatusMessage:
        """The death the broker publishes if this connection ends without a DISCONNECT."""
        return self._message(PresenceState.OFFLINE, connect_time, will=True, devices=[])

    def death(self, now: datetime) -> StatusMessage:
        """The death a clean shutdown publishes itself."""
        return self._message(PresenceState.OFFLINE, now, will=False, devices=[])

    def _message(
        self, state: PresenceState, ts: datetime, *, will: bool, devices: list[str]
    ) -> StatusMessage:
        status = GatewayStatus(
            gateway_id=self._gateway_id,
            state=state,
            session_id=self._session_id,
            ts=ts,
            will=will,
            devices=devices,
        )
        return StatusMessage(self._topic, status.model_dump_json().encode())


class DevicePresence:
    """Whether each meter answers, as last reported; a status message on every change."""

    def __init__(self, mqtt: MqttSettings, gateway_id: str, session_id: str) -> None:
        self._mqtt = mqtt
        self._gateway_id = gateway_id
        self._session_id = session_id
        self._states: dict[str, PresenceState] = {}

    def state(self, device_id: str) -> PresenceState | None:
        """None until the meter's first poll has ended."""
        return self._states.get(device_id)

    def answered(self, device_id: str, now: datetime) -> StatusMessage | None:
        return self._change(device_id, PresenceState.ONLINE, now, None)

    def failed(self, device_id: str, reason: str, now: datetime) -> StatusMessage | None:
        return self._change(device_id, PresenceState.OFFLINE, now, reason)

    def _change(
        self, device_id: str, state: PresenceState, now: datetime, reason: str | None
    ) -> StatusMessage | None:
        if self._states.get(device_id) is state:
            return None
        self._states[device_id] = state
        if reason is not None and len(reason) > _MAX_REASON:
            reason = reason[: _MAX_REASON - 3] + "..."
        status = DeviceStatus(
            gateway_id=self._gateway_id,
            device_id=device_id,
            state=state,
            session_id=self._session_id,
            ts=now,
            reason=reason,
        )
        return StatusMessage(
            self._mqtt.device_status_topic(self._gateway_id, device_id),
            status.model_dump_json().encode(),
        )
