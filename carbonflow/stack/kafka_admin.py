"""Kafka admin helpers usable without a Stack: a readiness probe and idempotent topic creation.

Synchronous wrappers run their own event loop (asyncio.run); async code calls the ``*_async``
variants directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code

from carbonflow.config import KafkaSettings
from carbonflow.errors import StackError

logger = logging.getLogger(__name__)

NO_ERROR = 0
TOPIC_ALREADY_EXISTS = 36


def _admin(kafka: KafkaSettings, request_timeout_ms: int) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id="carbonflow-stack-admin",
        request_timeout_ms=request_timeout_ms,
    )


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    """aiokafka logs every refused connection at ERROR; while probing that is expected."""
    log = logging.getLogger("aiokafka")
    previous = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(previous)


async def probe_async(kafka: KafkaSettings, timeout_s: float = 5.0) -> str:
    """Bootstrap a client and fetch cluster metadata: the broker answers as a broker."""
    admin = _admin(kafka, request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            cluster = await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError) as exc:
        raise StackError(f"Kafka at {kafka.bootstrap_servers} not answering: {exc!r}") from exc
    finally:
        await admin.close()
    brokers = cluster.get("brokers") or []
    if not brokers:
        raise StackError("Kafka answered with no brokers in its metadata yet")
    return f"{len(brokers)} broker(s), controller {cluster.get('controller_id')}"


def probe(kafka: KafkaSettings, timeout_s: float = 5.0) -> str:
    with _quiet_aiokafka():
        return asyncio.run(probe_async(kafka, timeout_s))


#: Every record must fit: a full telemetry batch (10,000 readings) is about 1.2 MB of JSON.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def topic_config(kafka: KafkaSettings, name: str) -> dict[str, str]:
    """Per-topic settings: dead letters are kept until someone deals with them."""
    config = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    if name == kafka.deadletter_topic:
        config["retention.ms"] = "-1"
        config["retention.bytes"] = "-1"
    return config


async def ensure_topics_async(
    kafka: KafkaSettings,
    names: Sequence[str],
    partitions: int,
    *,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet (replication 1); return those created.

    Returns once every named topic has a leader for each partition, so a producer can use
    it straight away. An existing topic keeps its partition count (a warning says so when it
    differs), since changing it would remap device keys to partitions.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    admin = _admin(kafka, request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in wanted if name not in existing]
            created: list[str] = []
            if missing:
                response = await admin.create_topics(
                    [
                        NewTopic(name, partitions, 1, topic_configs=topic_config(kafka, name))
                        for name in missing
                    ],
                    timeout_ms=int(timeout_s * 1000),
                )
                for entry in response.topic_errors:
                    name, code = entry[0], entry[1]
                    if code == NO_ERROR:
                        created.append(name)
                    elif code != TOPIC_ALREADY_EXISTS:  # another client won the race: fine
                        message = entry[2] if len(entry) > 2 else ""
                        raise StackError(
                            f"cannot create Kafka topic {name}: "
                            f"{for_code(code).__name__} {message or ''}".rstrip()
                        )
                if created:
                    logger.info(
                        "created Kafka topics %s (%d partitions)", ", ".join(created), partitions
                    )
            await _wait_for_leaders(admin, wanted, partitions, set(created))
    except (KafkaError, OSError, TimeoutError) as exc:
        raise StackError(f"Kafka topic setup on {kafka.bootstrap_servers} failed: {exc!r}") from exc
    finally:
        await admin.close()
    return created


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], partitions: int, created: set[str]
) -> None:
    delay = 0.05
    while True:
        topics: list[dict[str, Any]] = await admin.describe_topics(names)
        pending = [
            topic["topic"]
            for topic in topics
            if topic["error_code"] != NO_ERROR
            or not topic["partitions"]
            or any(part["leader"] < 0 for part in topic["partitions"])
        ]
        if not pending:
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
    for topic in topics:
        count = len(topic["partitions"])
        if topic["topic"] not in created and count != partitions:
            logger.warning(
                "Kafka topic %s exists with %d partitions (asked for %d); left as is",
                topic["topic"],
                count,
                partitions,
            )


def ensure_topics(
    kafka: KafkaSettings,
    names: Sequence[str],
    partitions: int,
    *,
    timeout_s: float = 30.0,
) -> list[str]:
    """Synchronous ensure_topics_async (runs its own event loop)."""
    started = time.monotonic()
    created = asyncio.run(ensure_topics_async(kafka, names, partitions, timeout_s=timeout_s))
    logger.debug("ensure_topics %s took %.2fs", list(names), time.monotonic() - started)
    return created
