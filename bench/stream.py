"""Stream benchmark: readings/s through ONE Faust stream worker, from Kafka to committed rows.

Measures the real stream worker (``python -m carbonflow stream``: the agent takes batches
with ``stream.take`` and stores each batch's readings, energy, emissions and rollups in one
transaction) next to a plain per-event Faust agent measured in the same run
(``bench/stream_baseline.py``: ``async for value in stream``, one transaction per Kafka
record, through the same pipeline code). ``ratio`` is batched over per-event readings/s, per
round; the goal is at least 30.

Each variant of each round gets a fresh readings topic (``--partitions``), filled before its
worker starts with seeded readings records (``--readings-per-record`` power readings at 1 s,
records of every device in turn, keyed by device id and compressed with zstd as ingest writes
them), for devices of its own registered in the benchmark's database. So the worker is
measured alone, not the producer, and the variants never see each other's rows. The per-event
agent is slow, so it gets fewer records (``--baseline-records``); both rates are over a fixed
count. Each worker is a subprocess with a consumer group of its own, reading from the start.

The clock runs from the start of the worker's second transaction (the first one includes
Faust's and Numba's warm-up) to the moment every device's last reading is visible to another
connection: committed rows. Only then is the whole topic checked: as many rows as readings
sent, and the consumer group's committed offsets at the topic's end. CPU per reading is the
worker process's own CPU time from its first committed rows to its last, over the readings
committed in between; next to it, the CPU time of the PostgreSQL server processes serving
the worker's connections over the same span (Kafka's is in neither). Variants take turns going
first; the report gives medians over ``--rounds`` rounds, the load average and core count.
Topics, the workers' consumer groups and Faust's leader topics are deleted at the end.

    python bench/stream.py                                  # 3 rounds, about 3.5 minutes
    python bench/stream.py --records 40000 --baseline-records 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import DeleteGroupsRequest

from carbonflow import db
from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from carbonflow.stack.kafka_admin import MAX_MESSAGE_BYTES, ensure_topics
from carbonflow.supervise import ServiceProcess, free_port, wait_for
from edge.simulator.factory import FactoryLayout, small_factory
from schemas import ReadingsRecord
from services.stream.settings import StreamSettings

BENCH_DB = "carbonflow_bench_stream"
GOAL_RATIO = 30.0
SEED = 20260514
BATCHED, PER_EVENT = "batched", "per_event"
BASELINE_SCRIPT = Path(__file__).resolve().parent / "stream_baseline.py"
POLL_S = 0.02
GROUP_NOT_EMPTY = 68


@dataclass(frozen=True)
class Load:
    """One variant's pre-filled topic in one round, and what its worker must leave behind."""

    variant: str
    name: str
    kafka: KafkaSettings
    layout: FactoryLayout
    records: int
    readings: int
    #: (device id, ts) of every device's last reading: all committed means the topic is done,
    #: since a device's records are on one partition and are stored in order.
    last_readings: list[tuple[str, datetime]]

    @property
    def app_id(self) -> str:
        return f"bench-stream-{self.name}"

    @property
    def device_ids(self) -> list[str]:
        return [m.device_id for m in self.layout.machines]

    @property
    def topics(self) -> list[str]:
        leader = f"{self.app_id}-__assignor-__leader"  # Faust's own, made by the worker
        return [*_topics(self.kafka), leader]


def _topics(kafka: KafkaSettings) -> list[str]:
    return [kafka.readings_topic, kafka.deadletter_topic, kafka.events_topic]


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def readings_records(
    layout: FactoryLayout, records: int, per_record: int, end: datetime, seed: int
) -> tuple[list[tuple[bytes, bytes]], list[tuple[str, datetime]]]:
    """``records`` Kafka records (key, value), every device in turn, with power readings at
    1 s up to ``end``; and each device's last reading. Values come from ``seed`` alone, so
    two loads with the same seed differ only in their device ids.

    Written as text (pydantic would take longer than the measurement); the first and last
    record are checked against the contract.
    """
    rng = random.Random(seed)
    machines = layout.machines
    per_device = math.ceil(records / len(machines))
    start = end - timedelta(seconds=per_device * per_record)
    base = [500.0 + 4500.0 * rng.random() for _ in machines]
    messages: list[tuple[bytes, bytes]] = []
    last: dict[str, datetime] = {}
    for seq in range(per_device):
        first = start + timedelta(seconds=seq * per_record)
        for index, machine in enumerate(machines):
            if len(messages) == records:
                break
            readings = ",".join(
                f'{{"ts":"{_iso(first + timedelta(seconds=k))}","metric":"active_power",'
                f'"value":{base[index] + rng.gauss(0.0, 50.0):.3f},"unit":"W","quality":"good"}}'
                for k in range(per_record)
            )
            value = (
                f'{{"schema_version":1,"gateway_id":"{machine.gateway_id}",'
                f'"device_id":"{machine.device_id}","session_id":"bench-{seed}","seq":{seq},'
                f'"sent_at":"{_iso(end)}","readings":[{readings}],"received_at":"{_iso(end)}"}}'
            )
            messages.append((machine.device_id.encode(), value.encode()))
            last[machine.device_id] = first + timedelta(seconds=per_record - 1)
    for _, payload in (messages[0], messages[-1]):
        ReadingsRecord.model_validate_json(payload)
    return messages, sorted(last.items())


