"""Two Faust stream workers sharing the partitions give the same rows as one worker.

The same readings (some records twice, in shuffled order) go to two runs' own topics: one
is consumed by a single worker, the other by two workers of one consumer group, which
split the partitions between them (the second joins while the first is at work, so a
rebalance happens mid-stream). Energy, emissions and hourly rollups must come out the same,
device by device and node by node.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings
from carbonflow.registry import upsert_layout
from carbonflow.supervise import ServiceProcess, running, wait_for
from edge.simulator.factory import FactoryLayout, PowerModel, small_factory
from schemas import Reading, ReadingsRecord
from tests.isolation import RunScope

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEED = 424242
DEVICES = 12
MINUTES = 15
PARTITIONS = 6


def records(layout: FactoryLayout, start: datetime) -> list[ReadingsRecord]:
    """Records of 9 power samples at 10 s, every fourth one twice, shuffled (seeded)."""
    model = PowerModel(layout, seed=SEED)
    out: list[ReadingsRecord] = []
    for machine in layout.machines:
        times = [start + timedelta(seconds=10 * k) for k in range(MINUTES * 6)]
        for seq, first in enumerate(range(0, len(times), 9)):
            chunk = times[first : first + 9]
            out.append(
                ReadingsRecord(
                    gateway_id=machine.gateway_id,
                    device_id=machine.device_id,
                    session_id="workers",
                    seq=seq,
                    sent_at=chunk[-1],
                    received_at=chunk[-1],
                    readings=[
                        Reading(
                            ts=t,
                            metric="active_power",
                            value=round(model.power_w(machine, t), 3),
                            unit="W",
                        )
                        for t in chunk
                    ],
                )
            )
    out += out[::4]
    random.Random(SEED).shuffle(out)
    return out


def produce(kafka: KafkaSettings, batch: list[ReadingsRecord]) -> None:
    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for record in batch:
                await producer.send(
                    kafka.readings_topic,
                    record.model_dump_json().encode(),
                    key=record.device_id.encode(),
                )
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(go())


class Run:
    """One run's layout (its own ids), topics and stream workers."""

    def __init__(self, tag: str, run_id: str, mqtt: MqttSettings, db: DatabaseSettings) -> None:
        self.prefix = f"sw{tag}{run_id}"
        self.layout = small_factory(DEVICES, prefix=self.prefix)
        self.scope = RunScope.create(mqtt, f"sw{tag}", run_id, partitions=PARTITIONS)
        self.db = db
        with psycopg.connect(db.conninfo()) as conn:
            upsert_layout(conn, self.layout)

    def worker(self, stack: ExitStack, log_dir: Path, name: str) -> tuple[ServiceProcess, str]:
        data_dir = log_dir / name
        data_dir.mkdir()
        env = self.scope.service_env(self.db, data_dir)
        process = stack.enter_context(running("stream", log_dir, env, name=name))
        return process, f"http://127.0.0.1:{env['CARBONFLOW_STREAM_WEB_PORT']}/metrics"

    def readings(self) -> int:
        with psycopg.connect(self.db.conninfo()) as conn:
            row = conn.execute(
                "SELECT count(*) FROM readings WHERE device_id = ANY(%s)",
                (list(self.layout.devices()),),
            ).fetchone()
        return int(row[0]) if row else 0

    def results(self) -> dict[str, list[tuple]]:
        """Energy, current emissions and rollups, with this run's prefix taken off ids."""
        devices = list(self.layout.devices())
        queries = {
            "energy": "SELECT device_id, ts, kwh, sample_count, coverage FROM energy_1m"
            " WHERE device_id = ANY(%s) ORDER BY 1, 2",
            "emissions": "SELECT device_id, ts, factor_id, factor_version, kg_co2e"
            " FROM emissions_1m WHERE device_id = ANY(%s) AND superseded_at IS NULL"
            " ORDER BY 1, 2",
            "rollups": "SELECT node_kind, node_id, hour, kwh, kg_co2e_scope2_location,"
            " devices, covered_minutes FROM rollup_hourly WHERE node_id LIKE %s"
            " ORDER BY 1, 2, 3",
        }
        out: dict[str, list[tuple]] = {}
        with psycopg.connect(self.db.conninfo()) as conn:
            for name, sql in queries.items():
                arg: object = f"{self.prefix}-%" if name == "rollups" else devices
                rows = conn.execute(sql, (arg,)).fetchall()
                out[name] = [
                    tuple(
                        v.replace(self.prefix, "*")
                        if isinstance(v, str)
                        else round(v, 9)
                        if isinstance(v, float)
                        else v
                        for v in row
                    )
                    for row in rows
                ]
        return out


