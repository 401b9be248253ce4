"""Prometheus metrics of the ingest service, served on 127.0.0.1 at ``/metrics``."""

from __future__ import annotations

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
