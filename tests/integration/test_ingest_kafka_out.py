"""Ingest's Kafka output against the real broker: records handed over as one batch per
partition land where ``AIOKafkaProducer.send`` puts the same keys, in order, all of them."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from carbonflow.config import KafkaSettings
from carbonflow.stack import Stack
from carbonflow.stack.kafka_admin import ensure_topics_async
from services.ingest.kafka_out import PartitionedSender

pytestmark = pytest.mark.integration

PARTITIONS = 6


async def read_all(
    kafka: KafkaSettings, topic: str, expected: int
) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every record, in each partition's order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen: list[tuple[int, bytes, bytes]] = []
        async with asyncio.timeout(60):
            while len(seen) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    seen.extend((tp.partition, r.key or b"", r.value or b"") for r in records)
        return seen
    finally:
        await consumer.stop()


def test_batches_land_where_send_puts_each_key_in_order(stack: Stack, run_id: str) -> None:
    kafka = KafkaSettings()
    topic = f"carbonflow.test.kafka-out.{run_id}"
    rng = random.Random(7)
    keys = [f"meter-{n:03d}".encode() for n in range(40)]
    # Some values big enough that a partition's batch fills up and a second one starts.
    records = [
        (topic, key, f"{n}:".encode() + bytes(rng.choice([10, 300_000])))
        for n, key in enumerate(rng.choice(keys) for _ in range(400))
    ]

    async def scenario() -> tuple[list[tuple[int, bytes, bytes]], dict[bytes, int]]:
        await ensure_topics_async(kafka, [topic], PARTITIONS)
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
        )
        await producer.start()
        try:
            sender = PartitionedSender(producer)
            await asyncio.gather(*await sender.send(records[:200]))
            await asyncio.gather(*await sender.send(records[200:]))
            # The reference: where the producer's own send() places each key.
            reference = {}
            for key in keys:
                metadata = await producer.send_and_wait(topic, b"reference", key=key)
                reference[key] = metadata.partition
        finally:
            await producer.stop()
        return await read_all(kafka, topic, len(records) + len(keys)), reference

    seen, reference = asyncio.run(scenario())
    data = [(p, k, v) for p, k, v in seen if v != b"reference"]
    assert len(data) == len(records)
    for partition, key, _ in data:
        assert partition == reference[key], key
    # Per key, the records arrive in the order they were handed over.
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for _, key, value in data:
        by_key[key].append(int(value.split(b":", 1)[0]))
    for key, order in by_key.items():
        assert order == sorted(order), key
    assert sorted(n for order in by_key.values() for n in order) == list(range(len(records)))