async def fill(kafka: KafkaSettings, messages: Sequence[tuple[bytes, bytes]]) -> None:
    """Write the records as ingest does (zstd, acks from all replicas) and check they landed."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        acks="all",
        compression_type="zstd",
        linger_ms=5,
        max_batch_size=1024 * 1024,
        max_request_size=MAX_MESSAGE_BYTES,
    )
    await producer.start()
    try:
        sent = [
            await producer.send(kafka.readings_topic, value, key=key) for key, value in messages
        ]
        await producer.flush()
        for future in sent:
            future.result()  # raises if a send failed
    finally:
        await producer.stop()
    ends = await end_offsets(kafka, kafka.readings_topic)
    if sum(ends.values()) != len(messages):
        raise RuntimeError(f"{kafka.readings_topic} holds {sum(ends.values())} records")


async def end_offsets(kafka: KafkaSettings, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(
            [TopicPartition(topic, p) for p in range(kafka.partitions)]
        )
        return ends
    finally:
        await consumer.stop()


async def committed_lag(kafka: KafkaSettings, group: str) -> int:
    """Records of the readings topic the consumer group has not committed yet."""
    ends = await end_offsets(kafka, kafka.readings_topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group, partitions=list(ends))
    finally:
        await admin.close()
    return sum(
        end - max(0, committed[tp].offset if tp in committed else 0) for tp, end in ends.items()
    )


def prepare(
    variant: str, name: str, records: int, args: argparse.Namespace, end: datetime, seed: int
) -> Load:
    """A fresh topic set and device set for one variant of one round, its topic pre-filled."""
    kafka = KafkaSettings(
        readings_topic=f"carbonflow.bench-stream-{name}.readings",
        deadletter_topic=f"carbonflow.bench-stream-{name}.deadletter",
        events_topic=f"carbonflow.bench-stream-{name}.events",
        partitions=args.partitions,
    )
    layout = small_factory(args.devices, prefix=f"bs{name.replace('-', '')}")
    with psycopg.connect(DatabaseSettings(name=BENCH_DB).conninfo(), autocommit=True) as conn:
        upsert_layout(conn, layout)
    messages, last = readings_records(layout, records, args.readings_per_record, end, seed)
    ensure_topics(kafka, _topics(kafka), args.partitions)
    asyncio.run(fill(kafka, messages))
    return Load(variant, name, kafka, layout, records, records * args.readings_per_record, last)


class BaselineProcess(ServiceProcess):
    """``bench/stream_baseline.py`` as a child process, run, logged and stopped like a service."""

    def __init__(self, log_dir: Path, env: dict[str, str], *, name: str) -> None:
        # Not super().__init__: that starts ``python -m carbonflow``; everything else of the
        # service's (alive, log_tail, stop) applies as is.
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(BASELINE_SCRIPT)],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )


def start_worker(load: Load, workdir: Path) -> ServiceProcess:
    env = {
        "CARBONFLOW_DB_NAME": BENCH_DB,
        "CARBONFLOW_KAFKA_READINGS_TOPIC": load.kafka.readings_topic,
        "CARBONFLOW_KAFKA_DEADLETTER_TOPIC": load.kafka.deadletter_topic,
        "CARBONFLOW_KAFKA_EVENTS_TOPIC": load.kafka.events_topic,
        "CARBONFLOW_KAFKA_PARTITIONS": str(load.kafka.partitions),
        "CARBONFLOW_STREAM_APP_ID": load.app_id,
        "CARBONFLOW_STREAM_WEB_PORT": str(free_port()),
        "CARBONFLOW_STREAM_DATA_DIR": str(workdir / load.app_id),
    }
    if load.variant == BATCHED:
        return ServiceProcess("stream", workdir, env, name=load.app_id)
    return BaselineProcess(workdir, env, name=load.app_id)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_COUNT_STORED = """
