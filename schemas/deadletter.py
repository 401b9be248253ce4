"""Dead-letter contract v1: every rejected input, with a machine-readable reason."""

from __future__ import annotations

from datetime import datetime
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
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNPROCESSABLE = "unprocessable"  # validation itself failed; the detail says how
    # Sparkplug B
    MALFORMED_PROTOBUF = "malformed_protobuf"  # payload (base64) is not a Sparkplug B payload
    UNKNOWN_ALIAS = "unknown_alias"  # a metric alias or name the birth did not define
    DATA_BEFORE_BIRTH = "data_before_birth"  # no birth seen for the node/device; rebirth asked
    DATATYPE_MISMATCH = "datatype_mismatch"  # value not of the datatype the birth declared


#: How much of an offending input a dead letter keeps (characters).
MAX_PAYLOAD_ECHO = 64 * 1024


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

    @classmethod
    def of(
        cls,
        reason: DeadLetterReason,
        detail: str,
        *,
        source: str,
        received_at: datetime,
        payload: bytes | str,
        device_id: str | None = None,
        reading_index: int | None = None,
    ) -> DeadLetterRecord:
        """A dead letter with its payload decoded and cut to ``MAX_PAYLOAD_ECHO`` characters."""
        text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
        truncated = len(text) > MAX_PAYLOAD_ECHO
        return cls(
            reason=reason,
            detail=detail[:2000] + (" (payload truncated)" if truncated else ""),
            source=source,
            received_at=received_at,
            device_id=device_id,
            reading_index=reading_index,
            payload=text[:MAX_PAYLOAD_ECHO],
        )
