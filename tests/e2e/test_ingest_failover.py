"""Several ingest instances share one MQTT shared subscription; one is SIGKILLed under load.

Mosquitto (2.0) hands a shared subscription's messages round-robin to every member session,
connected or not. What it handed to a member that died (in flight without a PUBACK, or
queued after its death) stays in that member's persistent session: it is not handed on to
the other members, it waits for the same client id to come back. So the killed instance is
restarted under its own client id, as its supervisor (systemd) would, and takes its session
back. Afterwards every published reading must be on the readings topic. Duplicates (Kafka
had a batch, the PUBACK never left the dead process) are allowed at this hop and reported;
losses are not. The scenario runs with ingest speaking MQTT 5 and MQTT 3.1.1.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings
from carbonflow.registry import upsert_layout
from carbonflow.stack.kafka_admin import ensure_topics
from carbonflow.supervise import ServiceProcess, free_port, mqtt_env, wait_for, wait_for_status
from edge.simulator.factory import FactoryLayout, Machine, small_factory
from edge.simulator.publisher import Publisher
from schemas import Reading, TelemetryBatch

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEED = 20261207
INSTANCES = 3
#: Over two gateways. Not a multiple of INSTANCES: the broker's round robin then spreads
#: every device's batches over every instance, instead of pinning devices to instances.
DEVICES = 8
READINGS_PER_BATCH = 5
RATE = 400  # messages/s, steady, from start to end of the scenario
KILL_AFTER = 150  # messages the victim has taken before it is killed: mid-stream
PUBLISHED_WHILE_DOWN = 300  # its share of these waits in its session on the broker
PUBLISHED_AFTER_RESTART = 300
MAX_SEQ = 2000  # per device: 40 s at RATE, far more than the scenario needs
#: The broker forgets these test sessions soon after the test; long enough for the restart.
SESSION_EXPIRY_S = 600
#: Ingest's MQTT versions (CARBONFLOW_INGEST_MQTT_PROTOCOL), each with a tag for names.
PROTOCOLS = {"5": "v5", "3.1.1": "v311"}


def make_batch(machine: Machine, seq: int, start: datetime) -> TelemetryBatch:
    """Batch ``seq`` of a device: the same content for the same (device, seq), every run."""
    rng = random.Random(f"{SEED}/{machine.device_id}/{seq}")
    first = start + timedelta(seconds=seq * READINGS_PER_BATCH)
    return TelemetryBatch(
        gateway_id=machine.gateway_id,
        device_id=machine.device_id,
        session_id=f"failover-{SEED}",
        seq=seq,
        sent_at=first + timedelta(seconds=READINGS_PER_BATCH),
        readings=[
            Reading(
                ts=first + timedelta(seconds=k),
                metric="active_power",
                value=round(rng.uniform(500.0, 5000.0), 3),
                unit="W",
            )
            for k in range(READINGS_PER_BATCH)
        ],
    )


class SteadyLoad(threading.Thread):
    """Publishes batches of every device in turn at RATE messages/s until stopped."""

    def __init__(
        self, publishers: Mapping[str, Publisher], machines: tuple[Machine, ...], start: datetime
    ) -> None:
        super().__init__(name="steady-load", daemon=True)
        self._publishers = publishers
        self._machines = machines
        self._start = start
        self._stop_event = threading.Event()
        self.sent: list[TelemetryBatch] = []
        self.error: BaseException | None = None

    @property
    def count(self) -> int:
        return len(self.sent)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            for n in range(MAX_SEQ * len(self._machines)):
                # Pacing an open-loop load, not waiting for a condition: each batch leaves
                # at its scheduled time, or at once when the test says stop.
                if self._stop_event.wait(max(0.0, t0 + n / RATE - time.monotonic())):
                    return
                machine = self._machines[n % len(self._machines)]
                batch = make_batch(machine, n // len(self._machines), self._start)
                self._publishers[machine.gateway_id].publish_batch(batch)
                self.sent.append(batch)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


@dataclass
class Outcome:
    sent: list[TelemetryBatch]
    #: Every readings record that arrived, as (device, seq) -> the values of each copy.
    arrived: dict[tuple[str, int], list[list[float]]]
    dead_letters: int
    messages_by_instance: dict[str, float] = field(default_factory=dict)
    victim_messages_before_kill: float = 0.0
    victim_exit_code: int | None = None


@pytest.fixture(scope="module")
def layout(db_settings: DatabaseSettings, run_id: str) -> FactoryLayout:
    layout = small_factory(DEVICES, prefix=f"fo{run_id}")
    with psycopg.connect(db_settings.conninfo()) as conn:
        upsert_layout(conn, layout)
    return layout


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def mqtt_protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def topics(
    run_id: str, mqtt_settings: MqttSettings, mqtt_protocol: str
) -> tuple[MqttSettings, KafkaSettings]:
    name = f"{run_id}-{PROTOCOLS[mqtt_protocol]}"
    mqtt = mqtt_settings.model_copy(update={"topic_root": f"cf-failover-{name}/v1"})
    kafka = KafkaSettings(
        readings_topic=f"carbonflow.failover-{name}.readings",
        deadletter_topic=f"carbonflow.failover-{name}.deadletter",
        events_topic=f"carbonflow.failover-{name}.events",
        partitions=3,
    )
    names = [kafka.readings_topic, kafka.deadletter_topic, kafka.events_topic]
    ensure_topics(kafka, names, kafka.partitions)
    return mqtt, kafka


class IngestFleet:
    """INSTANCES ingest processes in one share group, each with its own client id and port."""

    def __init__(
        self,
        mqtt: MqttSettings,
        kafka: KafkaSettings,
        db: DatabaseSettings,
        run_id: str,
        log_dir: Path,
        exits: ExitStack,
        *,
        protocol: str = "5",
        retire_on_stop: bool = False,
    ) -> None:
        self._mqtt = mqtt
        self._log_dir = log_dir
        self._exits = exits
        self._common = {
            **mqtt_env(mqtt),
            "CARBONFLOW_DB_NAME": db.name,
            "CARBONFLOW_KAFKA_READINGS_TOPIC": kafka.readings_topic,
            "CARBONFLOW_KAFKA_DEADLETTER_TOPIC": kafka.deadletter_topic,
            "CARBONFLOW_KAFKA_EVENTS_TOPIC": kafka.events_topic,
            "CARBONFLOW_INGEST_SHARE_GROUP": f"failover-{run_id}",
            "CARBONFLOW_INGEST_SESSION_EXPIRY_S": str(SESSION_EXPIRY_S),
            # Each instance sees a part of every device's batches: its gaps are not gaps.
            "CARBONFLOW_INGEST_TRACK_SEQUENCES": "false",
            "CARBONFLOW_INGEST_MQTT_PROTOCOL": protocol,
            "CARBONFLOW_INGEST_RETIRE_ON_STOP": str(retire_on_stop).lower(),
        }
        tag = PROTOCOLS[protocol]
        self.client_ids = [f"ingest-fo-{run_id}-{tag}-{i}" for i in range(INSTANCES)]
        self.ports = {cid: free_port() for cid in self.client_ids}
        self.processes: dict[str, ServiceProcess] = {}

    def start(self, client_id: str, *, name: str | None = None) -> ServiceProcess:
        env = {
            **self._common,
            "CARBONFLOW_INGEST_CLIENT_ID": client_id,
            "CARBONFLOW_INGEST_METRICS_PORT": str(self.ports[client_id]),
        }
        process = ServiceProcess("ingest", self._log_dir, env, name=name or client_id)
        self._exits.callback(process.stop)
        self.processes[client_id] = process
        return process

    def wait_status(self, client_id: str, state: str, *, watching: str | None = None) -> None:
        """Wait for the instance's retained presence; fail early if ``watching`` exits."""
        process = self.processes[watching or client_id]
        wait_for_status(self._mqtt, "ingest", client_id, state, process, 60)

    def messages(self, client_id: str) -> float | None:
        """MQTT messages the instance has taken so far, from its own metrics."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.ports[client_id]}/metrics", timeout=2).text
        except httpx.TransportError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "carbonflow_ingest_messages_total":
                    return sample.value
        return None


async def _read_topics(
    kafka: KafkaSettings, expected: set[tuple[str, int]], timeout_s: float
) -> tuple[dict[tuple[str, int], list[list[float]]], int]:
    """Read the readings topic until every expected batch is there (or time is up)."""
    consumer = AIOKafkaConsumer(
        kafka.readings_topic,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    arrived: dict[tuple[str, int], list[list[float]]] = {}
    await consumer.start()
    try:
        try:
            async with asyncio.timeout(timeout_s):
                while not expected <= arrived.keys():
                    for messages in (await consumer.getmany(timeout_ms=500)).values():
                        for message in messages:
                            record = json.loads(message.value)
                            values = [r["value"] for r in record["readings"]]
                            arrived.setdefault((record["device_id"], record["seq"]), []).append(
                                values
                            )
        except TimeoutError:
            pass  # the assertions say what is missing
        partitions = [TopicPartition(kafka.deadletter_topic, p) for p in range(kafka.partitions)]
        dead_letters = sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()
    return arrived, dead_letters


@pytest.fixture(scope="module")
def outcome(
    layout: FactoryLayout,
    topics: tuple[MqttSettings, KafkaSettings],
    db_settings: DatabaseSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
    mqtt_protocol: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Outcome]:
    mqtt, kafka = topics
    log_dir = tmp_path_factory.mktemp("failover-logs")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
    gateways = sorted({m.gateway_id for m in layout.machines})
    with ExitStack() as exits:
        fleet = IngestFleet(
            mqtt, kafka, db_settings, run_id, log_dir, exits, protocol=mqtt_protocol
        )
        for client_id in fleet.client_ids:
            fleet.start(client_id)
        for client_id in fleet.client_ids:
            fleet.wait_status(client_id, "online")

        publishers = {}
        for gateway in gateways:
            edge = edge_mqtt_settings(gateway)
            settings = edge.model_copy(update={"topic_root": mqtt.topic_root})
            publishers[gateway] = exits.enter_context(Publisher(settings, client_id=gateway))
        load = SteadyLoad(publishers, layout.machines, start)
        exits.callback(load.stop)
        load.start()
        everyone = tuple(fleet.processes.values())

        def load_reaches(count: int) -> bool | None:
            if load.error is not None or not load.is_alive():
                raise AssertionError(f"the load stopped early: {load.error!r}")
            return True if load.count >= count else None

        victim_id = fleet.client_ids[-1]
        victim = fleet.processes[victim_id]
        before_kill = wait_for(
            lambda: m if (m := fleet.messages(victim_id)) and m >= KILL_AFTER else None,
            timeout_s=20,
            what=f"{victim_id} to take {KILL_AFTER} messages",
            services=everyone,
        )
        victim.process.kill()  # SIGKILL: no DISCONNECT, no flush, acks in flight are lost
        exit_code = victim.process.wait(10)
        # The broker has noticed the death (its last will) before the load goes on without it.
        fleet.wait_status(victim_id, "offline", watching=fleet.client_ids[0])
        survivors = tuple(p for p in everyone if p is not victim)
        target = load.count + PUBLISHED_WHILE_DOWN
        wait_for(
            lambda: load_reaches(target),
            timeout_s=20,
            what=f"{PUBLISHED_WHILE_DOWN} batches published while {victim_id} is down",
            services=survivors,
        )
        restarted = fleet.start(victim_id, name=f"{victim_id}-restarted")
        fleet.wait_status(victim_id, "online")
        target = load.count + PUBLISHED_AFTER_RESTART
        wait_for(
            lambda: load_reaches(target),
            timeout_s=20,
            what=f"{PUBLISHED_AFTER_RESTART} batches published after the restart",
            services=(*survivors, restarted),
        )
        load.stop()
        assert load.error is None, f"publishing failed: {load.error!r}"
        for publisher in publishers.values():
            publisher.flush(timeout=30)

        expected = {(b.device_id, b.seq) for b in load.sent}
        arrived, dead_letters = asyncio.run(_read_topics(kafka, expected, timeout_s=30))
        result = Outcome(
            sent=list(load.sent),
            arrived=arrived,
            dead_letters=dead_letters,
            messages_by_instance={cid: fleet.messages(cid) or 0.0 for cid in fleet.client_ids},
            victim_messages_before_kill=before_kill,
            victim_exit_code=exit_code,
        )
        for process in (*survivors, restarted):
            assert process.alive(), process.log_tail()
        yield result


def test_nothing_published_is_lost_when_an_instance_is_killed(outcome: Outcome) -> None:
    sent = {(b.device_id, b.seq): [r.value for r in b.readings] for b in outcome.sent}
    copies = Counter({key: len(values) for key, values in outcome.arrived.items()})
    duplicates = sum(copies.values()) - len(copies)
    missing = sorted(sent.keys() - copies.keys())
    summary = (
        f"{len(sent)} batches ({len(sent) * READINGS_PER_BATCH} readings) published; "
        f"{len(missing)} missing, {duplicates} duplicate records "
        f"({sum(1 for c in copies.values() if c > 1)} batches delivered more than once)"
    )
    assert outcome.victim_exit_code == -9, summary
    assert not missing, f"{summary}; first missing (device, seq): {missing[:10]}"
    assert copies.keys() == sent.keys(), f"{summary}; records nobody published arrived"
    # Every copy carries every reading of its batch, unchanged.
    wrong = [key for key, values in outcome.arrived.items() if any(v != sent[key] for v in values)]
    assert not wrong, f"{summary}; batches with other readings than published: {wrong[:10]}"
    assert outcome.dead_letters == 0, f"{summary}; {outcome.dead_letters} dead letters"


def test_the_load_was_shared_and_the_restarted_instance_took_its_part(outcome: Outcome) -> None:
    assert outcome.victim_messages_before_kill >= KILL_AFTER
    # Each instance, the restarted one included (its counters start again at zero), took
    # messages: the broker shared the load and handed the session back after the restart.
    taken = outcome.messages_by_instance
    assert len(taken) == INSTANCES
    assert all(count > 0 for count in taken.values()), taken
