"""Presence status messages become device events at their own time and session."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas import DeadLetterReason, DeviceStatus, EventKind, GatewayStatus, PresenceState
from schemas import SourceKind as Kind
from services.ingest.presence import presence_outcome

ROOT = "cf/v1"
NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
STATUS_TS = NOW - timedelta(hours=3)


def gateway(state: PresenceState = PresenceState.ONLINE, **extra: object) -> bytes:
    status = GatewayStatus(
        gateway_id="gw-1", state=state, session_id="s-42", ts=STATUS_TS, devices=["m-1"], **extra
    )
    return status.model_dump_json().encode()


def observe(topic: str, payload: bytes):  # type: ignore[no-untyped-def]
    return presence_outcome(topic, payload, topic_root=ROOT, received_at=NOW)


def test_gateway_birth_is_an_online_event_at_the_status_time() -> None:
    out = observe(f"{ROOT}/status/gateway/gw-1", gateway())
    assert out.rejects == []
    [event] = out.events
    assert (event.source_kind, event.source_id, event.event) == (
        Kind.GATEWAY,
        "gw-1",
        EventKind.ONLINE,
    )
    assert event.ts == STATUS_TS  # not the receive time: restarts converge on one row
    assert event.observed_at == NOW
    assert event.session == "s-42"
    assert event.details == {"will": False, "devices": ["m-1"]}


def test_last_will_is_an_offline_event() -> None:
    [event] = observe(
        f"{ROOT}/status/gateway/gw-1", gateway(PresenceState.OFFLINE, will=True)
    ).events
    assert event.event is EventKind.OFFLINE
    assert event.details["will"] is True


def test_device_status_is_an_event_of_the_device() -> None:
    status = DeviceStatus(
        gateway_id="gw-1",
        device_id="m-1",
        state=PresenceState.OFFLINE,
        session_id="s-42",
        ts=STATUS_TS,
        reason="timeout",
    )
    [event] = observe(f"{ROOT}/status/device/gw-1/m-1", status.model_dump_json().encode()).events
    assert (event.source_kind, event.source_id, event.event) == (
        Kind.DEVICE,
        "m-1",
        EventKind.OFFLINE,
    )
    assert event.details == {"gateway_id": "gw-1", "reason": "timeout"}


def test_the_same_status_again_is_the_same_event() -> None:
    first = observe(f"{ROOT}/status/gateway/gw-1", gateway()).events
    again = presence_outcome(
        f"{ROOT}/status/gateway/gw-1",
        gateway(),
        topic_root=ROOT,
        received_at=NOW + timedelta(minutes=5),
    ).events
    key = [(e.source_kind, e.source_id, e.event, e.ts, e.session) for e in first]
    assert key == [(e.source_kind, e.source_id, e.event, e.ts, e.session) for e in again]


def test_a_cleared_retained_status_is_ignored() -> None:
    out = observe(f"{ROOT}/status/gateway/gw-1", b"")
    assert (out.events, out.rejects) == ([], [])


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (f"{ROOT}/status/gateway/gw-1", b"{nope", DeadLetterReason.MALFORMED_JSON),
        (f"{ROOT}/status/gateway/gw-1", b'{"state": "online"}', DeadLetterReason.SCHEMA_VIOLATION),
        (f"{ROOT}/status/gateway/gw-2", gateway(), DeadLetterReason.TOPIC_MISMATCH),
        (f"{ROOT}/status/device/gw-1/m-1", gateway(), DeadLetterReason.SCHEMA_VIOLATION),
        (f"{ROOT}/status/gateway/gw-1/extra", gateway(), DeadLetterReason.SCHEMA_VIOLATION),
    ],
)
def test_bad_status_messages_are_dead_lettered(
    topic: str, payload: bytes, reason: DeadLetterReason
) -> None:
    out = observe(topic, payload)
    assert out.events == []
    assert [r.reason for r in out.rejects] == [reason]
    assert out.rejects[0].source == topic


def test_a_naive_timestamp_is_a_schema_violation() -> None:
    document = json.loads(gateway())
    document["ts"] = "2026-11-29T05:00:00"
    out = observe(f"{ROOT}/status/gateway/gw-1", json.dumps(document).encode())
    assert [r.reason for r in out.rejects] == [DeadLetterReason.SCHEMA_VIOLATION]
