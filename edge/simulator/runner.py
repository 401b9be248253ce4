"""The two ways to run the simulator: live at the wall clock's pace, or a replay of history.

Both hand finished batches to a ``BatchSink`` (the MQTT publisher in production) and take
their clock as an argument, so they run just as well against a fake clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from edge.simulator.batching import BatchBuilder
from edge.simulator.factory import FactoryLayout, Machine, PowerModel, simulate
from schemas.telemetry import Reading, TelemetryBatch

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BatchSink(Protocol):
    def publish_batch(self, batch: TelemetryBatch) -> None: ...

    def flush(self, timeout: float) -> None: ...


@dataclass(frozen=True, slots=True)
class PublishSummary:
    batches: int
    readings: int


def _utc_now() -> datetime:
    return datetime.now(UTC)


def replay(
    sink: BatchSink,
    model: PowerModel,
    builder: BatchBuilder,
    start: datetime,
    end: datetime,
    *,
    interval_s: float,
    batch_size: int,
    flush_timeout_s: float,
    now: Callable[[], datetime] = _utc_now,
    stop: threading.Event | None = None,
) -> PublishSummary:
    """Publish [start, end) as fast as the sink takes it; returns once all are acknowledged."""
    batches = readings = 0
    logger.info(
        "replaying %s .. %s for %d devices",
        start.isoformat(),
        end.isoformat(),
        len(model.layout.machines),
    )
    for machine, chunk in simulate(model.layout, model, start, end, interval_s, batch_size):
        if stop is not None and stop.is_set():
            logger.info("replay stopped early")
            break
        sink.publish_batch(builder.build(machine, chunk, now()))
        batches += 1
        readings += len(chunk)
        if batches % 1000 == 0:
            logger.info("replay: %d batches, %d readings so far", batches, readings)
    sink.flush(flush_timeout_s)
    logger.info("replay done: %d batches, %d readings acknowledged", batches, readings)
    return PublishSummary(batches, readings)


class _Buffers:
    """Samples per device waiting for the next publish."""

    def __init__(self, layout: FactoryLayout) -> None:
        self._machines = layout.machines
        self._samples: dict[str, list[Reading]] = {m.device_id: [] for m in layout.machines}

    def add(self, machine: Machine, reading: Reading) -> None:
        self._samples[machine.device_id].append(reading)

    def drain(self) -> list[tuple[Machine, list[Reading]]]:
        out = [(m, self._samples[m.device_id]) for m in self._machines]
        for m, _ in out:
            self._samples[m.device_id] = []
        return [(m, chunk) for m, chunk in out if chunk]


def run_live(
    sink: BatchSink,
    model: PowerModel,
    builder: BatchBuilder,
    stop: threading.Event,
    *,
    interval_s: float,
    batch_interval_s: float,
    flush_timeout_s: float,
    clock: Callable[[], float] = time.time,
    wait: Callable[[float], bool] | None = None,
) -> PublishSummary:
    """Sample every device each ``interval_s`` and publish each ``batch_interval_s`` until stopped.

    Samples sit on a grid of whole intervals since the epoch, so a restarted simulator writes
    the same timestamps. ``clock`` gives epoch seconds; ``wait(seconds)`` returns True once
    stopped (``stop.wait`` unless a test supplies its own).
    """
    wait_for = wait if wait is not None else stop.wait
    step_us = round(interval_s * 1e6)
    if step_us <= 0:
        raise ValueError("interval_s must be at least one microsecond")
    ticks_per_batch = max(1, round(batch_interval_s / interval_s))
    machines = model.layout.machines
    buffers = _Buffers(model.layout)
    batches = readings = 0

    def publish_buffered() -> None:
        nonlocal batches, readings
        sent_at = datetime.fromtimestamp(clock(), UTC)
        for machine, chunk in buffers.drain():
            sink.publish_batch(builder.build(machine, chunk, sent_at))
            batches += 1
            readings += len(chunk)

    tick = -(-round(clock() * 1e6) // step_us)  # the first grid point not in the past
    ticks_buffered = 0
    logger.info(
        "live: %d devices every %.3g s, batches every %d samples",
        len(machines),
        interval_s,
        ticks_per_batch,
    )
    while not stop.is_set():
        delay = tick * step_us / 1e6 - clock()
        if delay > 0 and wait_for(delay):
            break
        behind = int((clock() * 1e6 - tick * step_us) // step_us)
        if behind > 0:
            # Too slow to keep up: skip to the present rather than publish a burst of the past.
            logger.warning("live: %d samples late, skipping them", behind)
            tick += behind
        t = _EPOCH + timedelta(microseconds=tick * step_us)
        for machine in machines:
            buffers.add(machine, model.reading(machine, t))
        tick += 1
        ticks_buffered += 1
        if ticks_buffered >= ticks_per_batch:
            publish_buffered()
            ticks_buffered = 0
    publish_buffered()
    sink.flush(flush_timeout_s)
    logger.info("live stopped: %d batches, %d readings acknowledged", batches, readings)
    return PublishSummary(batches, readings)
