"""Ingest benchmark: MQTT in -> one ingest process -> Kafka out, next to the raw broker rate.

For each batch size (readings per MQTT message) and each MQTT version ingest can speak
(``--mqtt-protocols``: by default both 5 and 3.1.1, each its own ingest process) it reports
messages/s and readings/s through ONE ingest process, end to end: from the first publish to
the last record acknowledged on a fresh Kafka topic (Kafka's end offsets, polled every few
milliseconds). In the same round it measures the raw broker rate with Mosquitto's own C
clients: the same messages, from the same ``mosquitto_pub`` processes at QoS 1, into one
``mosquitto_sub`` (QoS 1, MQTT 5, shared subscription with a persistent session and the same
receive maximum as ingest), from the first publish to the last message received. ``ratio``
is ingest over raw, per round; ``v311_over_v5`` is ingest over MQTT 3.1.1 over ingest over
MQTT 5 in the same round (the variants take turns going first). The report gives medians
over ``--rounds`` rounds, the publishers' own rate (so a reader can see that they are not
the bottleneck), the CPU ingest used (cores, and CPU microseconds per message, which shifts
least when other work competes for the cores), the load average and the machine's core
count. It also gives the CPU microseconds per message of every part of each run (broker,
Kafka, ingest, the C clients) and what they add up to: on a machine whose cores all of them
share, cores divided by that sum is a rate no part of the run could pass
(``cpu_bound_messages_per_s``). To see where ingest's time goes, attach a sampling
profiler (e.g. ``py-spy record --pid``) to the ingest process while a round runs.

Needs the local stack and the ``mosquitto-clients`` package (``mosquitto_pub``/``_sub``).
The publishers act as their gateways, with credentials issued in the benchmark's own
registry database; ingest and the raw subscriber use ``CARBONFLOW_MQTT_USERNAME``/
``_PASSWORD`` when set, else the stack's service identity. Each batch size gets its own
ingest process per MQTT version and topics; the Kafka topics are deleted at the end. The
ingest processes retire on stop, so the broker keeps none of their sessions.

    python bench/ingest.py                                  # batch sizes 1, 50 and 500
    python bench/ingest.py --batch-sizes 50 --rounds 5
    python bench/ingest.py --mqtt-protocols 3.1.1           # one variant only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from carbonflow import db
from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings
from carbonflow.files import write_private
from carbonflow.mqtt_auth import store
from carbonflow.mqtt_auth.access import Role
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from carbonflow.stack.kafka_admin import ensure_topics
from carbonflow.supervise import ServiceProcess, mqtt_env, wait_for_status
from edge.simulator.factory import FactoryLayout, Machine, small_factory
from schemas import TelemetryBatch
from services.ingest.settings import IngestSettings

BENCH_DB = "carbonflow_bench_ingest"
GOAL_BATCH = 50
GOAL_READINGS_PER_S = 200_000
GOAL_RATIO = 0.5
#: The same in-flight window as ingest's default (CARBONFLOW_INGEST_RECEIVE_MAXIMUM). Over
#: MQTT 3.1.1 the broker's max_inflight_messages bounds ingest's window instead.
RECEIVE_MAXIMUM = 1000
#: CARBONFLOW_INGEST_MQTT_PROTOCOL values, and their short names in the report.
PROTOCOLS = {"5": "v5", "3.1.1": "v311"}
DEFAULT_PROTOCOL = IngestSettings.model_fields["mqtt_protocol"].default
#: Unacknowledged QoS 1 messages per publisher; Mosquitto's own default is 20.
PUBLISHER_INFLIGHT = 100
#: Bench sessions are left on the broker for this long, not for ingest's default week.
SESSION_EXPIRY_S = 600
POLL_S = 0.005


@dataclass(frozen=True)
class Round:
    """One round's messages: a file of JSON lines per device, for ``mosquitto_pub -l``."""

    files: list[tuple[Machine, Path]]
    messages: int
    readings: int
    payload_bytes: int


