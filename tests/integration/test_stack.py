"""The local stack against its real servers: running, idempotent, and usable by clients."""

from __future__ import annotations

import asyncio
import stat
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from paho.mqtt.client import Client, MQTTMessage

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings
from carbonflow.errors import StackError
from carbonflow.mqtt_client import new_client
from carbonflow.stack import Stack
from carbonflow.stack.kafka_admin import ensure_topics
from carbonflow.stack.probes import mqtt_probe

pytestmark = pytest.mark.integration

SERVICES = {"mosquitto", "postgres", "kafka"}


def test_status_reports_every_service_running(stack: Stack) -> None:
    statuses = {status.name: status for status in stack.status()}

    assert set(statuses) == SERVICES
    for status in statuses.values():
        assert status.running, status
        assert status.pid is not None
        assert status.pid > 0
        assert "accepting connections" in status.detail, status


def test_up_again_keeps_the_same_processes(stack: Stack) -> None:
    before = {status.name: status.pid for status in stack.status()}

    after = {status.name: status.pid for status in stack.up()}

    assert after == before


@pytest.fixture
def scratch_db(stack: Stack, run_id: str) -> Iterator[DatabaseSettings]:
    name = f"cf_stack_test_{run_id}"
    stack.create_database(name)
    yield DatabaseSettings(name=name)
    stack.drop_database(name)


def test_create_database_is_idempotent_and_has_timescaledb(
    stack: Stack, scratch_db: DatabaseSettings
) -> None:
    stack.create_database(scratch_db.name)  # second time: no error, nothing changes

    with psycopg.connect(scratch_db.conninfo(), autocommit=True) as conn:
        version = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()

    assert version is not None
    assert version[0].startswith("2.")
    assert owner == (scratch_db.user,)


def test_app_role_can_create_and_query_a_hypertable(scratch_db: DatabaseSettings) -> None:
    with psycopg.connect(scratch_db.conninfo(), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE readings (ts timestamptz NOT NULL, device_id text NOT NULL,"
            " value double precision NOT NULL, PRIMARY KEY (device_id, ts))"
        )
        conn.execute("SELECT create_hypertable('readings', by_range('ts', INTERVAL '1 day'))")
        conn.execute(
            "INSERT INTO readings SELECT t, 'meter-1', 1.0"
            " FROM generate_series('2024-01-01 00:00+00'::timestamptz,"
            " '2024-01-03 23:00+00', INTERVAL '1 hour') AS t"
        )
        chunks = conn.execute("SELECT count(*) FROM show_chunks('readings')").fetchone()
        daily = conn.execute(
            "SELECT time_bucket(INTERVAL '1 day', ts) AS day, sum(value) FROM readings"
            " GROUP BY day ORDER BY day"
        ).fetchall()

    assert chunks == (3,)
    assert [total for _, total in daily] == [24.0, 24.0, 24.0]


def test_drop_database_refuses_system_databases(stack: Stack) -> None:
    with pytest.raises(StackError):
        stack.drop_database("postgres")


def test_default_topics_exist_with_configured_partitions(stack: Stack) -> None:
    kafka = KafkaSettings()

    async def partitions() -> dict[str, int]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            return {
                topic: len(await producer.partitions_for(topic))
                for topic in (kafka.readings_topic, kafka.deadletter_topic)
            }
        finally:
            await producer.stop()

    counts = asyncio.run(partitions())

    assert counts == {
        kafka.readings_topic: kafka.partitions,
        kafka.deadletter_topic: kafka.partitions,
    }


def test_ensure_topics_is_idempotent_and_topics_carry_messages(stack: Stack, run_id: str) -> None:
    kafka = KafkaSettings()
    topic = f"carbonflow.test.stack.{run_id}"

    first = stack.ensure_topics([topic], partitions=3)
    second = ensure_topics(kafka, [topic], partitions=3)

    assert first == [topic]
    assert second == []

    payload = uuid.uuid4().bytes

    async def round_trip() -> tuple[int, bytes | None, bytes | None]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            partition_count = len(await producer.partitions_for(topic))
            await producer.send_and_wait(topic, payload, key=b"meter-1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=f"stack-test-{run_id}",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            message = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        return partition_count, message.key, message.value

    partition_count, key, value = asyncio.run(round_trip())

    assert partition_count == 3
    assert (key, value) == (b"meter-1", payload)


def test_mqtt_publish_subscribe_round_trip(
    stack: Stack, mqtt_settings: MqttSettings, run_id: str
) -> None:
    # The platform service identity may write its own status and read every status.
    topic = mqtt_settings.service_status_topic("ingest", f"stack-test-{run_id}")
    payload = uuid.uuid4().bytes
    subscribed = threading.Event()
    received: list[MQTTMessage] = []
    got_it = threading.Event()

    def client(name: str) -> Client:
        c = new_client(mqtt_settings, client_id=f"{name}-{run_id}")
        c.connect(mqtt_settings.host, mqtt_settings.broker_port, mqtt_settings.keepalive_s)
        c.loop_start()
        return c

    subscriber = client("stack-test-sub")
    subscriber.on_subscribe = lambda *_args: subscribed.set()

    def on_message(_client: Client, _userdata: object, message: MQTTMessage) -> None:
        received.append(message)
        got_it.set()

    subscriber.on_message = on_message
    publisher = client("stack-test-pub")
    try:
        subscriber.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK"
        info = publisher.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
        assert got_it.wait(10), "message never arrived"
    finally:
        for c in (publisher, subscriber):
            c.disconnect()
            c.loop_stop()

    assert received[0].payload == payload
    assert received[0].qos == 1


def test_service_credentials_are_private_and_work_over_tls(
    stack: Stack, mqtt_settings: MqttSettings
) -> None:
    assert stat.S_IMODE(stack.services_env.stat().st_mode) == 0o600
    tls = stack.tls_settings(mqtt_settings)

    assert mqtt_probe(tls) == "MQTT CONNACK received"
