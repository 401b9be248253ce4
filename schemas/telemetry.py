"""Telemetry contract v1: what a gateway publishes over MQTT and what ingest forwards to Kafka."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

#: Canonical SI unit of every metric the platform understands. Conversions happen once, at the
#: edge decoder or the ingest validator; storage and dashboards only ever see these units.
METRIC_UNITS: Final[dict[str, str]] = {
    "active_power": "W",
    "reactive_power": "var",
    "apparent_power": "VA",
    "active_energy_import": "Wh",
    "voltage": "V",
    "current": "A",
    "power_factor": "1",
    "frequency": "Hz",
    "gas_volume": "m3",
    "fuel_mass": "kg",  # cumulative: liquid and solid fuel burnt, by mass
    "temperature": "K",
}

#: Readings in one batch, at most (the contract's limit).
MAX_READINGS: Final = 10_000

IDENTIFIER_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=IDENTIFIER_PATTERN)]
MetricName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]


class Quality(StrEnum):
    """OPC UA style quality of one sample."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Reading(BaseModel):
    """One sample of one metric of one device at the meter's read time."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    ts: AwareDatetime = Field(description="Meter read time, timezone-aware (UTC recommended)")
    metric: MetricName
    value: float = Field(description="Value in the metric's canonical unit; finite")
    unit: str = Field(min_length=1, max_length=16, description="The metric's canonical unit")
    quality: Quality = Quality.GOOD


class TelemetryBatch(BaseModel):
    """A batch of readings of one device, published by a gateway (MQTT payload, JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: Literal[1] = 1
    gateway_id: Identifier
    device_id: Identifier
    session_id: Identifier = Field(description="Changes whenever the gateway restarts")
    seq: int = Field(ge=0, description="Per-device batch sequence number within the session")
    sent_at: AwareDatetime
    readings: list[Reading] = Field(min_length=1, max_length=MAX_READINGS)


class ReadingsRecord(TelemetryBatch):
    """A validated batch as ingest writes it to Kafka, keyed by device id."""

    received_at: datetime = Field(description="When ingest accepted the batch (UTC)")
