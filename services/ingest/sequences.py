"""Gaps in the per-device ``seq`` of JSON telemetry batches within a gateway session (pure).

A gateway numbers each device's batches 0, 1, 2... per session. A batch whose seq is more
than one past the highest seen in its session means batches that never arrived: a
``seq_gap`` event at the batch's ``sent_at``. Lower or repeated numbers are redeliveries
(store-and-forward replays them after an outage), not gaps. A new session starts afresh.

The state is this instance's memory: with several ingest instances on one shared
subscription, each sees only part of a device's batches and would report the others' as
gaps, so sequence tracking is for deployments where one instance takes a device's data
(``CARBONFLOW_INGEST_TRACK_SEQUENCES``).
"""

from __future__ import annotations

from datetime import datetime

from schemas import DeviceEvent, EventKind, SourceKind
from services.ingest.accepted import AcceptedBatch


class BatchSequences:
    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}  # device -> (session, highest seq)

    def observe(
        self, record: AcceptedBatch, *, topic: str, received_at: datetime
    ) -> DeviceEvent | None:
        last = self._last.get(record.device_id)
        if last is None or last[0] != record.session_id:
            self._last[record.device_id] = (record.session_id, record.seq)
            return None
        highest = last[1]
        if record.seq <= highest:
            return None
        self._last[record.device_id] = (record.session_id, record.seq)
        if record.seq == highest + 1:
            return None
        return DeviceEvent(
            source_kind=SourceKind.DEVICE,
            source_id=record.device_id,
            event=EventKind.SEQ_GAP,
            ts=record.sent_at,
            session=record.session_id,
            details={
                "gateway_id": record.gateway_id,
                "expected": highest + 1,
                "received": record.seq,
                "missing": record.seq - highest - 1,
            },
            observed_at=received_at,
            topic=topic,
        )
