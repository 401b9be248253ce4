"""Message contracts shared by every CarbonFlow component.

Each contract is a versioned pydantic model; ``schemas/json/`` holds the JSON Schema exported
from it, checked in so that non-Python producers (PLC bridges, third-party gateways) can
validate against the same contract. ``python -m schemas.export`` regenerates the files.
"""

from schemas.deadletter import DeadLetterReason, DeadLetterRecord
from schemas.events import PRESENCE_EVENTS, DeviceEvent, EventKind, SourceKind
from schemas.presence import DeviceStatus, GatewayStatus, PresenceState
from schemas.telemetry import (
    METRIC_UNITS,
    Quality,
    Reading,
    ReadingsRecord,
    TelemetryBatch,
)

__all__ = [
    "METRIC_UNITS",
    "PRESENCE_EVENTS",
    "DeadLetterReason",
    "DeadLetterRecord",
    "DeviceEvent",
    "DeviceStatus",
    "EventKind",
    "GatewayStatus",
    "PresenceState",
    "Quality",
    "Reading",
    "ReadingsRecord",
    "SourceKind",
    "TelemetryBatch",
]
