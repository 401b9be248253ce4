"""Composition root of the stream processor: the Faust app, its topics and its agents.

The agents stay thin: take a batch from the stream, decode it, hand it to the pipeline
(readings and energy) or the event store (device events), send what was rejected to the
dead-letter topic. A batch's offsets may be committed only once it is stored and its dead
letters are acknowledged; see ``_complete`` for how that holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from psycopg_pool import AsyncConnectionPool

from carbonflow.config import DatabaseSettings, KafkaSettings
from schemas import DeadLetterRecord
from services.stream import metrics
from services.stream.emissions import SCOPE2
from services.stream.events import decode_events, store_events
from services.stream.fuel_emissions import SCOPE1
from services.stream.pipeline import decode_records, store_batch
from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)


def build_app(kafka: KafkaSettings, db: DatabaseSettings, settings: StreamSettings) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        datadir=settings.data_dir or str(Path(tempfile.gettempdir()) / f"{settings.app_id}-data"),
        key_serializer="raw",
        value_serializer="raw",
        topic_replication_factor=1,
        topic_partitions=kafka.partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_host="127.0.0.1",
        web_port=settings.web_port,
        web_in_thread=False,
    )
    # Faust's own consumer/producer metrics and ours, on Faust's web server at /metrics.
    setup_prometheus_sensors(app, name_prefix="carbonflow_faust")
    readings_topic = app.topic(kafka.readings_topic, key_type=bytes, value_type=bytes)
    deadletter_topic = app.topic(kafka.deadletter_topic, key_type=bytes, value_type=bytes)
    events_topic = app.topic(kafka.events_topic, key_type=bytes, value_type=bytes)
    pool = AsyncConnectionPool(
        db.conninfo(), min_size=db.pool_min_size, max_size=db.pool_max_size, open=False
    )
    opened = asyncio.Event()

    async def open_pool() -> None:
        if not opened.is_set():
            await pool.open(wait=False)  # connections come up in the background
            opened.set()

    async def dead_letter(rejects: list[DeadLetterRecord]) -> None:
        for reject in rejects:
            metrics.DEAD_LETTERS.labels(reject.reason.value).inc()
            # Wait for Kafka's ack: this batch's offsets may be committed next.
            sent = await deadletter_topic.send(
                key=(reject.device_id or "").encode(), value=reject.model_dump_json().encode()
            )
            await sent

    async def handle(values: list[bytes]) -> None:
        now = datetime.now(UTC)
        metrics.RECORDS.inc(len(values))
        records, rejects = decode_records(values, kafka.readings_topic, now)
        if records:
            with metrics.BATCH_SECONDS.time():
                result, refused = await store_batch(
                    pool,
                    records,
                    settings.max_gap_s,
                    source=kafka.readings_topic,
                    now=now,
                    lateness=timedelta(days=settings.lateness_days),
                )
            rejects.extend(refused)
            metrics.READINGS_STORED.inc(result.new_readings)
            metrics.ENERGY_MINUTES.inc(result.energy_minutes)
            metrics.EMISSION_MINUTES.labels(SCOPE2).inc(result.emission_minutes)
            metrics.EMISSION_MINUTES.labels(SCOPE1).inc(result.scope1_minutes)
            metrics.UNPRICED_MINUTES.inc(result.unpriced_minutes)
            metrics.ROLLUP_ROWS.inc(result.rollup_rows)
            metrics.LATE_READINGS.inc(result.late_readings)
            logger.debug("stored %s", result)
        await dead_letter(rejects)

    async def handle_events(values: list[bytes]) -> None:
        now = datetime.now(UTC)
        metrics.EVENT_RECORDS.inc(len(values))
        events, rejects = decode_events(values, kafka.events_topic, now)
        if events:
            added, refused = await store_events(pool, events, source=kafka.events_topic, now=now)
            rejects.extend(refused)
            metrics.EVENTS_STORED.inc(added)
        await dead_letter(rejects)

    # Several batches in hand at once: while the database works on one, the next is
    # decoded and prepared. Writes are idempotent and serialised per device (advisory
    # locks), and Faust commits an offset only when every event before it is acknowledged.
    @app.agent(readings_topic, concurrency=settings.batches_in_flight)
    async def store_readings(stream: Any) -> None:
        await open_pool()
        async for values in stream.take(settings.batch_max_events, within=settings.batch_within_s):
            await _complete(handle(values), settings.shutdown_grace_s)

    @app.agent(events_topic)
    async def store_device_events(stream: Any) -> None:
        await open_pool()
        async for values in stream.take(settings.batch_max_events, within=settings.batch_within_s):
            await _complete(handle_events(values), settings.shutdown_grace_s)

    @app.on_before_shutdown.connect
    async def close_pool(_sender: Any, /, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        await pool.close()

    return app


async def _complete(work: Coroutine[Any, Any, None], grace_s: float) -> None:
    """Handle one taken batch to its end, or end the process.

    Faust acknowledges a taken batch however the loop body is left, even by an exception,
    and commits it later. So the body must only ever be left with the batch stored: shutdown
    waits for it, and an unexpected error ends the process before anything can be committed
    (the batch is then consumed again on restart).
    """
    handling = asyncio.ensure_future(work)
    try:
        await asyncio.shield(handling)
    except asyncio.CancelledError:
        await _finish_or_exit(handling, grace_s)
        raise
    except Exception:
        logger.exception("storing a batch failed; exiting without committing it")
        _exit_now()


async def _finish_or_exit(handling: asyncio.Future[None], grace_s: float) -> None:
    """On shutdown, let the batch in hand be stored; if it cannot be, exit uncommitted."""
    try:
        await asyncio.wait_for(handling, grace_s)
    except BaseException:
        logger.exception("stopping with a batch not stored; exiting without committing it")
        _exit_now()


def _exit_now() -> None:
    logging.shutdown()
    os._exit(70)  # EX_SOFTWARE; skips Faust's shutdown, and with it the offset commit


def run(
    kafka: KafkaSettings, db: DatabaseSettings, settings: StreamSettings, loglevel: str
) -> None:
    """Run one stream worker until it is stopped (SIGINT/SIGTERM)."""
    app = build_app(kafka, db, settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
