"""Dead-letter contract v1: every rejected input, with a machine-readable reason."""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class DeadLetterReason(StrEnum):
    MALFORMED_JSON = "malformed_json"
    SCHEMA_VIOLATION = "schema_violation"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_METRIC = "unknown_metric"
    UNIT_MISMATCH = "unit_mismatch"
    NON_FINITE_VALUE = "non_finite_value"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    STORAGE_REJECTED = "storage_rejected"  # the database refused it, e.g. a device since deleted


class DeadLetterRecord(BaseModel):
    """One rejected message, or one rejected reading of an otherwise valid batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    reason: DeadLetterReason
    detail: str = Field(description="Human-readable explanation")
    source: str = Field(description="Where it came from, e.g. the MQTT topic")
    received_at: AwareDatetime
    device_id: str | None = None
    reading_index: int | None = Field(default=None, description="Index of the reading")
    payload: str = Field(description="The offending input, UTF-8 with invalid bytes replaced")