SELECT count(*), extract(epoch FROM clock_timestamp())::float8
FROM readings WHERE device_id = ANY(%(devices)s)
"""

_COUNT_LAST_STORED = """
SELECT count(*), extract(epoch FROM clock_timestamp())::float8
FROM unnest(%(devices)s::text[], %(ts)s::timestamptz[]) AS l(device_id, ts)
WHERE EXISTS (
    SELECT 1 FROM readings r
    WHERE r.device_id = l.device_id AND r.metric = 'active_power' AND r.ts = l.ts
)
"""

#: The first two transactions of the run: when they started and how many readings each stored.
_FIRST_TRANSACTIONS = """
SELECT extract(epoch FROM stored_at)::float8, count(*)
FROM readings WHERE device_id = ANY(%(devices)s)
GROUP BY stored_at ORDER BY stored_at LIMIT 2
"""

_COUNT_ENERGY = "SELECT count(*) FROM energy_1m WHERE device_id = ANY(%(devices)s)"

#: The database's server processes serving the worker: every other connection to the
#: benchmark's database (nothing else connects to it while a variant runs).
_WORKER_BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def backend_cpu(conn: psycopg.Connection[Any]) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL process serving the worker (same machine)."""
    cpu = {}
    for (pid,) in conn.execute(_WORKER_BACKENDS).fetchall():
        try:
            cpu[pid] = _cpu_seconds(pid)
        except FileNotFoundError:  # the connection closed in between
            continue
    return cpu


def measure(load: Load, worker: ServiceProcess, timeout_s: float) -> dict[str, float]:
    """Run ``worker`` over its pre-filled topic until every reading is committed."""
    devices = {"devices": load.device_ids}
    last = {
        "devices": [device for device, _ in load.last_readings],
        "ts": [ts for _, ts in load.last_readings],
    }
    with psycopg.connect(DatabaseSettings(name=BENCH_DB).conninfo(), autocommit=True) as conn:

        def probe(query: str, params: dict[str, Any], at_least: int) -> tuple[int, float] | None:
            row = conn.execute(query, params).fetchone()
            assert row is not None
            return (int(row[0]), float(row[1])) if row[0] >= at_least else None

        what = f"{load.app_id}: first rows"
        seen, seen_at = wait_for(
            lambda: probe(_COUNT_STORED, devices, 1),
            timeout_s=timeout_s,
            what=what,
            services=(worker,),
            interval_s=POLL_S,
        )
        cpu_seen = _cpu_seconds(worker.process.pid)
        db_cpu_seen = backend_cpu(conn)
        _, done_at = wait_for(
            lambda: probe(_COUNT_LAST_STORED, last, len(load.last_readings)),
            timeout_s=timeout_s,
            what=f"{load.app_id}: every device's last reading",
            services=(worker,),
            interval_s=POLL_S,
        )
        cpu_done = _cpu_seconds(worker.process.pid)
        db_cpu_done = backend_cpu(conn)
        # Untimed from here: the whole topic is in the database and committed in Kafka.
        stored = _one(conn, _COUNT_STORED, devices)
        if stored != load.readings:
            raise RuntimeError(f"{load.app_id}: {stored} readings stored, {load.readings} sent")
        first, second = conn.execute(_FIRST_TRANSACTIONS, devices).fetchall()
        energy_minutes = _one(conn, _COUNT_ENERGY, devices)
    wait_for(
        lambda: True if asyncio.run(committed_lag(load.kafka, load.app_id)) == 0 else None,
        timeout_s=60,
        what=f"{load.app_id}: offsets committed to the end",
        services=(worker,),
        interval_s=0.5,
    )
    dead = sum(asyncio.run(end_offsets(load.kafka, load.kafka.deadletter_topic)).values())
    if dead:
        raise RuntimeError(f"{load.app_id}: {dead} dead letters from valid data")
    timed_readings = load.readings - first[1]
    elapsed = done_at - second[0]
    readings_per_s = timed_readings / elapsed
    cpu_s = cpu_done - cpu_seen
    db_cpu_s = sum(cpu - db_cpu_seen.get(pid, 0.0) for pid, cpu in db_cpu_done.items())
    committed = load.readings - seen
    return {
        "readings_per_s": readings_per_s,
        "records_per_s": readings_per_s / (load.readings / load.records),
        "cpu_us_per_reading": cpu_s / committed * 1e6,
        "postgres_cpu_us_per_reading": db_cpu_s / committed * 1e6,
        "worker_cores": cpu_s / (done_at - seen_at),
        "seconds": elapsed,
        "energy_minutes": energy_minutes,
    }


