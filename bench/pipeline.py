"""End-to-end pipeline benchmark: MQTT publish -> ingest -> Kafka -> stream -> TimescaleDB.

Publishes N readings as fast as the broker takes them, then reports JSON with end-to-end
readings/s (first publish to last row stored) and the p50/p99 latency from a batch's publish
to its rows being stored. Runs its own ingest and stream processes against the local stack,
on a database and topics of its own.

    python bench/pipeline.py --readings 200000 --batch 100 --devices 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from carbonflow import db
from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from carbonflow.stack.kafka_admin import ensure_topics
from carbonflow.supervise import running, wait_for, wait_for_status
from edge.simulator.factory import small_factory
from edge.simulator.publisher import Publisher
from schemas import Reading, TelemetryBatch

BENCH_DB = "carbonflow_bench"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100, help="readings per MQTT message")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    stack_settings, mqtt_settings = StackSettings(), MqttSettings(topic_root=f"cf-bench-{run}/v1")
    kafka = KafkaSettings(
        readings_topic=f"carbonflow.bench-{run}.readings",
        deadletter_topic=f"carbonflow.bench-{run}.deadletter",
        partitions=args.partitions,
    )
    database = DatabaseSettings(name=BENCH_DB)
    stack = Stack(stack=stack_settings, mqtt=mqtt_settings, kafka=kafka, db=DatabaseSettings())
    stack.up()
    stack.drop_database(BENCH_DB)
    stack.create_database(BENCH_DB)
    db.migrate(database)
    layout = small_factory(args.devices)
    with psycopg.connect(database.conninfo()) as conn:
        upsert_layout(conn, layout)
    ensure_topics(kafka, [kafka.readings_topic, kafka.deadletter_topic], kafka.partitions)

    # Readings at 1 s intervals ending now, spread evenly over the devices.
    per_device = max(1, args.readings // len(layout.machines))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=per_device)
    batches: list[TelemetryBatch] = []
    for machine in layout.machines:
        for seq, first in enumerate(range(0, per_device, args.batch)):
            readings = [
                Reading(
                    ts=start + timedelta(seconds=k),
                    metric="active_power",
                    value=1000.0 + k % 50,
                    unit="W",
                )
                for k in range(first, min(first + args.batch, per_device))
            ]
            batches.append(
                TelemetryBatch(
                    gateway_id=machine.gateway_id,
                    device_id=machine.device_id,
                    session_id=f"bench-{run}",
                    seq=seq,
                    sent_at=start,
                    readings=readings,
                )
            )
    total = sum(len(b.readings) for b in batches)
    # Interleave devices, as a real fleet would.
    batches.sort(key=lambda b: (b.seq, b.device_id))

    env = {
        "CARBONFLOW_DB_NAME": BENCH_DB,
        "CARBONFLOW_MQTT_TOPIC_ROOT": mqtt_settings.topic_root,
        "CARBONFLOW_KAFKA_READINGS_TOPIC": kafka.readings_topic,
        "CARBONFLOW_KAFKA_DEADLETTER_TOPIC": kafka.deadletter_topic,
        "CARBONFLOW_INGEST_CLIENT_ID": f"ingest-bench-{run}",
        "CARBONFLOW_STREAM_APP_ID": f"stream-bench-{run}",
        "CARBONFLOW_STREAM_WEB_PORT": "16067",
    }
    log_dir = Path(tempfile.mkdtemp(prefix="carbonflow-bench-"))
    publish_times: dict[tuple[str, int], float] = {}
    with running("ingest", log_dir, env) as ingest, running("stream", log_dir, env) as stream:
        wait_for_status(mqtt_settings, "ingest", f"ingest-bench-{run}", "online", ingest)
        with Publisher(mqtt_settings, client_id=f"bench-{run}") as publisher:
            t0 = time.time()
            for batch in batches:
                publish_times[(batch.device_id, batch.seq)] = time.time()
                publisher.publish_batch(batch)
            publisher.flush(timeout=args.timeout)
            published_s = time.time() - t0
        wait_for(
            lambda: True if _count(database) >= total else None,
            timeout_s=args.timeout,
            what=f"{total} readings stored",
            services=(ingest, stream),
        )
    with psycopg.connect(database.conninfo()) as conn:
        rows = conn.execute(
            "SELECT device_id, extract(epoch FROM ts), extract(epoch FROM stored_at) FROM readings"
        ).fetchall()
    latencies = []
    last_stored = 0.0
    for device_id, ts, stored_at in rows:
        seq = int((float(ts) - start.timestamp()) // args.batch)
        latencies.append(float(stored_at) - publish_times[(device_id, seq)])
        last_stored = max(last_stored, float(stored_at))
    latencies.sort()
    result = {
        "benchmark": "pipeline",
        "readings": total,
        "messages": len(batches),
        "batch_size": args.batch,
        "devices": len(layout.machines),
        "partitions": args.partitions,
        "publish_s": round(published_s, 3),
        "end_to_end_s": round(last_stored - t0, 3),
        "readings_per_s": round(total / (last_stored - t0), 1),
        "publish_readings_per_s": round(total / published_s, 1),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


def _count(database: DatabaseSettings) -> int:
    with psycopg.connect(database.conninfo()) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    raise SystemExit(main())
