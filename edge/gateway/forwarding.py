"""Buffer -> MQTT: publish what the buffer holds, delete it only after the broker's PUBACK.

At most ``max_inflight`` wire batches await their PUBACK at a time; paho resends those
after a reconnect, and anything still in the buffer when the process starts (a crash, a
kill, a power cut) is published again from the top. Nothing is deleted on a timer or on
a guess: an entry leaves the buffer when the broker has acknowledged it, when the overflow
policy drops it, or never. Duplicates that a crash can cause are harmless downstream,
where every write is idempotent on (device, metric, ts).

A PUBACK with an error reason code (say the broker's ACL refused the device's topic) keeps
the entries, and nothing more of that device is published for ``rejected_retry_s``: some
brokers (Mosquitto 2.0) also drop the connection after a refusal, so retrying at once would
keep cutting off every other meter's data. The operator sees the error in the log and in
``carbonflow_gateway_publish_rejected_total``.

A PUBACK with reason 0x10 "No matching subscribers" is no delivery either: the broker took
the batch and dropped it, as nobody subscribed (Mosquitto 2.0 does not restore a persistent
session's shared subscription after a restart, so until ingest subscribes again its
telemetry reaches no one). The entries stay; the device's batches wait a short, growing
while (``UnroutedHolds``) and go out again, other devices' meanwhile go on. Counted in
``carbonflow_gateway_publish_unrouted_total``; logged once when it starts and once when
batches are delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from carbonflow.config import MqttSettings
from edge.buffer import BatchBuffer, BufferedBatch, BufferStats, BufferStorageError
from edge.config import BackoffSettings
from edge.errors import PublishError
from edge.gateway.batching import (
    SequenceNumbers,
    StoredBatch,
    WirePlan,
    merge,
    plan_wire_batches,
)
from edge.gateway.link import MqttLink
from edge.gateway.metrics import GatewayMetrics
from edge.gateway.unrouted import UnroutedHolds
from schemas.telemetry import TelemetryBatch

logger = logging.getLogger(__name__)

# Entries read from the buffer per planning round beyond those already in flight.
_WINDOW = 2000


@dataclass(frozen=True, slots=True)
class _InFlight:
    device: tuple[str, str]
    entry_ids: tuple[int, ...]
    readings: int
    published_at: float


@dataclass(frozen=True, slots=True)
class _Round:
    """One planning round: batches handed to MQTT, batches left waiting, when to look again."""

    published: int
    waiting: int
    held: int
    wait_s: float


class Forwarder:
    def __init__(
        self,
        buffer: BatchBuffer,
        link: MqttLink,
        mqtt: MqttSettings,
        *,
        session_id: str,
        batch_interval_s: float,
        max_batch_readings: int,
        max_inflight: int,
        rejected_retry_s: float,
        unrouted_retry: BackoffSettings,
        metrics: GatewayMetrics,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._buffer = buffer
        self._link = link
        self._mqtt = mqtt
        self._session_id = session_id
        self._batch_interval = timedelta(seconds=batch_interval_s)
        self._max_batch_readings = max_batch_readings
        self._max_inflight = max_inflight
        self._rejected_retry_s = rejected_retry_s
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._numbers = SequenceNumbers()
        self._inflight: dict[int, _InFlight] = {}
        # Entries acknowledged but not yet deleted; devices refused by the broker (until when).
        self._acking: set[int] = set()
        self._refused: dict[tuple[str, str], float] = {}
        self._unrouted = UnroutedHolds(unrouted_retry)
        # Parsed payloads, by entry id: entries never change, so each is parsed once.
        self._parsed: dict[int, TelemetryBatch | None] = {}
        self._wake = asyncio.Event()
        self._ack_tasks: set[asyncio.Task[None]] = set()

    # -- link events (on the event loop) ------------------------------------------------------

    def connected(self) -> None:
        self._metrics.broker_connected.set(1)
        self._wake.set()

    def disconnected(self) -> None:
        self._metrics.broker_connected.set(0)

    def acknowledged(self, mid: int, error: str | None) -> None:
        flight = self._inflight.pop(mid, None)
        if flight is None:
            return  # a status message, not a batch of ours
        self._metrics.inflight_batches.set(len(self._inflight))
        self._metrics.publish_latency.observe(self._monotonic() - flight.published_at)
        if error is not None:
            self._refused[flight.device] = self._monotonic() + self._rejected_retry_s
            self._metrics.publish_rejected.inc()
            logger.error(
                "the broker refused %d readings of %s (%s); keeping them, next try in %.0f s",
                flight.readings,
                flight.device[1],
                error,
                self._rejected_retry_s,
            )
        else:
            self._end_unrouted_episode(flight.device)
            self._acking.update(flight.entry_ids)
            task = asyncio.create_task(self._release(flight))
            self._ack_tasks.add(task)
            task.add_done_callback(self._ack_tasks.discard)
        self._wake.set()

    def unrouted(self, mid: int) -> None:
        flight = self._inflight.pop(mid, None)
        if flight is None:
            return  # a status message (retained, so kept by the broker all the same)
        now = self._monotonic()
        self._metrics.inflight_batches.set(len(self._inflight))
        self._metrics.publish_unrouted.inc()
        starts = not self._unrouted.active
        hold_s = self._unrouted.unrouted(flight.device, published_at=flight.published_at, now=now)
        if starts:
            logger.warning(
                "the broker has no subscriber for telemetry of %s (No matching subscribers);"
                " keeping the readings buffered, next try in %.1f s",
                flight.device[1],
                hold_s,
            )
        else:
            logger.debug("no subscriber for %s yet; next try in %.1f s", flight.device[1], hold_s)
        self._wake.set()

    def _end_unrouted_episode(self, device: tuple[str, str]) -> None:
        unrouted = self._unrouted.delivered(device)
        if unrouted:
            logger.info(
                "telemetry reaches a subscriber again, after %d batches that reached none",
                unrouted,
            )

    # -- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Publish due batches until ``stop``; wakes on PUBACKs, connects and due times."""
        while not stop.is_set():
            # Cleared before the round, so events arriving during it wake the next one.
            self._wake.clear()
            wait_s = self._batch_interval.total_seconds()
            try:
                wait_s = (await self._publish_ready(drain=False)).wait_s
            except Exception:
                # E.g. the buffer's disk failing: keep trying rather than stop forwarding.
                logger.exception("forwarding failed; trying again")
            await _wait_any(self._wake, stop, timeout_s=wait_s)

    async def drain(self, timeout_s: float) -> bool:
        """Publish everything the buffer holds now and wait for the PUBACKs (shutdown).

        True if the buffer was emptied. False after ``timeout_s`` (the broker may be away:
        what is left is safe on disk for the next start), or when all that is left belongs
        to devices the broker refused: they are not tried again here, as a refusal can cost
        the connection.
        """
        deadline = self._monotonic() + timeout_s
        while self._monotonic() < deadline:
            self._wake.clear()
            round_ = await self._publish_ready(drain=True)
            if self._link.connected and not (
                self._inflight or self._acking or round_.published or round_.waiting or round_.held
            ):
                break
            # Not connected (yet, or again): paho reconnects and resends what is in flight.
            await _wait_any(self._wake, None, timeout_s=min(0.5, deadline - self._monotonic()))
        return (await asyncio.to_thread(self._buffer.stats)).entries == 0

    async def settle(self) -> None:
        """Let deletions of acknowledged entries finish (before the buffer closes)."""
        await asyncio.gather(*self._ack_tasks, return_exceptions=True)

    async def _publish_ready(self, *, drain: bool) -> _Round:
        """Publish what is due, as far as the in-flight window allows."""
        idle_s = self._batch_interval.total_seconds()
        if not self._link.connected or len(self._inflight) >= self._max_inflight:
            # A PUBACK or the next connect wakes the loop again.
            return _Round(published=0, waiting=0, held=0, wait_s=idle_s)
        busy = self._busy()
        entries = await asyncio.to_thread(self._buffer.pending, len(busy) + _WINDOW)
        self._forget_parsed(entries)
        refused_until = self._refusals(keep_expired=drain)
        unrouted_until = self._unrouted.held(self._monotonic())
        candidates = [entry for entry in entries if entry.entry_id not in busy]
        stored = [
            self._stored(entry)
            for entry in candidates
            if (entry.gateway_id, entry.device_id) not in refused_until
            and (entry.gateway_id, entry.device_id) not in unrouted_until
        ]
        held = sum(
            1 for entry in candidates if (entry.gateway_id, entry.device_id) in unrouted_until
        )
        now = self._clock()
        plan = plan_wire_batches(
            stored,
            max_readings=self._max_batch_readings,
            batch_interval=self._batch_interval,
            now=None if drain else now,
        )
        slots = self._max_inflight - len(self._inflight)
        for wire in plan.ready[:slots]:
            self._publish(wire, entries)
        published = min(slots, len(plan.ready))
        waits = [idle_s]
        if plan.next_due is not None and len(plan.ready) <= slots:
            waits.append((plan.next_due - now).total_seconds())
        waits.extend(until - self._monotonic() for until in refused_until.values())
        waits.extend(until - self._monotonic() for until in unrouted_until.values())
        return _Round(
            published=published,
            waiting=len(plan.ready) - published,
            held=held,
            wait_s=max(0.0, min(waits)),
        )

    def _publish(self, wire: WirePlan, entries: Iterable[BufferedBatch]) -> None:
        topic = self._mqtt.telemetry_topic(wire.gateway_id, wire.device_id)
        if wire.unreadable:
            entry_id = wire.entries[0].entry_id
            payload = next(entry.payload for entry in entries if entry.entry_id == entry_id)
            logger.error(
                "buffer entry %d of %s does not parse as a telemetry batch; publishing it as"
                " stored for ingest to reject with a reason",
                entry_id,
                wire.device_id,
            )
        else:
            seq = self._numbers.take(wire.gateway_id, wire.device_id)
            batch = merge(wire, session_id=self._session_id, seq=seq, sent_at=self._clock())
            payload = batch.model_dump_json().encode()
        try:
            mid = self._link.publish(topic, payload)
        except PublishError as exc:
            logger.error("cannot publish %d readings of %s: %s", wire.readings, wire.device_id, exc)
            return
        self._inflight[mid] = _InFlight(
            (wire.gateway_id, wire.device_id), wire.entry_ids, wire.readings, self._monotonic()
        )
        self._metrics.batches_published.inc()
        self._metrics.inflight_batches.set(len(self._inflight))

    async def _release(self, flight: _InFlight) -> None:
        """Delete acknowledged entries; on a storage error they stay and go out again."""
        try:
            stats = await asyncio.to_thread(self._ack, flight.entry_ids)
        except BufferStorageError as exc:
            logger.error("cannot delete acknowledged entries from the buffer: %s", exc)
        else:
            self._metrics.readings_acknowledged.inc(flight.readings)
            self._metrics.pending_batches.set(stats.entries)
            self._metrics.buffer_bytes.set(stats.bytes)
        finally:
            self._acking.difference_update(flight.entry_ids)
            self._wake.set()

    def _ack(self, entry_ids: tuple[int, ...]) -> BufferStats:
        self._buffer.ack(entry_ids)
        return self._buffer.stats()

    # -- bookkeeping --------------------------------------------------------------------------

    def _busy(self) -> set[int]:
        """Entries published and not yet settled: never published twice at once."""
        busy = set(self._acking)
        for flight in self._inflight.values():
            busy.update(flight.entry_ids)
        return busy

    def _refusals(self, *, keep_expired: bool) -> dict[tuple[str, str], float]:
        """Devices waiting out a refusal; expired refusals are forgotten unless kept."""
        if not keep_expired:
            now = self._monotonic()
            for device in [d for d, until in self._refused.items() if until <= now]:
                del self._refused[device]
        return dict(self._refused)

    def _stored(self, entry: BufferedBatch) -> StoredBatch:
        if entry.entry_id not in self._parsed:
            try:
                batch: TelemetryBatch | None = TelemetryBatch.model_validate_json(entry.payload)
            except ValidationError:
                batch = None
            self._parsed[entry.entry_id] = batch
        return StoredBatch(
            entry_id=entry.entry_id,
            gateway_id=entry.gateway_id,
            device_id=entry.device_id,
            appended_at=entry.appended_at,
            batch=self._parsed[entry.entry_id],
        )

    def _forget_parsed(self, entries: list[BufferedBatch]) -> None:
        present = {entry.entry_id for entry in entries}
        for entry_id in [e for e in self._parsed if e not in present]:
            del self._parsed[entry_id]


async def _wait_any(event: asyncio.Event, stop: asyncio.Event | None, *, timeout_s: float) -> None:
    """Wait until ``event`` or ``stop`` is set, or ``timeout_s`` passes."""
    waiters = [asyncio.ensure_future(event.wait())]
    if stop is not None:
        waiters.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(
            waiters, timeout=max(0.0, timeout_s), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
