"""The exported JSON Schema files are what the pydantic contracts produce today."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest
from pydantic import ValidationError

from schemas import Reading, TelemetryBatch
from schemas.export import JSON_DIR, stale_files


def test_exported_json_schemas_are_in_sync() -> None:
    assert stale_files() == [], "run `python -m schemas.export` and commit schemas/json/"


def test_exported_schema_agrees_with_the_model_on_valid_and_invalid_input() -> None:
    schema = json.loads((JSON_DIR / "telemetry_batch.v1.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    good = json.loads(TelemetryBatch.model_validate(_batch()).model_dump_json())
    assert list(validator.iter_errors(good)) == []
    for bad in ({**good, "seq": -1}, {**good, "readings": []}, {**good, "extra": 1}):
        assert list(validator.iter_errors(bad)), bad


def _batch(**overrides: object) -> dict[str, object]:
    batch: dict[str, object] = {
        "gateway_id": "gw-1",
        "device_id": "press-01",
        "session_id": "s1",
        "seq": 0,
        "sent_at": "2026-11-29T08:00:00Z",
        "readings": [
            {"ts": "2026-11-29T07:59:59Z", "metric": "active_power", "value": 1500.0, "unit": "W"}
        ],
    }
    batch.update(overrides)
    return batch


def test_valid_batch_round_trips_through_json() -> None:
    batch = TelemetryBatch.model_validate(_batch())
    again = TelemetryBatch.model_validate_json(batch.model_dump_json())
    assert again == batch
    assert again.readings[0].ts == datetime(2026, 11, 29, 7, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    "overrides",
    [
        {"seq": -1},
        {"readings": []},
        {"device_id": "has space"},
        {"sent_at": "2026-11-29T08:00:00"},  # naive time
        {"unexpected": 1},
        {"schema_version": 2},
    ],
)
def test_contract_rejects(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TelemetryBatch.model_validate(_batch(**overrides))


def test_reading_rejects_non_finite_values() -> None:
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            Reading(ts=datetime.now(UTC), metric="active_power", value=value, unit="W")
