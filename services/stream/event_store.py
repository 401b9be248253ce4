"""TimescaleDB adapter for device events: idempotent inserts that keep only transitions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from schemas import PRESENCE_EVENTS, DeviceEvent

# One statement per event, in order, so each sees the rows of the ones before it; the
# clock_timestamp() of recorded_at keeps that order within a transaction. A presence event
# is left out when the source's last recorded presence is the same state in the same session
# (retained statuses seen again, a Sparkplug rebirth); any event is left out when its key is
# there already (a redelivery).
_INSERT_EVENT = """
INSERT INTO device_events (ts, source_kind, source_id, event, details, recorded_at)
SELECT %(ts)s, %(source_kind)s, %(source_id)s, %(event)s, %(details)s, clock_timestamp()
WHERE NOT %(presence)s OR NOT EXISTS (
    SELECT 1
    FROM (
        SELECT d.event, d.details ->> 'session' AS session
        FROM device_events d
        WHERE d.source_kind = %(source_kind)s AND d.source_id = %(source_id)s
          AND d.event IN ('online', 'offline')
        ORDER BY d.recorded_at DESC
        LIMIT 1
    ) AS latest
    WHERE latest.event = %(event)s AND latest.session IS NOT DISTINCT FROM %(session)s::text
)
ON CONFLICT (source_kind, source_id, event, ts) DO NOTHING
"""

# Kafka keeps a source on one partition, but during a rebalance two workers can briefly hold
# events of one source; the lock keeps their "last recorded presence" checks apart.
_LOCK_SOURCES = """
SELECT pg_advisory_xact_lock(hashtextextended('device_events/' || source, 0))
FROM unnest(%(sources)s::text[]) AS s(source)
ORDER BY source
"""


async def insert_events(conn: psycopg.AsyncConnection, events: Sequence[DeviceEvent]) -> int:
    """Store ``events`` in one transaction; return how many rows were added."""
    added = 0
    async with conn.transaction(), conn.cursor() as cur:
        sources = sorted({f"{e.source_kind}/{e.source_id}" for e in events})
        await cur.execute(_LOCK_SOURCES, {"sources": sources})
        for event in events:
            await cur.execute(_INSERT_EVENT, _row(event))
            added += max(cur.rowcount, 0)
    return added


def _row(event: DeviceEvent) -> dict[str, Any]:
    details = {
        **event.details,
        "session": event.session,
        "observed_at": event.observed_at.isoformat(),
        "topic": event.topic,
    }
    return {
        "ts": event.ts,
        "source_kind": event.source_kind.value,
        "source_id": event.source_id,
        "event": event.event.value,
        "details": Jsonb(details),
        "presence": event.event in PRESENCE_EVENTS,
        "session": event.session,
    }
