"""Prometheus metrics of the stream worker, served by Faust's web server at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECORDS = Counter("carbonflow_stream_records", "Readings records taken from Kafka")
READINGS_STORED = Counter(
    "carbonflow_stream_readings_stored", "Readings newly stored (redeliveries not counted)"
)
ENERGY_MINUTES = Counter(
    "carbonflow_stream_energy_minutes_written", "Per-minute energy rows computed and upserted"
)
EMISSION_MINUTES = Counter(
    "carbonflow_stream_emission_minutes_written",
    "Per-minute emissions rows computed and upserted, by scope",
    ["scope"],
)
UNPRICED_MINUTES = Counter(
    "carbonflow_stream_unpriced_minutes",
    "Energy minutes no emission factor could price (logged with the reason)",
)
LATE_READINGS = Counter(
    "carbonflow_stream_late_readings",
    "Readings stored past the lateness: they update no figures (reported as device events)",
)
ROLLUP_ROWS = Counter(
    "carbonflow_stream_rollup_rows_written", "Hourly rollup rows along the asset tree changed"
)
DEAD_LETTERS = Counter(
    "carbonflow_stream_dead_letters", "Records sent to the dead-letter topic, by reason", ["reason"]
)
EVENT_RECORDS = Counter("carbonflow_stream_event_records", "Device event records taken from Kafka")
EVENTS_STORED = Counter(
    "carbonflow_stream_device_events_stored",
    "Device events newly stored (redeliveries and repeated presence not counted)",
)
DB_RETRIES = Counter("carbonflow_stream_db_retries", "Batches retried after a database error")
BATCH_SECONDS = Histogram(
    "carbonflow_stream_batch_seconds",
    "Time to store one batch and recompute its energy, in one transaction",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