def stable_members(kafka: KafkaSettings, group_id: str) -> int:
    """Members of a consumer group once it is stable (partitions assigned), else 0."""

    async def go() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        await admin.start()
        try:
            [description] = await admin.describe_consumer_groups([group_id])
        finally:
            await admin.close()
        [group] = description.groups
        _error, _group, state, _protocol_type, _protocol, members = group[:6]
        return len(members) if state == "Stable" else 0

    return asyncio.run(go())


def records_taken(metrics_url: str) -> float | None:
    try:
        text = httpx.get(metrics_url, timeout=2).text
    except httpx.TransportError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "carbonflow_stream_records":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return None


@pytest.fixture(scope="module")
def start() -> datetime:
    return (datetime.now(UTC) - timedelta(hours=2)).replace(minute=50, second=3, microsecond=0)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


def test_two_workers_sharing_the_partitions_give_the_rows_of_one(
    mqtt_settings: MqttSettings,
    db_settings: DatabaseSettings,
    run_id: str,
    start: datetime,
    log_dir: Path,
) -> None:
    single = Run("1", run_id, mqtt_settings, db_settings)
    pair = Run("2", run_id, mqtt_settings, db_settings)
    data_single = records(single.layout, start)
    # The very same readings for the pair, under its own ids.
    data_pair = [
        r.model_copy(
            update={
                "device_id": r.device_id.replace(single.prefix, pair.prefix),
                "gateway_id": r.gateway_id.replace(single.prefix, pair.prefix),
            }
        )
        for r in data_single
    ]
    distinct = sum(len(r.readings) for r in data_single) * 4 // 5  # duplicates excluded
    expected = DEVICES * MINUTES * 6
    assert distinct >= expected
    produce(single.scope.kafka, data_single)
    half = len(data_pair) // 2
    produce(pair.scope.kafka, data_pair[:half])

    with ExitStack() as stack:
        one, _ = single.worker(stack, log_dir, "stream-single")
        first, first_metrics = pair.worker(stack, log_dir, "stream-pair-a")
        # The second member joins once the first is at work: a rebalance mid-stream.
        wait_for(
            lambda: True if (records_taken(first_metrics) or 0) > 0 else None,
            timeout_s=120,
            what="the first worker of the pair taking records",
            services=(first,),
        )
        second, second_metrics = pair.worker(stack, log_dir, "stream-pair-b")
        group = f"stream-{pair.scope.tag}-{pair.scope.run_id}"
        wait_for(
            lambda: True if stable_members(pair.scope.kafka, group) == 2 else None,
            timeout_s=120,
            what="both workers of the pair in the consumer group",
            services=(first, second),
        )
        # The rest arrives with the partitions split between the two.
        produce(pair.scope.kafka, data_pair[half:])
        for run, services in ((single, (one,)), (pair, (first, second))):
            wait_for(
                lambda run=run: True if run.readings() >= expected else None,
                timeout_s=180,
                what=f"{expected} readings stored",
                services=services,
            )
        # Both members of the pair took part: the second got partitions of its own.
        wait_for(
            lambda: True if (records_taken(second_metrics) or 0) > 0 else None,
            timeout_s=120,
            what="the second worker of the pair taking records",
            services=(second,),
        )

    got_single, got_pair = single.results(), pair.results()
    assert got_single["energy"], "energy rows were computed"
    assert got_single["emissions"], "emissions rows were computed"
    assert got_single["rollups"], "rollups were computed"
    for table in ("energy", "emissions", "rollups"):
        assert got_pair[table] == got_single[table], table
