"""The Kafka value of a clean batch is its payload with received_at spliced in: it must be
exactly what the stream processor decodes as the record ingest validated."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas import ReadingsRecord, TelemetryBatch
from services.ingest.fastpath import spliced_record_json
from services.ingest.validation import ValidationPolicy, validate_message

NOW = datetime(2026, 11, 29, 8, 0, 0, 123456, tzinfo=UTC)
TOPIC = "cf/v1/telemetry/gw-1/press-01"


def payload_text(*, quality: bool = True) -> str:
    readings = [
        {
            "ts": (NOW - timedelta(seconds=k)).isoformat(),
            "metric": "active_power",
            "value": 1000 + k,  # an int: the record holds a float
            "unit": "W",
            **({"quality": "uncertain"} if quality and k else {}),
        }
        for k in range(3)
    ]
    return json.dumps(
        {
            "schema_version": 1,
            "gateway_id": "gw-1",
            "device_id": "press-01",
            "session_id": "s1",
            "seq": 7,
            "sent_at": "2026-11-29T09:00:00+01:00",  # another offset: kept as sent
            "readings": readings,
        }
    )


def forward(payload: bytes) -> tuple[ReadingsRecord, bytes]:
    """The record the contract makes of a clean payload, and the Kafka value ingest sends."""
    outcome = validate_message(
        TOPIC,
        payload,
        received_at=NOW,
        known_devices={"press-01"},
        topic_device_id="press-01",
        policy=ValidationPolicy(),
    )
    assert outcome.rejects == []
    assert outcome.accepted is not None
    assert outcome.accepted.value == spliced_record_json(payload, NOW), (
        "a clean batch should not be serialised again"
    )
    batch = TelemetryBatch.model_validate_json(payload)
    return ReadingsRecord(**dict(batch), received_at=NOW), outcome.accepted.value


@pytest.mark.parametrize(
    "text",
    [
        payload_text(),
        payload_text(quality=False),
        "  \n" + payload_text() + " \r\n\t ",  # whitespace around the object
        json.dumps(json.loads(payload_text()), indent=2),  # pretty-printed
        # A duplicate key: JSON parsers keep the last one, validation and the stream alike.
        payload_text().replace('"seq": 7', '"seq": 1, "seq": 7'),
    ],
    ids=["plain", "default-quality", "whitespace", "indented", "duplicate-key"],
)
def test_spliced_record_decodes_as_the_validated_record(text: str) -> None:
    record, value = forward(text.encode())
    decoded = ReadingsRecord.model_validate_json(value)
    assert decoded == ReadingsRecord.model_validate_json(record.model_dump_json())
    assert decoded.received_at == NOW
    assert decoded.seq == 7
    assert json.loads(value) == {
        **json.loads(text),
        "received_at": json.loads(value)["received_at"],
    }


def test_a_batch_with_a_reject_is_serialised_from_the_record() -> None:
    document = json.loads(payload_text())
    document["readings"].append({**document["readings"][0], "unit": "kW"})
    outcome = validate_message(
        TOPIC,
        json.dumps(document).encode(),
        received_at=NOW,
        known_devices={"press-01"},
        topic_device_id="press-01",
        policy=ValidationPolicy(),
    )
    assert len(outcome.rejects) == 1
    assert outcome.accepted is not None
    assert outcome.accepted.value != spliced_record_json(json.dumps(document).encode(), NOW)
    record = ReadingsRecord.model_validate_json(outcome.accepted.value)
    assert len(record.readings) == len(document["readings"]) - 1


def test_received_at_is_not_an_accepted_payload_key() -> None:
    """The splice relies on it: a payload bringing its own received_at is not clean."""
    document = {**json.loads(payload_text()), "received_at": NOW.isoformat()}
    outcome = validate_message(
        TOPIC,
        json.dumps(document).encode(),
        received_at=NOW,
        known_devices={"press-01"},
        topic_device_id="press-01",
        policy=ValidationPolicy(),
    )
    assert outcome.accepted is None


def test_not_an_object_is_not_spliced() -> None:
    assert spliced_record_json(b"[1, 2]", NOW) is None