def write_round(
    machines: Sequence[Machine], batch: int, messages: int, end: datetime, tag: str, out: Path
) -> Round:
    """Valid telemetry batches, ``messages`` in all, at 1 s per reading up to ``end``.

    Written as text (pydantic would take longer than the round itself); the first and last
    line of every file are checked against the contract.
    """
    per_device = -(-messages // len(machines))
    start = end - timedelta(seconds=per_device * batch)
    files, total, size = [], 0, 0
    for index, machine in enumerate(machines):
        count = min(per_device, messages - total)
        if count <= 0:
            break
        path = out / f"{tag}-{machine.device_id}.jsonl"
        with path.open("w") as handle:
            for seq in range(count):
                first = start + timedelta(seconds=seq * batch)
                readings = ",".join(
                    _reading_json(first + timedelta(seconds=k), 1000.0 + (seq + k + index) % 97)
                    for k in range(batch)
                )
                line = (
                    f'{{"schema_version":1,"gateway_id":"{machine.gateway_id}",'
                    f'"device_id":"{machine.device_id}","session_id":"{tag}","seq":{seq},'
                    f'"sent_at":"{_iso(end)}","readings":[{readings}]}}\n'
                )
                handle.write(line)
                size += len(line) - 1
        total += count
        lines = path.read_text().splitlines()
        for line in (lines[0], lines[-1]):
            TelemetryBatch.model_validate_json(line)
        files.append((machine, path))
    return Round(files, total, total * batch, size // total)


def _reading_json(ts: datetime, value: float) -> str:
    return (
        f'{{"ts":"{_iso(ts)}","metric":"active_power","value":{value:.1f},'
        '"unit":"W","quality":"good"}'
    )


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class CClients:
    """Mosquitto's C clients against the stack's broker, each with its MQTT identity.

    Credentials go into a private options file per identity (the clients read
    ``$XDG_CONFIG_HOME/mosquitto_pub`` and ``.../mosquitto_sub``), never onto a command line.
    """

    def __init__(
        self, service: MqttSettings, gateways: Mapping[str, MqttSettings], workdir: Path
    ) -> None:
        missing = [name for name in ("mosquitto_pub", "mosquitto_sub") if not shutil.which(name)]
        if missing:
            raise SystemExit(
                f"{', '.join(missing)} not found: install the Debian package mosquitto-clients"
            )
        self.common = ["-h", service.host, "-p", str(service.port), "-V", "mqttv5"]
        self._service_env = _options_env(service, workdir / "service")
        self._gateway_env = {
            gateway_id: _options_env(settings, workdir / f"gateway-{gateway_id}")
            for gateway_id, settings in gateways.items()
        }

    def version(self) -> str:
        text = subprocess.run(
            ["mosquitto_pub", "--help"], capture_output=True, text=True, check=False
        ).stdout
        line = next((ln for ln in text.splitlines() if " version " in ln), "")
        return line.split(" version ")[1].split()[0] if line else "unknown"

    async def publish(self, round_: Round, topic_root: str) -> list[asyncio.subprocess.Process]:
        """One ``mosquitto_pub -l`` per device file, all started at once."""
        processes = []
        for machine, path in round_.files:
            topic = f"{topic_root}/telemetry/{machine.gateway_id}/{machine.device_id}"
            with path.open("rb") as stdin:
                processes.append(
                    await asyncio.create_subprocess_exec(
                        "mosquitto_pub",
                        *self.common,
                        "-q",
                        "1",
                        "-M",
                        str(PUBLISHER_INFLIGHT),
                        "-t",
                        topic,
                        "-l",
                        stdin=stdin,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.PIPE,
                        env=self._gateway_env[machine.gateway_id],
                    )
                )
        return processes

    async def subscribe(
        self, client_id: str, topic_filter: str, *extra: str, persistent: bool = True
    ) -> asyncio.subprocess.Process:
        session = ["-c", "-x", str(SESSION_EXPIRY_S)] if persistent else []
        return await asyncio.create_subprocess_exec(
            "mosquitto_sub",
            *self.common,
            "-i",
            client_id,
            *session,
            "-D",
            "connect",
            "receive-maximum",
            str(RECEIVE_MAXIMUM),
            "-q",
            "1",
            "-t",
            topic_filter,
            *extra,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self._service_env,
        )


def _options_env(settings: MqttSettings, home: Path) -> dict[str, str]:
    """An environment whose mosquitto_pub/_sub options file holds these credentials."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    options = []
    if settings.username:
        options.append(f"-u {settings.username}")
        if settings.password:
            options.append(f"-P {settings.password.get_secret_value()}")
    for client in ("mosquitto_pub", "mosquitto_sub"):
        write_private(home / client, "".join(f"{line}\n" for line in options))
    return {**os.environ, "XDG_CONFIG_HOME": str(home)}


async def _finish(processes: list[asyncio.subprocess.Process], timeout_s: float) -> float:
    """Wait for every process to exit successfully; returns when the last one did."""
    try:
        async with asyncio.timeout(timeout_s):
            for process in processes:
                _, stderr = await process.communicate()
                if process.returncode != 0:
                    raise RuntimeError(
                        f"a Mosquitto client failed ({process.returncode}): {stderr.decode()}"
                    )
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return time.perf_counter()


async def measure_raw(
    clients: CClients,
    round_: Round,
    topic_root: str,
    timeout_s: float,
    servers: Mapping[str, int],
) -> dict[str, float]:
    """Publishers -> Mosquitto -> one mosquitto_sub, the way ingest subscribes."""
    client_id = f"bench-raw-{uuid.uuid4().hex[:8]}"
    topic_filter = f"$share/{client_id}/{topic_root}/telemetry/+/+"
    # Subscribe first, in a persistent session, so no message can go by unseen; the
    # counting subscriber then takes the session over as the publishers start.
    await _finish([await clients.subscribe(client_id, topic_filter, "-E")], 30)
    try:
        cpu = CpuMeter({"broker": servers["broker"]})
        t0 = time.perf_counter()
        subscriber = await clients.subscribe(client_id, topic_filter, "-C", str(round_.messages))
        publishers = await clients.publish(round_, topic_root)
        published = await _finish(publishers, timeout_s)
        received = await _finish([subscriber], timeout_s)
        cpu_us = cpu.per_message_us(round_.messages)
    finally:
        # A clean start ends the session, so nothing is queued for it afterwards.
        forget = await clients.subscribe(client_id, topic_filter, "-E", persistent=False)
        await _finish([forget], 30)
    return {
        "messages_per_s": round_.messages / (received - t0),
        "publish_messages_per_s": round_.messages / (published - t0),
        **{f"cpu_us_per_message_{part}": us for part, us in cpu_us.items()},
    }


class KafkaCounter:
    """Records on a topic, from its end offsets (cheap enough to poll every few ms)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
        self._partitions = [TopicPartition(topic, p) for p in range(kafka.partitions)]

    async def __aenter__(self) -> KafkaCounter:
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def count(self) -> int:
        return sum((await self._consumer.end_offsets(self._partitions)).values())

    async def wait_for(self, target: int, timeout_s: float, producer: ServiceProcess) -> float:
        """When the count reached ``target``; fails at once if ``producer`` exits."""
        async with asyncio.timeout(timeout_s):
            while True:
                if await self.count() >= target:
                    return time.perf_counter()
                if not producer.alive():
                    raise RuntimeError(f"{producer.name} exited\n{producer.log_tail()}")
                await asyncio.sleep(POLL_S)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    """CPU time of this process's children that have exited (the Mosquitto C clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU time each part of the pipeline spends during a measurement: where the machine's
    cores go, per message. With every core busy, the sum bounds the rate any part can reach.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        now = {name: _cpu_seconds(pid) for name, pid in self._pids.items()}
        now["mosquitto_clients"] = _children_cpu_seconds()
        return now

    def per_message_us(self, messages: int) -> dict[str, float]:
        """CPU µs per message by part, since the meter was made (call once the clients exited)."""
        end = self._now()
        return {name: (end[name] - self._start[name]) / messages * 1e6 for name in end}


async def measure_ingest(
    clients: CClients,
    round_: Round,
    topic_root: str,
    readings: KafkaCounter,
    ingest: ServiceProcess,
    timeout_s: float,
    servers: Mapping[str, int],
) -> dict[str, float]:
    """Publishers -> Mosquitto -> ingest -> Kafka, counted on the readings topic."""
    target = await readings.count() + round_.messages
    cpu = CpuMeter({**servers, "ingest": ingest.process.pid})
    t0 = time.perf_counter()
    publishers = await clients.publish(round_, topic_root)
    published_task = asyncio.ensure_future(_finish(publishers, timeout_s))
    arrived = await readings.wait_for(target, timeout_s, ingest)
    published = await published_task
    cpu_us = cpu.per_message_us(round_.messages)
    elapsed = arrived - t0
    return {
        "messages_per_s": round_.messages / elapsed,
        "readings_per_s": round_.readings / elapsed,
        "publish_messages_per_s": round_.messages / (published - t0),
        "ingest_cpu_cores": cpu_us["ingest"] * round_.messages / 1e6 / elapsed,
        **{f"cpu_us_per_message_{part}": us for part, us in cpu_us.items()},
    }


@dataclass(frozen=True)
class IngestUnderTest:
    """One ingest process speaking one MQTT version, with its own topics."""

    protocol: str
    process: ServiceProcess
    topic_root: str
    kafka: KafkaSettings


async def bench_batch_size(
    clients: CClients,
    layout: FactoryLayout,
    batch: int,
    messages: int,
    args: argparse.Namespace,
    run: str,
    workdir: Path,
    ingests: Sequence[IngestUnderTest],
    servers: Mapping[str, int],
) -> dict[str, Any]:
    """Rounds of: the raw broker rate, then each ingest variant, taking turns going first."""
    raw_root = f"cf-bench-raw-{run}-b{batch}/v1"
    machines = layout.machines
    rounds: list[dict[str, float]] = []
    payload_bytes = 0
    async with AsyncExitStack() as exits:
        counters = [
            await exits.enter_async_context(KafkaCounter(i.kafka, i.kafka.readings_topic))
            for i in ingests
        ]
        warmup = write_round(
            machines, batch, args.warmup_messages, datetime.now(UTC), f"w{run}b{batch}", workdir
        )
        await measure_raw(clients, warmup, raw_root, args.timeout, servers)
        for ingest, readings in zip(ingests, counters, strict=True):
            await measure_ingest(
                clients, warmup, ingest.topic_root, readings, ingest.process, 120, servers
            )
        for k in range(args.rounds):
            end = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=k)
            round_ = write_round(machines, batch, messages, end, f"r{run}b{batch}k{k}", workdir)
            raw = await measure_raw(clients, round_, raw_root, args.timeout, servers)
            measured: dict[str, dict[str, float]] = {}
            pairs = list(zip(ingests, counters, strict=True))
            turn = k % len(pairs)
            for ingest, readings in pairs[turn:] + pairs[:turn]:
                measured[ingest.protocol] = await measure_ingest(
                    clients,
                    round_,
                    ingest.topic_root,
                    readings,
                    ingest.process,
                    args.timeout,
                    servers,
                )
            for _, path in round_.files:
                path.unlink()
            row = {
                "raw_messages_per_s": raw["messages_per_s"],
                "publish_messages_per_s_raw_run": raw["publish_messages_per_s"],
                "raw_cpu_us_per_message_broker": raw["cpu_us_per_message_broker"],
                "raw_cpu_us_per_message_mosquitto_clients": raw[
                    "cpu_us_per_message_mosquitto_clients"
                ],
                # Everything shares the machine's cores: a load far above what this
                # benchmark runs (about 2) means someone else was competing for them.
                "load_average_1m": os.getloadavg()[0],
            }
            for protocol, through in measured.items():
                row |= _ingest_row(PROTOCOLS[protocol], through, raw)
            if {"5", "3.1.1"} <= measured.keys():
                row["v311_over_v5"] = (
                    measured["3.1.1"]["messages_per_s"] / measured["5"]["messages_per_s"]
                )
            rounds.append(row)
            payload_bytes = round_.payload_bytes
    result: dict[str, Any] = {
        "batch_size": batch,
        "messages_per_round": messages,
        "readings_per_round": messages * batch,
        "payload_bytes": payload_bytes,
    }
    for ingest in ingests:
        async with KafkaCounter(ingest.kafka, ingest.kafka.deadletter_topic) as dead:
            result[f"{PROTOCOLS[ingest.protocol]}_dead_letters"] = await dead.count()
    for key in rounds[0]:
        result[f"median_{key}"] = round(statistics.median(r[key] for r in rounds), 3)
    result["per_round"] = [{k: round(v, 3) for k, v in r.items()} for r in rounds]
    return result


def _ingest_row(tag: str, through: dict[str, float], raw: dict[str, float]) -> dict[str, float]:
    """One ingest variant's figures of a round, named ``<tag>_...``."""
    parts = {k: v for k, v in through.items() if k.startswith("cpu_us_per_message_")}
    pipeline_us = sum(parts.values())
    return {
        f"{tag}_ingest_messages_per_s": through["messages_per_s"],
        f"{tag}_ingest_readings_per_s": through["readings_per_s"],
        f"{tag}_ratio": through["messages_per_s"] / raw["messages_per_s"],
        f"{tag}_ingest_cpu_cores": through["ingest_cpu_cores"],
        f"{tag}_ingest_cpu_us_per_message": through["cpu_us_per_message_ingest"],
        **{f"{tag}_{k}": v for k, v in parts.items()},
        # Publishers, broker, ingest and Kafka together: with every core busy on them, the
        # rate could not pass this, however the work were scheduled.
        f"{tag}_pipeline_cpu_us_per_message": pipeline_us,
        f"{tag}_cpu_bound_messages_per_s": (os.cpu_count() or 1) * 1e6 / pipeline_us,
        f"{tag}_publish_messages_per_s_ingest_run": through["publish_messages_per_s"],
    }


async def delete_topics(kafka: KafkaSettings, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


def start_ingest(
    service: MqttSettings, protocol: str, name: str, args: argparse.Namespace, workdir: Path
) -> IngestUnderTest:
    """An ingest process speaking ``protocol``, with topics of its own."""
    kafka = KafkaSettings(
        readings_topic=f"carbonflow.bench-ingest-{name}.readings",
        deadletter_topic=f"carbonflow.bench-ingest-{name}.deadletter",
        events_topic=f"carbonflow.bench-ingest-{name}.events",
        partitions=args.partitions,
    )
    ensure_topics(kafka, _topics(kafka), args.partitions)
    topic_root = f"cf-bench-ingest-{name}/v1"
    client_id = f"ingest-bench-{name}"
    env = {
        **mqtt_env(service.model_copy(update={"topic_root": topic_root})),
        "CARBONFLOW_DB_NAME": BENCH_DB,
        "CARBONFLOW_KAFKA_READINGS_TOPIC": kafka.readings_topic,
        "CARBONFLOW_KAFKA_DEADLETTER_TOPIC": kafka.deadletter_topic,
        "CARBONFLOW_KAFKA_EVENTS_TOPIC": kafka.events_topic,
        "CARBONFLOW_KAFKA_PARTITIONS": str(args.partitions),
        "CARBONFLOW_INGEST_CLIENT_ID": client_id,
        "CARBONFLOW_INGEST_SHARE_GROUP": f"bench-{name}",
        "CARBONFLOW_INGEST_METRICS_PORT": "0",
        "CARBONFLOW_INGEST_MQTT_PROTOCOL": protocol,
        "CARBONFLOW_INGEST_SESSION_EXPIRY_S": str(SESSION_EXPIRY_S),
        # Ends the session on stop in both versions (MQTT 3.1.1 has no expiry of its own).
        "CARBONFLOW_INGEST_RETIRE_ON_STOP": "true",
    }
    process = ServiceProcess("ingest", workdir, env, name=client_id)
    return IngestUnderTest(protocol, process, topic_root, kafka)


def _server_pids(stack: Stack) -> dict[str, int]:
    """The broker's and Kafka's processes, whose CPU time the report includes."""
    pids = {status.name: status.pid for status in stack.status()}
    broker, kafka = pids.get("mosquitto"), pids.get("kafka")
    if broker is None or kafka is None:
        raise RuntimeError(f"the stack's Mosquitto and Kafka must be running: {pids}")
    return {"broker": broker, "kafka": kafka}


def _topics(kafka: KafkaSettings) -> list[str]:
    return [kafka.readings_topic, kafka.deadletter_topic, kafka.events_topic]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 50, 500])
    parser.add_argument("--readings", type=int, default=2_000_000, help="per round, at most")
    parser.add_argument(
        "--max-messages", type=int, default=60_000, help="per round, for small batches"
    )
    parser.add_argument(
        "--min-messages", type=int, default=4_000, help="per round, for large batches"
    )
    parser.add_argument("--publishers", type=int, default=8, help="mosquitto_pub processes")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-messages", type=int, default=1_000)
    parser.add_argument("--timeout", type=float, default=300.0, help="per measurement")
    parser.add_argument(
        "--mqtt-protocols",
        nargs="+",
        choices=list(PROTOCOLS),
        default=list(PROTOCOLS),
        help="MQTT versions of ingest to measure, each with its own ingest process",
    )
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    mqtt = MqttSettings()
    database = DatabaseSettings(name=BENCH_DB)
    stack = Stack(stack=StackSettings(), mqtt=mqtt, kafka=KafkaSettings(), db=DatabaseSettings())
    stack.up()
    stack.drop_database(BENCH_DB)
    stack.create_database(BENCH_DB)
    db.migrate(database)
    # One device per publisher process: each publishes on its own device's topic, as its
    # gateway (the broker lets a gateway publish for its own devices only).
    layout = small_factory(args.publishers, prefix=f"bi{run}")
    with psycopg.connect(database.conninfo(), autocommit=True) as conn:
        upsert_layout(conn, layout)
        gateways = {
            gateway_id: mqtt.model_copy(
                update={
                    "username": gateway_id,
                    "password": store.issue(conn, gateway_id, Role.GATEWAY),
                }
            )
            for gateway_id in layout.gateways()
        }
    stack.sync_mqtt_access()
    servers = _server_pids(stack)
    # Ingest and the raw subscriber read as the platform services do.
    service = mqtt if mqtt.username else stack.service_mqtt_settings(mqtt)

    workdir = Path(tempfile.mkdtemp(prefix="carbonflow-bench-ingest-"))
    results, topics = [], []
    try:
        clients = CClients(service, gateways, workdir / "identities")
        for batch in args.batch_sizes:
            messages = max(args.min_messages, min(args.max_messages, args.readings // batch))
            with ExitStack() as running:
                ingests = []
                for protocol in args.mqtt_protocols:
                    ingest = start_ingest(
                        service, protocol, f"{run}-b{batch}-{PROTOCOLS[protocol]}", args, workdir
                    )
                    topics += _topics(ingest.kafka)
                    running.callback(ingest.process.stop)
                    ingests.append(ingest)
                for ingest in ingests:
                    settings = service.model_copy(update={"topic_root": ingest.topic_root})
                    wait_for_status(
                        settings, "ingest", ingest.process.name, "online", ingest.process
                    )
                results.append(
                    asyncio.run(
                        bench_batch_size(
                            clients, layout, batch, messages, args, run, workdir, ingests, servers
                        )
                    )
                )
    finally:
        if topics:
            asyncio.run(delete_topics(KafkaSettings(), topics))
        shutil.rmtree(workdir, ignore_errors=True)

    report: dict[str, Any] = {
        "benchmark": "ingest",
        "cores": os.cpu_count(),
        "mosquitto_clients": clients.version(),
        "publishers": args.publishers,
        "publisher_inflight": PUBLISHER_INFLIGHT,
        "receive_maximum": RECEIVE_MAXIMUM,
        "partitions": args.partitions,
        "rounds": args.rounds,
        "mqtt_protocols": args.mqtt_protocols,
        "default_mqtt_protocol": DEFAULT_PROTOCOL,
        "results": results,
    }
    goal = next((r for r in results if r["batch_size"] == GOAL_BATCH), None)
    if goal is not None:
        report["goal"] = {
            "batch_size": GOAL_BATCH,
            "readings_per_s": GOAL_READINGS_PER_S,
            "ratio": GOAL_RATIO,
        }
        for protocol in args.mqtt_protocols:
            tag = PROTOCOLS[protocol]
            report["goal"][tag] = {
                "readings_per_s_met": goal[f"median_{tag}_ingest_readings_per_s"]
                >= GOAL_READINGS_PER_S,
                "ratio_met": goal[f"median_{tag}_ratio"] >= GOAL_RATIO,
            }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
