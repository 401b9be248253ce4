"""What the stream processor does with a batch of device events from Kafka."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from functools import partial

from psycopg_pool import AsyncConnectionPool

from schemas import DeadLetterReason, DeadLetterRecord, DeviceEvent
from services.stream.event_store import insert_events
from services.stream.pipeline import DATA_REFUSED, decode_values, with_db_retry

logger = logging.getLogger(__name__)


def decode_events(
    payloads: Sequence[bytes], source: str, now: datetime
) -> tuple[list[DeviceEvent], list[DeadLetterRecord]]:
    return decode_values(DeviceEvent, "device event v1", payloads, source, now)


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
