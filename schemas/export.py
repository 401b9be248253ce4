"""Export the contracts as JSON Schema files: ``python -m schemas.export [--check]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.deadletter import DeadLetterRecord
from schemas.events import DeviceEvent
from schemas.presence import DeviceStatus, GatewayStatus
from schemas.telemetry import ReadingsRecord, TelemetryBatch

JSON_DIR = Path(__file__).resolve().parent / "json"

CONTRACTS: dict[str, type[BaseModel]] = {
    "telemetry_batch.v1.schema.json": TelemetryBatch,
    "readings_record.v1.schema.json": ReadingsRecord,
    "deadletter_record.v1.schema.json": DeadLetterRecord,
    "gateway_status.v1.schema.json": GatewayStatus,
    "device_status.v1.schema.json": DeviceStatus,
    "device_event.v1.schema.json": DeviceEvent,
}


def render(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale_files() -> list[str]:
    """Names of exported files that differ from what the models produce now."""
    return [
        name
        for name, model in CONTRACTS.items()
        if not (JSON_DIR / name).exists() or (JSON_DIR / name).read_text() != render(model)
    ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        for name in stale:
            print(f"stale: schemas/json/{name} (run python -m schemas.export)", file=sys.stderr)
        return 1 if stale else 0
    JSON_DIR.mkdir(exist_ok=True)
    for name, model in CONTRACTS.items():
        (JSON_DIR / name).write_text(render(model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
