"""End-to-end pipeline benchmark: MQTT publish -> ingest -> Kafka -> stream -> TimescaleDB.

Publishes N readings, as one burst or at ``--rate`` readings/s, then reports JSON with
end-to-end readings/s (first publish to last row stored) and the latency from a batch's
publish to its rows being stored (``stored_at``, the storing transaction's start). In a burst,
latency includes queueing behind the burst: it is latency at saturation; with ``--rate``
below capacity it is the latency an operator sees. The baseline, measured in the same round,
is the rate at which Mosquitto acknowledged the publisher's messages; ``vs_publish`` is
end-to-end over that rate.

Runs its own ingest and stream processes against the local stack, on a database and topics of
its own, for ``--rounds`` rounds (fresh readings each round), and reports the median round.

    python bench/pipeline.py --readings 100000 --batch 100 --devices 50 --rounds 3
    python bench/pipeline.py --readings 50000 --rate 5000      # latency below saturation
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from carbonflow import db
from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings
from carbonflow.mqtt_auth import store
from carbonflow.mqtt_auth.access import Role
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from carbonflow.stack.kafka_admin import ensure_topics
from carbonflow.supervise import (
    ServiceProcess,
    free_port,
    mqtt_env,
    running,
    wait_for,
    wait_for_status,
)
from edge.simulator.factory import FactoryLayout, small_factory
from edge.simulator.publisher import GatewayPublishers
from schemas import Reading, TelemetryBatch

BENCH_DB = "carbonflow_bench"


@dataclass(frozen=True)
class Round:
    batches: list[TelemetryBatch]
    start: datetime
    end: datetime

    @property
    def readings(self) -> int:
        return sum(len(b.readings) for b in self.batches)


def make_round(
    layout: FactoryLayout, per_device: int, batch: int, end: datetime, run: str
) -> Round:
    """Readings at 1 s intervals in [end - per_device s, end), devices interleaved."""
    start = end - timedelta(seconds=per_device)
    batches = []
    for machine in layout.machines:
        for seq, first in enumerate(range(0, per_device, batch)):
            readings = [
                Reading(
                    ts=start + timedelta(seconds=k),
                    metric="active_power",
                    value=1000.0 + k % 50,
                    unit="W",
                )
                for k in range(first, min(first + batch, per_device))
            ]
            batches.append(
                TelemetryBatch(
                    gateway_id=machine.gateway_id,
                    device_id=machine.device_id,
                    session_id=f"bench-{run}-{int(end.timestamp())}",
                    seq=seq,
                    sent_at=end,
                    readings=readings,
                )
            )
    batches.sort(key=lambda b: (b.seq, b.device_id))  # as a fleet sends: every device in turn
    return Round(batches, start, end)


def measure(
    round_: Round,
    gateways: dict[str, MqttSettings],
    database: DatabaseSettings,
    services: tuple[ServiceProcess, ...],
    timeout_s: float,
    rate: float | None,
) -> dict[str, float]:
    expected = _count(database) + round_.readings
    publish_times: dict[tuple[str, datetime], float] = {}
    with GatewayPublishers(gateways, client_id=f"bench-{uuid.uuid4().hex[:8]}") as publisher:
        t0 = time.time()
        pace = threading.Event()
        sent = 0
        for batch in round_.batches:
            if rate:  # open-loop load: each batch leaves at its scheduled time
                pace.wait(max(0.0, t0 + sent / rate - time.time()))
            publish_times[(batch.device_id, batch.readings[0].ts)] = time.time()
            publisher.publish_batch(batch)
            sent += len(batch.readings)
        publisher.flush(timeout=timeout_s)
        published_s = time.time() - t0
    wait_for(
        lambda: True if _count(database) >= expected else None,
        timeout_s=timeout_s,
        what=f"{expected} readings stored",
        services=services,
    )
    batch_size = len(round_.batches[0].readings)
    with psycopg.connect(database.conninfo()) as conn:
        rows = conn.execute(
            "SELECT device_id, ts, extract(epoch FROM stored_at) FROM readings "
            "WHERE ts >= %s AND ts < %s",
            (round_.start, round_.end),
        ).fetchall()
    latencies = []
    for device_id, ts, stored_at in rows:
        first = round_.start + timedelta(
            seconds=(ts - round_.start).total_seconds() // batch_size * batch_size
        )
        latencies.append(float(stored_at) - publish_times[(device_id, first)])
    last_stored = max(float(stored_at) for _, _, stored_at in rows)
    latencies.sort()
    end_to_end = round_.readings / (last_stored - t0)
    publish_rate = round_.readings / published_s
    return {
        "readings_per_s": end_to_end,
        "publish_readings_per_s": publish_rate,
        "vs_publish": end_to_end / publish_rate,
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--readings", type=int, default=100_000, help="per round")
    parser.add_argument("--batch", type=int, default=100, help="readings per MQTT message")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rate", type=float, default=None, help="readings/s to publish at (default: a burst)"
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    mqtt_settings = MqttSettings(topic_root=f"cf-bench-{run}/v1")
    kafka = KafkaSettings(
        readings_topic=f"carbonflow.bench-{run}.readings",
        deadletter_topic=f"carbonflow.bench-{run}.deadletter",
        partitions=args.partitions,
    )
    database = DatabaseSettings(name=BENCH_DB)
    stack = Stack(stack=StackSettings(), mqtt=mqtt_settings, kafka=kafka, db=DatabaseSettings())
    stack.up()
    stack.drop_database(BENCH_DB)
    stack.create_database(BENCH_DB)
    db.migrate(database)
    layout = small_factory(args.devices)
    with psycopg.connect(database.conninfo(), autocommit=True) as conn:
        upsert_layout(conn, layout)
        # Each simulated gateway publishes as itself, as the broker's ACL requires.
        gateways = {
            gateway_id: mqtt_settings.model_copy(
                update={
                    "username": gateway_id,
                    "password": store.issue(conn, gateway_id, Role.GATEWAY),
                }
            )
            for gateway_id in layout.gateways()
        }
    stack.sync_mqtt_access()
    service_mqtt = stack.service_mqtt_settings(mqtt_settings)
    ensure_topics(kafka, [kafka.readings_topic, kafka.deadletter_topic], kafka.partitions)

    per_device = max(1, args.readings // len(layout.machines))
    now = datetime.now(UTC).replace(microsecond=0)
    rounds = [
        make_round(layout, per_device, args.batch, now - timedelta(seconds=k * per_device), run)
        for k in range(args.rounds)
    ]
    env = {
        **mqtt_env(service_mqtt),
        "CARBONFLOW_DB_NAME": BENCH_DB,
        "CARBONFLOW_KAFKA_READINGS_TOPIC": kafka.readings_topic,
        "CARBONFLOW_KAFKA_DEADLETTER_TOPIC": kafka.deadletter_topic,
        "CARBONFLOW_INGEST_CLIENT_ID": f"ingest-bench-{run}",
        "CARBONFLOW_INGEST_METRICS_PORT": "0",
        "CARBONFLOW_STREAM_APP_ID": f"stream-bench-{run}",
        "CARBONFLOW_STREAM_WEB_PORT": str(free_port()),
    }
    log_dir = Path(tempfile.mkdtemp(prefix="carbonflow-bench-"))
    with running("ingest", log_dir, env) as ingest, running("stream", log_dir, env) as stream:
        wait_for_status(service_mqtt, "ingest", f"ingest-bench-{run}", "online", ingest)
        results = [
            measure(r, gateways, database, (ingest, stream), args.timeout, args.rate)
            for r in rounds
        ]
    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "readings_per_round": rounds[0].readings,
        "messages_per_round": len(rounds[0].batches),
        "batch_size": args.batch,
        "devices": len(layout.machines),
        "partitions": args.partitions,
        "rounds": args.rounds,
        "publish_rate": args.rate or "burst",
    }
    for key in results[0]:
        report[f"median_{key}"] = round(statistics.median(r[key] for r in results), 3)
    report["per_round"] = [{k: round(v, 3) for k, v in r.items()} for r in results]
    print(json.dumps(report, indent=2))
    return 0


def _count(database: DatabaseSettings) -> int:
    with psycopg.connect(database.conninfo()) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    raise SystemExit(main())
