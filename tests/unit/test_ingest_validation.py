"""Ingest validation: every kind of bad input gets its reason, valid neighbours go through."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas import DeadLetterReason, ReadingsRecord
from schemas.telemetry import MAX_READINGS
from services.ingest.validation import (
    Outcome,
    ValidationPolicy,
    device_from_topic,
    validate_message,
)

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
KNOWN = {"press-01"}
TOPIC = "cf/v1/telemetry/gw-1/press-01"


def reading(offset_s: float = -1, value: object = 1500.0, **extra: object) -> dict[str, object]:
    ts = (NOW + timedelta(seconds=offset_s)).isoformat()
    return {"ts": ts, "metric": "active_power", "value": value, "unit": "W", **extra}


def message(readings: list[object], **overrides: object) -> bytes:
    batch: dict[str, object] = {
        "gateway_id": "gw-1",
        "device_id": "press-01",
        "session_id": "s1",
        "seq": 3,
        "sent_at": NOW.isoformat(),
        "readings": readings,
    }
    batch.update(overrides)
    return json.dumps(batch).encode()


def check(payload: bytes, topic_device: str | None = "press-01"):  # type: ignore[no-untyped-def]
    return validate_message(
        TOPIC,
        payload,
        received_at=NOW,
        known_devices=KNOWN,
        topic_device_id=topic_device,
        policy=ValidationPolicy(),
    )


def forwarded(outcome: Outcome) -> ReadingsRecord:
    """The record as the stream will decode it from Kafka."""
    assert outcome.accepted is not None
    record = ReadingsRecord.model_validate_json(outcome.accepted.value)
    assert outcome.accepted.reading_count == len(record.readings)
    assert outcome.accepted.device_id == record.device_id
    return record


def test_valid_batch_is_forwarded_whole() -> None:
    outcome = check(message([reading(-2), reading(-1)]))
    assert outcome.rejects == []
    record = forwarded(outcome)
    assert record.received_at == NOW
    assert [r.value for r in record.readings] == [1500.0, 1500.0]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", DeadLetterReason.MALFORMED_JSON),
        (b"\xff\xfe", DeadLetterReason.MALFORMED_JSON),
        (b"[1, 2]", DeadLetterReason.SCHEMA_VIOLATION),
        (message([reading()], seq="three"), DeadLetterReason.SCHEMA_VIOLATION),
        (message([reading()], device_id="ghost-9"), DeadLetterReason.TOPIC_MISMATCH),
    ],
)
def test_whole_message_rejects(payload: bytes, reason: DeadLetterReason) -> None:
    outcome = check(payload)
    assert outcome.accepted is None
    assert [r.reason for r in outcome.rejects] == [reason]
    assert outcome.rejects[0].source == TOPIC


def test_unknown_device_is_rejected() -> None:
    outcome = check(message([reading()], device_id="ghost-9"), topic_device="ghost-9")
    assert outcome.accepted is None
    assert outcome.rejects[0].reason is DeadLetterReason.UNKNOWN_DEVICE
    assert outcome.rejects[0].device_id == "ghost-9"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (reading(value=float("nan")), DeadLetterReason.NON_FINITE_VALUE),
        (reading(value=float("inf")), DeadLetterReason.NON_FINITE_VALUE),
        (reading(value="high"), DeadLetterReason.SCHEMA_VIOLATION),
        (reading(offset_s=3600), DeadLetterReason.TIMESTAMP_IN_FUTURE),
        (reading(offset_s=-40 * 86400), DeadLetterReason.TIMESTAMP_TOO_OLD),
        ({**reading(), "unit": "kW"}, DeadLetterReason.UNIT_MISMATCH),
        ({**reading(), "metric": "mood"}, DeadLetterReason.UNKNOWN_METRIC),
        ({**reading(), "ts": "2026-11-29T07:00:00"}, DeadLetterReason.SCHEMA_VIOLATION),
    ],
)
def test_bad_reading_is_rejected_alone(bad: dict[str, object], reason: DeadLetterReason) -> None:
    outcome = check(message([reading(-3), bad, reading(-1)]))
    assert len(forwarded(outcome).readings) == 2
    assert [(r.reason, r.reading_index) for r in outcome.rejects] == [(reason, 1)]
    assert outcome.rejects[0].device_id == "press-01"


def test_batch_of_only_bad_readings_forwards_nothing() -> None:
    outcome = check(message([reading(value=float("nan"))]))
    assert outcome.accepted is None
    assert len(outcome.rejects) == 1


def test_nan_literal_in_raw_json_is_a_non_finite_reject() -> None:
    payload = message([reading()]).replace(b"1500.0", b"NaN")
    outcome = check(payload)
    assert outcome.accepted is None
    assert outcome.rejects[0].reason is DeadLetterReason.NON_FINITE_VALUE


def test_device_from_topic() -> None:
    assert device_from_topic("cf/v1/telemetry/gw-1/press-01", "cf/v1") == "press-01"
    assert device_from_topic("cf/v1/telemetry/gw-1", "cf/v1") is None
    assert device_from_topic("other/telemetry/gw/dev", "cf/v1") is None


def test_deeply_nested_json_is_a_dead_letter_not_a_crash() -> None:
    outcome = check(b"[" * 200_000)
    assert outcome.accepted is None
    assert outcome.rejects[0].reason is DeadLetterReason.MALFORMED_JSON
    assert "nested too deeply" in outcome.rejects[0].detail
    assert len(outcome.rejects[0].payload) <= 64 * 1024


def test_oversized_payload_is_refused_before_parsing() -> None:
    outcome = validate_message(
        TOPIC,
        message([reading()]),
        received_at=NOW,
        known_devices=KNOWN,
        topic_device_id="press-01",
        policy=ValidationPolicy(max_payload_bytes=100),
    )
    assert outcome.accepted is None
    assert outcome.rejects[0].reason is DeadLetterReason.PAYLOAD_TOO_LARGE


def test_more_readings_than_the_contract_allows_are_refused() -> None:
    outcome = check(message([reading(-1)] * (MAX_READINGS + 1)))
    assert outcome.accepted is None
    assert outcome.rejects[0].reason is DeadLetterReason.SCHEMA_VIOLATION
    assert str(MAX_READINGS) in outcome.rejects[0].detail


def test_a_failure_inside_validation_becomes_a_dead_letter() -> None:
    class BrokenDirectory:
        def __contains__(self, item: object) -> bool:
            raise RuntimeError("registry exploded")

    outcome = validate_message(
        TOPIC,
        message([reading()]),
        received_at=NOW,
        known_devices=BrokenDirectory(),
        topic_device_id="press-01",
        policy=ValidationPolicy(),
    )
    assert outcome.accepted is None
    assert outcome.rejects[0].reason is DeadLetterReason.UNPROCESSABLE
    assert "registry exploded" in outcome.rejects[0].detail
