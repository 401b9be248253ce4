"""Readings that come later than the configured lateness (pure).

Within the lateness (default 7 days) a reading updates the intervals, emissions and
rollups it touches, idempotently. An older one would change figures that may already have
been reported: it is stored with the readings (nothing is lost) but leaves the derived
figures alone, and each device's late readings are reported as a ``late_readings`` device
event with their count and time range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from schemas import ReadingsRecord

LATE_EVENT = "late_readings"


@dataclass(frozen=True, slots=True)
class LateReadings:
    """One device's readings in a batch that are older than the cutoff."""

    device_id: str
    count: int
    first: datetime
    last: datetime


def split_late(
    records: Sequence[ReadingsRecord], cutoff: datetime
) -> tuple[list[ReadingsRecord], list[LateReadings]]:
    """The records with only their readings at or after ``cutoff`` (records left with none
    are dropped), and per device what was older."""
    timely: list[ReadingsRecord] = []
    late: dict[str, list[datetime]] = {}
    for record in records:
        keep = [r for r in record.readings if r.ts >= cutoff]
        if len(keep) < len(record.readings):
            late.setdefault(record.device_id, []).extend(
                r.ts for r in record.readings if r.ts < cutoff
            )
            if keep:
                timely.append(record.model_copy(update={"readings": keep}))
        else:
            timely.append(record)
    return timely, [
        LateReadings(device, len(stamps), min(stamps), max(stamps))
        for device, stamps in sorted(late.items())
    ]
