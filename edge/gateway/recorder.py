"""Where poll results go: counted, announced, and written to the durable buffer at once.

A poll's readings are on disk (the buffer fsyncs each append) before this returns, and
before anything is published. When the buffer has no room the configured overflow policy
decides what is lost, and the loss is logged as a warning and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from edge.buffer import BatchBuffer, BufferFullError, BufferStats, BufferStorageError
from edge.gateway import metrics as gateway_metrics
from edge.gateway.announcer import DeviceAnnouncer
from edge.gateway.batching import SequenceNumbers, poll_batches
from edge.gateway.metrics import GatewayMetrics
from schemas.telemetry import Reading, TelemetryBatch

logger = logging.getLogger(__name__)


class PollRecorder:
    """The gateway's ``PollListener``."""

    def __init__(
        self,
        buffer: BatchBuffer,
        *,
        gateway_id: str,
        session_id: str,
        max_batch_readings: int,
        metrics: GatewayMetrics,
        announcer: DeviceAnnouncer,
        clock: Callable[[], datetime],
    ) -> None:
        self._buffer = buffer
        self._gateway_id = gateway_id
        self._session_id = session_id
        self._max_batch_readings = max_batch_readings
        self._metrics = metrics
        self._announcer = announcer
        self._clock = clock
        self._numbers = SequenceNumbers()
        self._dropped_readings = buffer.stats().dropped_readings

    async def polled(self, device_id: str, readings: list[Reading]) -> None:
        self._metrics.readings_polled.labels(device_id).inc(len(readings))
        self._metrics.device_up.labels(device_id).set(1)
        self._announcer.answered(device_id)
        for batch in poll_batches(
            gateway_id=self._gateway_id,
            device_id=device_id,
            session_id=self._session_id,
            numbers=self._numbers,
            readings=readings,
            sent_at=self._clock(),
            max_readings=self._max_batch_readings,
        ):
            await self._store(batch)

    def failed(self, device_id: str, reason: str) -> None:
        self._metrics.poll_failures.labels(device_id).inc()
        self._metrics.device_up.labels(device_id).set(0)
        self._announcer.failed(device_id, reason)

    async def _store(self, batch: TelemetryBatch) -> None:
        try:
            stats = await asyncio.to_thread(self._append, batch)
        except BufferFullError as exc:
            policy = self._buffer.policy.value
            self._metrics.buffer_full.labels(policy).inc()
            self._metrics.readings_dropped.labels(gateway_metrics.REJECTED_NEW).inc(
                len(batch.readings)
            )
            logger.warning(
                "buffer full (%s): %d readings of %s are lost: %s",
                policy,
                len(batch.readings),
                batch.device_id,
                exc,
            )
            return
        except BufferStorageError as exc:
            self._metrics.readings_dropped.labels(gateway_metrics.STORAGE_ERROR).inc(
                len(batch.readings)
            )
            logger.error(
                "cannot store %d readings of %s: %s", len(batch.readings), batch.device_id, exc
            )
            return
        self._observe(stats)
        # The record of what was taken: only readings that are safely on disk are logged.
        logger.debug(
            "buffered %s seq %d: %d readings, %s .. %s",
            batch.device_id,
            batch.seq,
            len(batch.readings),
            min(reading.ts for reading in batch.readings).isoformat(),
            max(reading.ts for reading in batch.readings).isoformat(),
        )

    def _append(self, batch: TelemetryBatch) -> BufferStats:
        self._buffer.append(batch)
        return self._buffer.stats()

    def _observe(self, stats: BufferStats) -> None:
        self._metrics.pending_batches.set(stats.entries)
        self._metrics.buffer_bytes.set(stats.bytes)
        dropped = stats.dropped_readings - self._dropped_readings
        if dropped > 0:
            # The buffer deleted its oldest batches to make room (and logged a warning).
            self._dropped_readings = stats.dropped_readings
            self._metrics.buffer_full.labels(self._buffer.policy.value).inc()
            self._metrics.readings_dropped.labels(gateway_metrics.DROPPED_OLDEST).inc(dropped)
