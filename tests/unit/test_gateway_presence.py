"""Presence messages of a gateway and its meters: contract-valid, sent only on changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from carbonflow.config import MqttSettings
from edge.gateway.presence import DevicePresence, GatewayPresence
from schemas.presence import DeviceStatus, GatewayStatus, PresenceState

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
MQTT = MqttSettings(topic_root="plant/v1")


def test_birth_will_and_death_follow_the_contract() -> None:
    presence = GatewayPresence(MQTT, "gw-1", "s1", ["m1", "m2"])
    birth = GatewayStatus.model_validate_json(presence.birth(T0).payload)
    will = GatewayStatus.model_validate_json(presence.will(T0 - timedelta(seconds=1)).payload)
    death = GatewayStatus.model_validate_json(presence.death(T0).payload)
    assert presence.birth(T0).topic == MQTT.gateway_status_topic("gw-1") == presence.topic
    assert (birth.state, birth.will, birth.devices, birth.session_id) == (
        PresenceState.ONLINE,
        False,
        ["m1", "m2"],
        "s1",
    )
    assert (will.state, will.will, will.ts) == (
        PresenceState.OFFLINE,
        True,
        T0 - timedelta(seconds=1),
    )
    assert (death.state, death.will) == (PresenceState.OFFLINE, False)


def test_a_device_status_is_sent_only_when_the_meter_changes() -> None:
    presence = DevicePresence(MQTT, "gw-1", "s1")
    assert presence.state("m1") is None
    first = presence.answered("m1", T0)
    assert first is not None
    assert first.topic == MQTT.device_status_topic("gw-1", "m1")
    assert presence.answered("m1", T0 + timedelta(seconds=1)) is None
    down = presence.failed("m1", "no answer within 1 s", T0 + timedelta(seconds=2))
    assert down is not None
    status = DeviceStatus.model_validate_json(down.payload)
    assert (status.state, status.reason, status.device_id) == (
        PresenceState.OFFLINE,
        "no answer within 1 s",
        "m1",
    )
    assert presence.failed("m1", "connection refused", T0 + timedelta(seconds=3)) is None
    back = presence.answered("m1", T0 + timedelta(seconds=4))
    assert back is not None
    assert DeviceStatus.model_validate_json(back.payload).reason is None


def test_a_first_poll_that_fails_announces_the_meter_offline() -> None:
    presence = DevicePresence(MQTT, "gw-1", "s1")
    message = presence.failed("m2", "x" * 2000, T0)
    assert message is not None
    status = DeviceStatus.model_validate_json(message.payload)
    assert status.state is PresenceState.OFFLINE
    assert status.reason is not None
    assert len(status.reason) == 500
