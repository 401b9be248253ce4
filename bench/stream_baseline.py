"""The baseline of ``bench/stream.py``: a plain Faust agent that handles one event at a time.

The naive way to write the stream worker: ``async for value in stream``, and for each Kafka
record decode it, store its readings and recompute its energy, emissions and rollups in a
transaction of its own (the pipeline's ``store_batch`` called with that one record). Same
settings, topics and database as the real worker (``python -m carbonflow stream``), read from
the same environment, so the two differ only in how the agent takes its events.

    python bench/stream_baseline.py          # runs until SIGTERM/SIGINT
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from psycopg_pool import AsyncConnectionPool

from carbonflow import logs
from carbonflow.config import DatabaseSettings, KafkaSettings
from services.stream.pipeline import decode_records, store_batch
from services.stream.settings import StreamSettings

logger = logging.getLogger(__name__)


def build_app(kafka: KafkaSettings, db: DatabaseSettings, settings: StreamSettings) -> faust.App:
    """The real worker's Faust settings, with one agent that stores event by event."""
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
    readings_topic = app.topic(kafka.readings_topic, key_type=bytes, value_type=bytes)
    pool = AsyncConnectionPool(
        db.conninfo(), min_size=db.pool_min_size, max_size=db.pool_max_size, open=False
    )
    opened = asyncio.Event()

    @app.agent(readings_topic)
    async def store_each(stream: Any) -> None:
        if not opened.is_set():
            await pool.open(wait=False)
            opened.set()
        async for value in stream:
            now = datetime.now(UTC)
            records, rejects = decode_records([value], kafka.readings_topic, now)
            if records:
                _, refused = await store_batch(
                    pool, records, settings.max_gap_s, source=kafka.readings_topic, now=now
                )
                rejects.extend(refused)
            for reject in rejects:
                # The benchmark's data is valid: a reject means the run is broken, and the
                # benchmark notices the missing rows; say why here.
                logger.error("record not stored: %s %s", reject.reason.value, reject.detail)

    @app.on_before_shutdown.connect
    async def close_pool(_sender: Any, /, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        await pool.close()

    return app


def main() -> None:
    settings = StreamSettings()
    level = "INFO"
    logs.configure(level)
    app = build_app(KafkaSettings(), DatabaseSettings(), settings)
    faust.Worker(app, loglevel=level, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
