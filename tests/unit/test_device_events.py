"""The device event contract, and seq gaps of JSON telemetry batches."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest
from pydantic import ValidationError

from schemas import DeviceEvent, EventKind, Reading, ReadingsRecord, SourceKind
from schemas.export import JSON_DIR
from services.ingest.accepted import AcceptedBatch
from services.ingest.sequences import BatchSequences

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def event(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "source_kind": "sparkplug_node",
        "source_id": "plant-1/edge-7",
        "event": "seq_gap",
        "ts": "2026-11-29T07:59:00Z",
        "session": "bdseq-3",
        "details": {"expected": 3, "received": 6, "missing": 3},
        "observed_at": "2026-11-29T08:00:00Z",
        "topic": "spBv1.0/plant-1/DDATA/edge-7/press-01",
    }
    document.update(overrides)
    return document


def test_event_round_trips_through_json() -> None:
    parsed = DeviceEvent.model_validate(event())
    assert parsed.source_kind is SourceKind.SPARKPLUG_NODE
    assert parsed.event is EventKind.SEQ_GAP
    assert DeviceEvent.model_validate_json(parsed.model_dump_json()) == parsed
    assert parsed.details["missing"] == 3


@pytest.mark.parametrize(
    "overrides",
    [
        {"source_kind": "toaster"},
        {"event": "exploded"},
        {"ts": "2026-11-29T07:59:00"},  # naive
        {"source_id": ""},
        {"details": {"nested": {"a": 1}}},
        {"unexpected": True},
        {"schema_version": 2},
    ],
)
def test_contract_rejects(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DeviceEvent.model_validate(event(**overrides))


def test_exported_schema_agrees_with_the_model() -> None:
    schema = json.loads((JSON_DIR / "device_event.v1.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    good = json.loads(DeviceEvent.model_validate(event()).model_dump_json())
    assert list(validator.iter_errors(good)) == []
    for bad in ({**good, "event": "exploded"}, {**good, "extra": 1}, {**good, "session": ""}):
        assert list(validator.iter_errors(bad)), bad


def record(seq: int, session: str = "s1", device: str = "m-1") -> AcceptedBatch:
    ts = NOW - timedelta(minutes=10) + timedelta(seconds=seq)
    return AcceptedBatch.of(
        ReadingsRecord(
            gateway_id="gw-1",
            device_id=device,
            session_id=session,
            seq=seq,
            sent_at=ts,
            readings=[Reading(ts=ts, metric="active_power", value=1.0, unit="W")],
            received_at=NOW,
        )
    )


def test_batch_seq_gap_within_a_session_is_an_event() -> None:
    sequences = BatchSequences()
    topic = "cf/v1/telemetry/gw-1/m-1"
    assert sequences.observe(record(0), topic=topic, received_at=NOW) is None
    assert sequences.observe(record(1), topic=topic, received_at=NOW) is None
    gap = sequences.observe(record(4), topic=topic, received_at=NOW)
    assert gap is not None
    assert (gap.source_kind, gap.source_id, gap.event, gap.session) == (
        SourceKind.DEVICE,
        "m-1",
        EventKind.SEQ_GAP,
        "s1",
    )
    assert gap.ts == record(4).sent_at
    assert (gap.details["expected"], gap.details["received"], gap.details["missing"]) == (2, 4, 2)


def test_redeliveries_new_sessions_and_other_devices_are_not_gaps() -> None:
    sequences = BatchSequences()
    topic = "cf/v1/telemetry/gw-1/m-1"
    for seq in (0, 1, 2):
        sequences.observe(record(seq), topic=topic, received_at=NOW)
    assert sequences.observe(record(1), topic=topic, received_at=NOW) is None  # replayed
    assert sequences.observe(record(2), topic=topic, received_at=NOW) is None  # again
    assert sequences.observe(record(7, session="s2"), topic=topic, received_at=NOW) is None
    assert sequences.observe(record(5, device="m-2"), topic=topic, received_at=NOW) is None
    assert sequences.observe(record(8, session="s2"), topic=topic, received_at=NOW) is None
