"""What the stream processor does with a batch of device events from Kafka."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from functools import partial

from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from schemas import DeadLetterReason, DeadLetterRecord, DeviceEvent
from services.stream.event_store import insert_events
from services.stream.pipeline import DATA_REFUSED, with_db_retry

logger = logging.getLogger(__name__)


def decode_events(
    payloads: Sequence[bytes], source: str, now: datetime
) -> tuple[list[DeviceEvent], list[DeadLetterRecord]]:
    """Parse Kafka values; anything undecodable becomes a dead letter instead of a crash."""
    events: list[DeviceEvent] = []
    rejects: list[DeadLetterRecord] = []
    for payload in payloads:
        try:
            events.append(DeviceEvent.model_validate_json(payload))
        except ValidationError as exc:
            detail = f"not a device event v1: {exc.errors()[0]['msg']}"
            rejects.append(
                DeadLetterRecord.of(
                    DeadLetterReason.SCHEMA_VIOLATION,
                    detail,
                    source=source,
                    received_at=now,
                    payload=payload,
                )
            )
    return events, rejects


async def store_events(
    pool: AsyncConnectionPool, events: Sequence[DeviceEvent], *, source: str, now: datetime
) -> tuple[int, list[DeadLetterRecord]]:
    """Store events in order, waiting out database outages; refused ones become dead letters.

    Returns the number of rows added (redeliveries and repeated presence add none).
    """
    try:
        return await with_db_retry(pool, lambda conn: insert_events(conn, events)), []
    except DATA_REFUSED as exc:
        logger.warning("events refused (%s); storing %d one by one", exc, len(events))
    added = 0
    rejects: list[DeadLetterRecord] = []
    for event in events:
        try:
            added += await with_db_retry(pool, partial(insert_events, events=[event]))
        except DATA_REFUSED as exc:
            rejects.append(
                DeadLetterRecord.of(
                    DeadLetterReason.STORAGE_REJECTED,
                    f"{type(exc).__name__}: {exc}".strip(),
                    source=source,
                    received_at=now,
                    payload=event.model_dump_json(),
                )
            )
    return added, rejects
