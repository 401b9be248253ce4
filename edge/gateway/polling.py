"""One task per meter: poll on a fixed rate, give up on a slow read, back off from a dead one.

A meter that hangs, refuses or raises only ever delays its own task. Every read runs under
the device's ``timeout_s``; a read that overruns is cancelled and the adapter closed (its
connection may be wedged). An adapter that ignores cancellation keeps its read running, and
the poller then reports each missed poll as a failure instead of starting a second read on
the same adapter. After a failure the next attempt waits ``backoff.initial_s``, then
``multiplier`` times longer each time up to ``backoff.max_s``; the first answer returns the
meter to its regular rate.

Healthy polls keep to a grid anchored at the poller's start, so a slow read does not make
the schedule drift, and ticks missed while the event loop was busy are skipped rather than
made up in a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from edge.adapters.base import MeterAdapter, MeterReadError
from edge.config import BackoffSettings
from edge.errors import EdgeError
from schemas.telemetry import Reading

logger = logging.getLogger(__name__)


class PollError(EdgeError):
    """One poll of one meter gave no readings; ``reason`` says why, for people."""

    def __init__(self, device_id: str, reason: str) -> None:
        self.device_id = device_id
        self.reason = reason
        super().__init__(f"{device_id}: {reason}")


class PollListener(Protocol):
    """Where a poller reports: readings are awaited (they are stored before the next poll)."""

    async def polled(self, device_id: str, readings: list[Reading]) -> None: ...

    def failed(self, device_id: str, reason: str) -> None: ...


def backoff_delay(backoff: BackoffSettings, failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
    if failures < 1:
        raise ValueError("failures counts from 1")
    # In logarithms, so a long outage cannot overflow the power.
    exponent = math.log(backoff.initial_s) + (failures - 1) * math.log(backoff.multiplier)
    return backoff.max_s if exponent >= math.log(backoff.max_s) else math.exp(exponent)


def next_tick(anchor: float, interval_s: float, now: float) -> float:
    """The first tick of the grid ``anchor + k * interval_s`` strictly after ``now``."""
    return anchor + (math.floor((now - anchor) / interval_s) + 1) * interval_s


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DevicePoller:
    """Polls one meter until ``stop`` is set; never raises for anything the meter does."""

    def __init__(
        self,
        adapter: MeterAdapter,
        listener: PollListener,
        *,
        poll_interval_s: float,
        timeout_s: float,
        backoff: BackoffSettings,
        clock: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._adapter = adapter
        self._device_id = adapter.device_id
        self._listener = listener
        self._interval_s = poll_interval_s
        self._timeout_s = timeout_s
        self._backoff = backoff
        self._clock = clock
        self._monotonic = monotonic
        self._read: asyncio.Future[list[Reading]] | None = None

    @property
    def device_id(self) -> str:
        return self._device_id

    async def run(self, stop: asyncio.Event) -> None:
        anchor = self._monotonic()
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._poll_once()
                except PollError as failure:
                    failures += 1
                    delay = backoff_delay(self._backoff, failures)
                    if failures == 1:
                        logger.warning("%s; retrying in %.1f s", failure, delay)
                    else:
                        logger.debug(
                            "%s (%d in a row); next try in %.1f s", failure, failures, delay
                        )
                    self._listener.failed(self._device_id, failure.reason)
                    await _sleep(delay, stop)
                    continue
                if failures:
                    logger.info("%s answers again after %d failed polls", self._device_id, failures)
                    failures = 0
                await _sleep(
                    next_tick(anchor, self._interval_s, self._monotonic()) - self._monotonic(), stop
                )
        finally:
            if self._read is not None and not self._read.done():
                self._read.cancel()

    async def _poll_once(self) -> None:
        if self._read is not None and not self._read.done():
            raise PollError(
                self._device_id, "the previous read is still running (it ignored cancellation)"
            )
        read = asyncio.ensure_future(self._adapter.read(self._clock()))
        read.add_done_callback(_consume_outcome)
        self._read = read
        try:
            done, _ = await asyncio.wait({read}, timeout=self._timeout_s)
        except asyncio.CancelledError:
            read.cancel()
            raise
        if not done:
            read.cancel()
            await self._reset_after_timeout(read)
            raise PollError(self._device_id, f"no answer within {self._timeout_s:g} s")
        try:
            readings = read.result()
        except MeterReadError as exc:
            raise PollError(self._device_id, exc.reason) from exc
        except Exception as exc:
            # A bug in an adapter must not end this meter's polling, let alone the gateway.
            logger.exception("%s: the adapter failed unexpectedly", self._device_id)
            raise PollError(self._device_id, f"adapter error: {type(exc).__name__}: {exc}") from exc
        if not readings:
            raise PollError(self._device_id, "the meter returned no readings")
        await self._listener.polled(self._device_id, readings)

    async def _reset_after_timeout(self, read: asyncio.Future[list[Reading]]) -> None:
        """Let the cancelled read unwind (briefly), then drop the possibly wedged connection."""
        grace = min(self._timeout_s, 1.0)
        done, _ = await asyncio.wait({read}, timeout=grace)
        if not done:
            logger.error(
                "%s: the adapter did not stop its read %.1f s after cancellation",
                self._device_id,
                grace,
            )
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._adapter.close()
        except Exception:
            logger.exception("%s: closing the adapter after a timeout failed", self._device_id)


def _consume_outcome(read: asyncio.Future[list[Reading]]) -> None:
    # A read abandoned after its timeout may still fail later; its outcome has been
    # reported already, so asyncio must not log it as never retrieved.
    if not read.cancelled():
        read.exception()


async def _sleep(seconds: float, stop: asyncio.Event) -> None:
    """Sleep up to ``seconds``; wake at once when ``stop`` is set."""
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
