"""The stream worker waits out a database it cannot write to, and loses nothing meanwhile.

A migration that briefly renames the readings table is the outage here: every write fails
with an error the worker must not mistake for bad data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from carbonflow import db
from carbonflow.config import DatabaseSettings, KafkaSettings
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from carbonflow.stack.kafka_admin import ensure_topics
from carbonflow.supervise import ServiceProcess, free_port, running, wait_for
from edge.simulator.factory import small_factory
from schemas import Reading, ReadingsRecord

pytestmark = pytest.mark.integration

DB_NAME = "carbonflow_test_resilience"


@pytest.fixture(scope="module")
def database(stack: Stack) -> DatabaseSettings:
    stack.drop_database(DB_NAME)
    stack.create_database(DB_NAME)
    settings = DatabaseSettings(name=DB_NAME)
    db.migrate(settings)
    with psycopg.connect(settings.conninfo()) as conn:
        upsert_layout(conn, small_factory(2, prefix="res"))
    return settings


def records(n: int) -> list[ReadingsRecord]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    return [
        ReadingsRecord(
            gateway_id="gw",
            device_id=device,
            session_id="res",
            seq=k,
            sent_at=start,
            received_at=start,
            readings=[
                Reading(
                    ts=start + timedelta(seconds=10 * (k * 5 + j)),
                    metric="active_power",
                    value=1000.0 + j,
                    unit="W",
                )
                for j in range(5)
            ],
        )
        for device in small_factory(2, prefix="res").devices()
        for k in range(n)
    ]


def produce(kafka: KafkaSettings, batch: list[ReadingsRecord]) -> None:
    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for record in batch:
                await producer.send_and_wait(
                    kafka.readings_topic,
                    key=record.device_id.encode(),
                    value=record.model_dump_json().encode(),
                )
        finally:
            await producer.stop()

    asyncio.run(go())


def count(database: DatabaseSettings, table: str = "readings") -> int:
    with psycopg.connect(database.conninfo()) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def metric(url: str, name: str) -> float | None:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.TransportError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


@pytest.fixture
def worker(
    database: DatabaseSettings, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, KafkaSettings, str]]:
    kafka = KafkaSettings(
        readings_topic=f"carbonflow.res-{run_id}.readings",
        deadletter_topic=f"carbonflow.res-{run_id}.deadletter",
        partitions=2,
    )
    ensure_topics(kafka, [kafka.readings_topic, kafka.deadletter_topic], kafka.partitions)
    port = free_port()
    env = {
        "CARBONFLOW_DB_NAME": database.name,
        "CARBONFLOW_KAFKA_READINGS_TOPIC": kafka.readings_topic,
        "CARBONFLOW_KAFKA_DEADLETTER_TOPIC": kafka.deadletter_topic,
        "CARBONFLOW_STREAM_APP_ID": f"stream-res-{run_id}",
        "CARBONFLOW_STREAM_WEB_PORT": str(port),
    }
    log_dir = tmp_path_factory.mktemp("resilience")
    with running("stream", log_dir, env) as process:
        yield process, kafka, f"http://127.0.0.1:{port}/metrics"


def test_worker_waits_out_a_table_it_cannot_write_and_then_stores_everything(
    database: DatabaseSettings, worker: tuple[ServiceProcess, KafkaSettings, str]
) -> None:
    process, kafka, metrics_url = worker
    batch = records(20)
    expected = sum(len(r.readings) for r in batch)
    with psycopg.connect(database.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER TABLE readings RENAME TO readings_migrating")
    try:
        produce(kafka, batch)
        retries = wait_for(
            lambda: r if (r := metric(metrics_url, "carbonflow_stream_db_retries_total")) else None,
            timeout_s=60,
            what="the worker to retry against the missing table",
            services=(process,),
        )
        assert retries >= 1
        assert process.alive()
    finally:
        with psycopg.connect(database.conninfo(), autocommit=True) as conn:
            conn.execute("ALTER TABLE readings_migrating RENAME TO readings")
    wait_for(
        lambda: True if count(database) == expected else None,
        timeout_s=90,
        what=f"{expected} readings once the table is back",
        services=(process,),
    )
    assert count(database, "energy_1m") > 0
    assert process.stop() == 0, process.log_tail()
