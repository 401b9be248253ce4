"""Telemetry batches: one per poll on disk, merged per device on the wire.

Pure domain code: no I/O, no clock; the caller passes the session id and every time.

Each poll's readings are stored as a batch of their own the moment the meter answers, so a
crash loses nothing that was read. Publishing one message per poll would be wasteful, so the
forwarder merges a device's stored batches into wire batches of up to ``max_readings``
readings, once the oldest of them has waited ``batch_interval`` (or the device has a full
batch waiting). Wire batches are numbered per device within the gateway's session; the
stored batches' own numbers only order them on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.telemetry import Reading, TelemetryBatch


class SequenceNumbers:
    """Numbers 0, 1, 2, ... per device (one instance per session and purpose)."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, str], int] = {}

    def take(self, gateway_id: str, device_id: str) -> int:
        key = (gateway_id, device_id)
        seq = self._next.get(key, 0)
        self._next[key] = seq + 1
        return seq


def poll_batches(
    *,
    gateway_id: str,
    device_id: str,
    session_id: str,
    numbers: SequenceNumbers,
    readings: Sequence[Reading],
    sent_at: datetime,
    max_readings: int,
) -> list[TelemetryBatch]:
    """The batches to store for one poll: its readings, split at ``max_readings``."""
    if max_readings < 1:
        raise ValueError("max_readings must be positive")
    return [
        TelemetryBatch(
            gateway_id=gateway_id,
            device_id=device_id,
            session_id=session_id,
            seq=numbers.take(gateway_id, device_id),
            sent_at=sent_at,
            readings=list(readings[start : start + max_readings]),
        )
        for start in range(0, len(readings), max_readings)
    ]


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A buffer entry as the planner sees it; ``batch`` is None if its payload is unreadable."""

    entry_id: int
    gateway_id: str
    device_id: str
    appended_at: datetime
    batch: TelemetryBatch | None


@dataclass(frozen=True, slots=True)
class WirePlan:
    """Stored batches to publish as one message, and the entries a PUBACK settles."""

    gateway_id: str
    device_id: str
    entries: tuple[StoredBatch, ...]

    @property
    def entry_ids(self) -> tuple[int, ...]:
        return tuple(entry.entry_id for entry in self.entries)

    @property
    def readings(self) -> int:
        return sum(len(entry.batch.readings) for entry in self.entries if entry.batch is not None)

    @property
    def unreadable(self) -> bool:
        """A single entry whose payload did not parse: it goes out as stored, for ingest to
        dead-letter with a reason, rather than vanish here."""
        return len(self.entries) == 1 and self.entries[0].batch is None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to publish now, and when the next waiting batch falls due (None: none waits)."""

    ready: list[WirePlan]
    next_due: datetime | None


def plan_wire_batches(
    stored: Sequence[StoredBatch],
    *,
    max_readings: int,
    batch_interval: timedelta,
    now: datetime | None,
) -> Plan:
    """Group ``stored`` (oldest first) into wire batches per device, oldest data first.

    A device's batches are due once the oldest has waited ``batch_interval`` or together
    they fill a wire batch; with ``now`` None everything is due (draining on shutdown).
    """
    if max_readings < 1:
        raise ValueError("max_readings must be positive")
    groups: dict[tuple[str, str], list[StoredBatch]] = {}
    ready: list[WirePlan] = []
    for entry in stored:
        if entry.batch is None:
            ready.append(WirePlan(entry.gateway_id, entry.device_id, (entry,)))
        else:
            groups.setdefault((entry.gateway_id, entry.device_id), []).append(entry)
    next_due: datetime | None = None
    for (gateway_id, device_id), entries in groups.items():
        due_at = entries[0].appended_at + batch_interval
        total = sum(len(entry.batch.readings) for entry in entries if entry.batch is not None)
        if now is not None and due_at > now and total < max_readings:
            next_due = due_at if next_due is None else min(next_due, due_at)
            continue
        ready.extend(_chunks(gateway_id, device_id, entries, max_readings))
    ready.sort(key=lambda plan: plan.entries[0].entry_id)
    return Plan(ready=ready, next_due=next_due)


def _chunks(
    gateway_id: str, device_id: str, entries: Sequence[StoredBatch], max_readings: int
) -> list[WirePlan]:
    plans: list[WirePlan] = []
    chunk: list[StoredBatch] = []
    size = 0
    for entry in entries:
        count = len(entry.batch.readings) if entry.batch is not None else 0
        # A batch stored under a larger limit than today's still goes, on its own.
        if chunk and size + count > max_readings:
            plans.append(WirePlan(gateway_id, device_id, tuple(chunk)))
            chunk, size = [], 0
        chunk.append(entry)
        size += count
    if chunk:
        plans.append(WirePlan(gateway_id, device_id, tuple(chunk)))
    return plans


def merge(plan: WirePlan, *, session_id: str, seq: int, sent_at: datetime) -> TelemetryBatch:
    """The wire batch of ``plan``: its stored batches' readings, in order, under one number."""
    readings = [
        reading
        for entry in plan.entries
        if entry.batch is not None
        for reading in entry.batch.readings
    ]
    return TelemetryBatch(
        gateway_id=plan.gateway_id,
        device_id=plan.device_id,
        session_id=session_id,
        seq=seq,
        sent_at=sent_at,
        readings=readings,
    )
