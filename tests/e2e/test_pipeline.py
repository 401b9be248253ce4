"""End to end through every real part: simulator -> Mosquitto -> ingest -> Kafka -> Faust
stream worker -> TimescaleDB -> REST API.

The simulator publishes a known set of readings, some batches twice, plus bad messages; the
test finds exactly the expected rows, energy equal to an independent calculation, every bad
message in the dead-letter topic with its reason, and the same data through the API. The
gateway publishes as itself and ingest runs as the platform service identity; a message for
a device not registered under the gateway is refused by the broker and never reaches ingest.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings
from carbonflow.registry import upsert_layout
from carbonflow.supervise import (
    ServiceProcess,
    free_port,
    running,
    wait_for,
    wait_for_status,
)
from edge.errors import PublishError
from edge.simulator.factory import FactoryLayout, PowerModel, demo_factory
from edge.simulator.publisher import Publisher
from schemas import Reading, TelemetryBatch
from tests import naive
from tests.isolation import RunScope

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEED = 20261129
INTERVAL_S = 10
MINUTES = 12
BATCH = 9  # readings per batch: batches straddle minute boundaries on purpose
N_DEVICES = 4
MAX_GAP_S = 120.0


class Known:
    """The readings the simulator publishes, and what should come out the other end."""

    def __init__(self, layout: FactoryLayout, start: datetime) -> None:
        model = PowerModel(layout, seed=SEED)
        self.machines = layout.machines[:N_DEVICES]
        self.ghost_refusal = ""
        self.samples: dict[str, list[tuple[datetime, float]]] = {}
        self.batches: list[TelemetryBatch] = []
        for machine in self.machines:
            times = [start + timedelta(seconds=k * INTERVAL_S) for k in range(MINUTES * 6)]
            samples = [(t, round(model.power_w(machine, t), 3)) for t in times]
            self.samples[machine.device_id] = samples
            for seq, first in enumerate(range(0, len(samples), BATCH)):
                chunk = samples[first : first + BATCH]
                self.batches.append(
                    TelemetryBatch(
                        gateway_id=machine.gateway_id,
                        device_id=machine.device_id,
                        session_id=f"e2e-{SEED}",
                        seq=seq,
                        sent_at=chunk[-1][0],
                        readings=[
                            Reading(ts=t, metric="active_power", value=v, unit="W")
                            for t, v in chunk
                        ],
                    )
                )

    def expected_energy(self, device_id: str) -> dict[int, tuple[float, float, int]]:
        """minute -> (kWh, coverage, samples), by the naive trapezoid twin."""
        samples = [(t.timestamp(), v) for t, v in self.samples[device_id]]
        lo = math.floor(samples[0][0] / 60) - 2
        hi = math.floor(samples[-1][0] / 60) + 2
        return {
            minute: (energy / 3.6e6, min(covered / 60, 1.0), count)
            for minute, energy, covered, count in naive.integrate_power_by_minute(
                samples, lo, hi, MAX_GAP_S
            )
            if count or covered
        }


@pytest.fixture(scope="module")
def layout(db_settings: DatabaseSettings, run_id: str) -> FactoryLayout:
    """The demo factory, its gateways renamed for this run (gateway ids are broker-wide)."""
    demo = demo_factory()
    machines = tuple(replace(m, gateway_id=f"e2e{run_id}-{m.gateway_id}") for m in demo.machines)
    layout = replace(demo, machines=machines)
    with psycopg.connect(db_settings.conninfo()) as conn:
        upsert_layout(conn, layout)
    return layout


@pytest.fixture(scope="module")
def scope(mqtt_settings: MqttSettings, run_id: str) -> RunScope:
    """The platform service identity on this run's topic root, and this run's topics."""
    return RunScope.create(mqtt_settings, "e2e", run_id, partitions=3)


@pytest.fixture(scope="module")
def settings(scope: RunScope) -> tuple[MqttSettings, KafkaSettings]:
    return scope.mqtt, scope.kafka


@pytest.fixture(scope="module")
def services(
    scope: RunScope,
    db_settings: DatabaseSettings,
    layout: FactoryLayout,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, object]]:
    log_dir = tmp_path_factory.mktemp("e2e-logs")
    api_port = free_port()
    env = scope.service_env(
        db_settings,
        log_dir,
        CARBONFLOW_STREAM_MAX_GAP_S=str(MAX_GAP_S),
        CARBONFLOW_API_PORT=str(api_port),
    )
    ingest_metrics_port = env["CARBONFLOW_INGEST_METRICS_PORT"]
    stream_web_port = env["CARBONFLOW_STREAM_WEB_PORT"]
    with (
        running("ingest", log_dir, env, log_level="DEBUG") as ingest,
        running("stream", log_dir, env, log_level="DEBUG") as stream,
        running("api", log_dir, env) as api,
    ):
        wait_for_status(scope.mqtt, "ingest", scope.ingest_client_id, "online", ingest)
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: _ready(base), timeout_s=60, what="API readiness", services=(api,))
        yield {
            "ingest": ingest,
            "stream": stream,
            "api": api,
            "base_url": base,
            "ingest_metrics": f"http://127.0.0.1:{ingest_metrics_port}/metrics",
            "stream_metrics": f"http://127.0.0.1:{stream_web_port}/metrics",
        }


def _ready(base: str) -> bool | None:
    try:
        return True if httpx.get(f"{base}/readyz", timeout=2).status_code == 200 else None
    except httpx.TransportError:
        return None


@pytest.fixture(scope="module")
def published(
    services: dict[str, object],
    settings: tuple[MqttSettings, KafkaSettings],
    layout: FactoryLayout,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
) -> Known:
    start = (datetime.now(UTC) - timedelta(minutes=40)).replace(second=0, microsecond=0)
    known = Known(layout, start + timedelta(seconds=3))
    machine = known.machines[0]
    assert {m.gateway_id for m in known.machines} == {machine.gateway_id}
    mqtt_settings = edge_mqtt_settings(machine.gateway_id).model_copy(
        update={"topic_root": settings[0].topic_root}
    )
    topic = mqtt_settings.telemetry_topic(machine.gateway_id, machine.device_id)
    mixed = json.loads(known.batches[0].model_dump_json())
    mixed["seq"] = 1000
    mixed["readings"] = [
        {**mixed["readings"][0], "ts": (start - timedelta(seconds=7)).isoformat()},
        {**mixed["readings"][0], "ts": (start - timedelta(seconds=5)).isoformat(), "value": "NaN"},
    ]
    mixed_payload = json.dumps(mixed).replace('"NaN"', "NaN").encode()
    ghost = known.batches[0].model_copy(update={"device_id": "ghost-device-1"})
    half = len(known.batches) // 2
    with Publisher(mqtt_settings, client_id=f"e2e-sim-{run_id}") as publisher:
        # Bad input first and in the middle: the services must go on and lose nothing after it.
        publisher.publish_raw(topic, b'{"gateway_id": "gw", "readings": [')
        for batch in known.batches[:half]:
            publisher.publish_batch(batch)
        publisher.publish_raw(topic, mixed_payload)
        # A device the gateway has no right to: the broker refuses it (on its own connection,
        # as a refusal fails the publisher that met it).
        with Publisher(mqtt_settings, client_id=f"e2e-ghost-{run_id}") as ghost_publisher:
            ghost_publisher.publish_raw(
                mqtt_settings.telemetry_topic(machine.gateway_id, "ghost-device-1"),
                ghost.model_dump_json().encode(),
            )
            with pytest.raises(PublishError) as refusal:
                ghost_publisher.flush(timeout=30)
            known.ghost_refusal = str(refusal.value)
        for batch in known.batches[half:]:
            publisher.publish_batch(batch)
        for batch in known.batches[::5]:  # at-least-once upstream: send some batches again
            publisher.publish_batch(batch)
        publisher.flush(timeout=60)
    # The one valid reading of the mixed batch must be stored next to the known set.
    valid_neighbour = (start - timedelta(seconds=7), mixed["readings"][0]["value"])
    known.samples[machine.device_id].insert(0, valid_neighbour)
    return known


def _stored_readings(db: DatabaseSettings, devices: list[str]) -> list[tuple[str, datetime, float]]:
    with psycopg.connect(db.conninfo()) as conn:
        return conn.execute(
            "SELECT device_id, ts, value FROM readings WHERE device_id = ANY(%s) "
            "ORDER BY device_id, ts",
            (devices,),
        ).fetchall()


@pytest.fixture(scope="module")
def stored(
    published: Known, db_settings: DatabaseSettings, services: dict[str, object]
) -> list[tuple[str, datetime, float]]:
    """Wait until as many readings are stored as were published (energy commits with them)."""
    devices = [m.device_id for m in published.machines]
    expected = sum(len(rows) for rows in published.samples.values())
    pipeline = (services["ingest"], services["stream"])
    return wait_for(
        lambda: r if len(r := _stored_readings(db_settings, devices)) >= expected else None,
        timeout_s=120,
        what=f"{expected} readings in the database",
        services=pipeline,  # type: ignore[arg-type]
    )


def test_every_reading_is_stored_exactly_once(
    published: Known, stored: list[tuple[str, datetime, float]]
) -> None:
    expected = sorted(
        (device, ts, value) for device, rows in published.samples.items() for ts, value in rows
    )
    assert stored == expected


def _stored_energy(db: DatabaseSettings, device_id: str) -> dict[int, tuple[float, float, int]]:
    with psycopg.connect(db.conninfo()) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM ts)::bigint / 60, kwh, coverage, sample_count "
            "FROM energy_1m WHERE device_id = %s ORDER BY ts",
            (device_id,),
        ).fetchall()
    return {minute: (kwh, coverage, count) for minute, kwh, coverage, count in rows}


def test_energy_matches_an_independent_calculation(
    published: Known, stored: object, db_settings: DatabaseSettings
) -> None:
    for machine in published.machines:
        expected = published.expected_energy(machine.device_id)
        energy = _stored_energy(db_settings, machine.device_id)
        assert energy.keys() == expected.keys()
        for minute, (kwh, coverage, count) in expected.items():
            got_kwh, got_coverage, got_count = energy[minute]
            assert got_kwh == pytest.approx(kwh, rel=1e-9, abs=1e-12), minute
            assert got_coverage == pytest.approx(coverage, abs=1e-9), minute
            assert got_count == count, minute
        assert sum(k for k, _, _ in energy.values()) > 0


def test_the_broker_refuses_a_device_not_registered_under_the_gateway(
    published: Known,
) -> None:
    assert "Not authorized" in published.ghost_refusal


def test_bad_messages_land_in_the_dead_letter_topic_with_reasons(
    published: Known, settings: tuple[MqttSettings, KafkaSettings]
) -> None:
    _, kafka = settings

    async def consume() -> list[dict[str, object]]:
        consumer = AIOKafkaConsumer(
            kafka.deadletter_topic,
            bootstrap_servers=kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        records: list[dict[str, object]] = []
        try:
            async with asyncio.timeout(60):
                while len(records) < 2:
                    batch = await consumer.getmany(timeout_ms=1000)
                    for messages in batch.values():
                        records.extend(json.loads(m.value) for m in messages)
        finally:
            await consumer.stop()
        return records

    records = asyncio.run(consume())
    reasons = Counter(str(r["reason"]) for r in records)
    assert reasons == Counter({"malformed_json": 1, "non_finite_value": 1})
    nan_reject = next(r for r in records if r["reason"] == "non_finite_value")
    assert nan_reject["reading_index"] == 1
    assert nan_reject["device_id"] == published.machines[0].device_id


def test_the_api_serves_the_same_data(
    published: Known, stored: object, services: dict[str, object]
) -> None:
    base = str(services["base_url"])
    machine = published.machines[1]
    samples = published.samples[machine.device_id]
    window = {
        "from": samples[0][0].isoformat(),
        "to": (samples[-1][0] + timedelta(seconds=1)).isoformat(),
    }
    readings = httpx.get(f"{base}/v1/devices/{machine.device_id}/readings", params=window).json()
    got = [(datetime.fromisoformat(r["ts"]), r["value"]) for r in readings["readings"]]
    assert got == samples

    expected = published.expected_energy(machine.device_id)
    energy_window = {
        "from": datetime.fromtimestamp(min(expected) * 60, UTC).isoformat(),
        "to": datetime.fromtimestamp((max(expected) + 1) * 60, UTC).isoformat(),
        "bucket": "1m",
    }
    energy = httpx.get(f"{base}/v1/devices/{machine.device_id}/energy", params=energy_window)
    assert energy.status_code == 200, energy.text
    buckets = {
        int(datetime.fromisoformat(b["start"]).timestamp()) // 60: b["kwh"]
        for b in energy.json()["buckets"]
    }
    assert buckets.keys() == expected.keys()
    for minute, (kwh, _, _) in expected.items():
        assert buckets[minute] == pytest.approx(kwh, rel=1e-9, abs=1e-12)

    missing = httpx.get(f"{base}/v1/devices/no-such-device/readings", params=window)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_services_are_still_running_after_bad_input(
    stored: object, services: dict[str, object]
) -> None:
    for name in ("ingest", "stream", "api"):
        process = services[name]
        assert isinstance(process, ServiceProcess)
        assert process.alive(), process.log_tail()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_what_happened(
    published: Known, stored: list[tuple[str, datetime, float]], services: dict[str, object]
) -> None:
    ingest = scrape(str(services["ingest_metrics"]))
    sent = len(published.batches) + len(published.batches[::5]) + 2
    assert ingest[("carbonflow_ingest_messages_total", ())] == sent
    for reason in ("malformed_json", "non_finite_value"):
        assert ingest[("carbonflow_ingest_dead_letters_total", (("reason", reason),))] == 1
    unknown = ("carbonflow_ingest_dead_letters_total", (("reason", "unknown_device"),))
    assert ingest.get(unknown, 0.0) == 0.0
    forwarded = sum(len(b.readings) for b in published.batches + published.batches[::5]) + 1
    assert ingest[("carbonflow_ingest_readings_forwarded_total", ())] == forwarded

    stream = scrape(str(services["stream_metrics"]))
    assert stream[("carbonflow_stream_readings_stored_total", ())] == len(stored)
    assert any(name.startswith("carbonflow_faust_") for name, _ in stream)
