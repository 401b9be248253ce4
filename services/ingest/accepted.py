"""A batch of readings ingest has accepted, in the form it goes to Kafka (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas import ReadingsRecord


@dataclass(frozen=True, slots=True)
class AcceptedBatch:
    """The record's header (what metrics and sequence tracking look at), how many readings
    it holds, and the record itself as Kafka's value: ``ReadingsRecord`` JSON.

    Whoever builds one guarantees that ``value`` decodes as a ``ReadingsRecord`` with this
    header; the fast path builds it without ever making the pydantic record.
    """

    gateway_id: str
    device_id: str
    session_id: str
    seq: int
    sent_at: datetime
    reading_count: int
    value: bytes

    @classmethod
    def of(cls, record: ReadingsRecord) -> AcceptedBatch:
        return cls(
            gateway_id=record.gateway_id,
            device_id=record.device_id,
            session_id=record.session_id,
            seq=record.seq,
            sent_at=record.sent_at,
            reading_count=len(record.readings),
            value=record.model_dump_json().encode(),
        )
