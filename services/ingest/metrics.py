"""Prometheus metrics of the ingest service, served on 127.0.0.1 at ``/metrics``."""

from __future__ import annotations

from collections import defaultdict

from prometheus_client import Counter, Histogram

MESSAGES = Counter("carbonflow_ingest_messages", "Telemetry (JSON) MQTT messages received")
PRESENCE_MESSAGES = Counter(
    "carbonflow_ingest_presence_messages", "Gateway and meter status MQTT messages received"
)
SPARKPLUG_MESSAGES = Counter(
    "carbonflow_ingest_sparkplug_messages",
    "Sparkplug B MQTT messages received, by message type",
    ["message_type"],
)
SPARKPLUG_METRICS_SKIPPED = Counter(
    "carbonflow_ingest_sparkplug_metrics_skipped",
    "Sparkplug metrics carrying no reading: null values, transient metrics",
    ["why"],
)
SPARKPLUG_REBIRTH_REQUESTS = Counter(
    "carbonflow_ingest_sparkplug_rebirth_requests",
    "NCMD Node Control/Rebirth requests published (data came before a birth)",
)
EVENTS = Counter(
    "carbonflow_ingest_device_events",
    "Device events written to the events topic, by source kind and event",
    ["source_kind", "event"],
)
SEQUENCE_GAPS = Counter(
    "carbonflow_ingest_sequence_gap_messages",
    "Messages found missing from seq gaps (telemetry batches, Sparkplug messages)",
    ["source_kind"],
)
READINGS_FORWARDED = Counter(
    "carbonflow_ingest_readings_forwarded", "Valid readings written to the readings topic"
)
DEAD_LETTERS = Counter(
    "carbonflow_ingest_dead_letters", "Rejected messages or readings, by reason", ["reason"]
)
KAFKA_RETRIES = Counter("carbonflow_ingest_kafka_retries", "Kafka sends retried after an error")
FORWARD_SECONDS = Histogram(
    "carbonflow_ingest_forward_seconds",
    "From taking a batch of MQTT messages to Kafka acknowledging all of it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class BatchTally:
    """Counts a batch's worth of increments, then adds them to the counters at once: each
    increment of a Prometheus counter takes a lock, too dear once per message."""

    def __init__(self) -> None:
        self._plain: defaultdict[Counter, float] = defaultdict(float)
        self._labelled: defaultdict[tuple[Counter, tuple[str, ...]], float] = defaultdict(float)

    def inc(self, counter: Counter, amount: float = 1, *labels: str) -> None:
        if labels:
            self._labelled[counter, labels] += amount
        else:
            self._plain[counter] += amount

    def flush(self) -> None:
        for counter, amount in self._plain.items():
            counter.inc(amount)
        for (counter, labels), amount in self._labelled.items():
            counter.labels(*labels).inc(amount)
        self._plain.clear()
        self._labelled.clear()