def _one(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def run_variant(load: Load, workdir: Path, timeout_s: float) -> dict[str, float]:
    worker = start_worker(load, workdir)
    try:
        return measure(load, worker, timeout_s)
    finally:
        worker.stop()


async def clean_up(kafka: KafkaSettings, loads: Sequence[Load]) -> list[str]:
    """Delete the loads' topics and consumer groups; returns the groups left behind."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    left: list[str] = []
    try:
        existing = set(await admin.list_topics())
        topics = [t for load in loads for t in load.topics if t in existing]
        if topics:
            await admin.delete_topics(topics)
        for load in loads:
            if not await _delete_group(admin, load.app_id):
                left.append(load.app_id)
    finally:
        await admin.close()
    return left


async def _delete_group(admin: AIOKafkaAdminClient, group: str, patience_s: float = 30) -> bool:
    """Delete a consumer group; a worker that did not leave it cleanly holds it until its
    session times out, so that is waited out for a while."""
    deadline = time.monotonic() + patience_s
    while True:
        # aiokafka's admin client has no call for this request yet; its own client sends it.
        coordinator = await admin.find_coordinator(group)
        response = await admin._send_request(DeleteGroupsRequest([group]), coordinator)
        if all(code != GROUP_NOT_EMPTY for _, code in response.results):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(1)


def _median_report(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {
        f"median_{key}": round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000, help="batched worker, per round")
    parser.add_argument(
        "--baseline-records", type=int, default=1_000, help="per-event agent, per round"
    )
    parser.add_argument("--readings-per-record", type=int, default=50)
    parser.add_argument("--devices", type=int, default=50, help="per variant and round")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="per measurement")
    args = parser.parse_args()

    # aiokafka warns while a fresh topic's leaders settle; its retries handle that.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    run = uuid.uuid4().hex[:6]
    database = DatabaseSettings(name=BENCH_DB)
    stack = Stack(
        stack=StackSettings(), mqtt=MqttSettings(), kafka=KafkaSettings(), db=DatabaseSettings()
    )
    stack.up()
    stack.drop_database(BENCH_DB)
    stack.create_database(BENCH_DB)
    db.migrate(database)
    stream = StreamSettings()
    workdir = Path(tempfile.mkdtemp(prefix="carbonflow-bench-stream-"))
    end = datetime.now(UTC).replace(microsecond=0)
    records = {BATCHED: args.records, PER_EVENT: args.baseline_records}
    loads: list[Load] = []
    rounds: list[dict[str, float]] = []
    left_groups: list[str] = []
    try:
        for k in range(args.rounds):
            # Same readings for both variants in a round (same seed), on devices of their own.
            round_loads = {
                variant: prepare(
                    variant, f"{run}-r{k}-{tag}", records[variant], args, end, SEED + k
                )
                for variant, tag in ((BATCHED, "b"), (PER_EVENT, "e"))
            }
            loads += round_loads.values()
            order = [BATCHED, PER_EVENT] if k % 2 == 0 else [PER_EVENT, BATCHED]
            measured = {v: run_variant(round_loads[v], workdir, args.timeout) for v in order}
            row: dict[str, float] = {}
            for variant, figures in measured.items():
                row |= {f"{variant}_{key}": value for key, value in figures.items()}
            row["ratio"] = (
                measured[BATCHED]["readings_per_s"] / measured[PER_EVENT]["readings_per_s"]
            )
            row["cpu_ratio"] = (
                measured[PER_EVENT]["cpu_us_per_reading"] / measured[BATCHED]["cpu_us_per_reading"]
            )
            # Everything shares the machine's cores: a load far above what this benchmark
            # runs (about 2: the worker and PostgreSQL) means someone else competed for them.
            row["load_average_1m"] = os.getloadavg()[0]
            rounds.append(row)
            print(
                json.dumps({"round": k, **{key: round(v, 3) for key, v in row.items()}}),
                file=sys.stderr,
            )
    finally:
        if loads:
            left_groups = asyncio.run(clean_up(KafkaSettings(), loads))
        shutil.rmtree(workdir, ignore_errors=True)

    report: dict[str, Any] = {
        "benchmark": "stream",
        "cores": os.cpu_count(),
        "partitions": args.partitions,
        "rounds": args.rounds,
        "readings_per_record": args.readings_per_record,
        "devices": args.devices,
        "batched_records": args.records,
        "batched_readings": args.records * args.readings_per_record,
        "per_event_records": args.baseline_records,
        "per_event_readings": args.baseline_records * args.readings_per_record,
        "stream_batch_max_events": stream.batch_max_events,
        "stream_batch_within_s": stream.batch_within_s,
        **_median_report(rounds),
        "goal_ratio": GOAL_RATIO,
    }
    report["goal_met"] = report["median_ratio"] >= GOAL_RATIO
    report["per_round"] = [{k: round(v, 3) for k, v in r.items()} for r in rounds]
    if left_groups:
        report["consumer_groups_left"] = left_groups
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
