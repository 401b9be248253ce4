"""Composition root of the stream processor: the Faust app, its topics and its one agent.

The agent stays thin: take a batch from the stream, decode it, hand it to the pipeline,
send what was rejected to the dead-letter topic. Offsets are committed by Faust only after
the agent has moved past a batch, i.e. after its database transaction committed.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime
from typing import Any

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from psycopg_pool import AsyncConnectionPool

from carbonflow.config import DatabaseSettings, KafkaSettings
from services.stream import metrics
from services.stream.pipeline import decode_records, store_batch
from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)


def build_app(kafka: KafkaSettings, db: DatabaseSettings, settings: StreamSettings) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        datadir=settings.data_dir or tempfile.mkdtemp(prefix="carbonflow-stream-"),
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
    pool = AsyncConnectionPool(
        db.conninfo(), min_size=db.pool_min_size, max_size=db.pool_max_size, open=False
    )

    @app.agent(readings_topic)
    async def store_readings(stream: Any) -> None:
        await pool.open(wait=True)
        try:
            async for values in stream.take(
                settings.batch_max_events, within=settings.batch_within_s
            ):
                now = datetime.now(UTC)
                metrics.RECORDS.inc(len(values))
                records, rejects = decode_records(values, kafka.readings_topic, now)
                if records:
                    with metrics.BATCH_SECONDS.time():
                        result, refused = await store_batch(
                            pool, records, settings.max_gap_s, source=kafka.readings_topic, now=now
                        )
                    rejects.extend(refused)
                    metrics.READINGS_STORED.inc(result.new_readings)
                    metrics.ENERGY_MINUTES.inc(result.energy_minutes)
                    logger.debug("stored %s", result)
                for reject in rejects:
                    metrics.DEAD_LETTERS.labels(reject.reason.value).inc()
                    key = (reject.device_id or "").encode()
                    # Wait for Kafka's ack: the offset of this batch may be committed next.
                    sent = await deadletter_topic.send(
                        key=key, value=reject.model_dump_json().encode()
                    )
                    await sent
        finally:
            await pool.close()

    return app


def run(
    kafka: KafkaSettings, db: DatabaseSettings, settings: StreamSettings, loglevel: str
) -> None:
    """Run one stream worker until it is stopped (SIGINT/SIGTERM)."""
    app = build_app(kafka, db, settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
