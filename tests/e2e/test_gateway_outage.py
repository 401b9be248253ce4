"""The gateway loses nothing through a broker outage and through SIGKILL, end to end.

gateway (simulated meters) -> Mosquitto (a broker of this test's own, stopped and started)
-> ingest -> Kafka -> stream worker -> TimescaleDB, every part a real process.

Scenario: the gateway runs; the broker stops; the gateway buffers, and is SIGKILLed with
readings on disk; a second process on the same config and buffer polls on without a broker.
The broker comes back under it while ingest is stopped, and it publishes at once (Mosquitto
2.0 restores ingest's persistent session but not its shared subscription, so batches reach
no subscriber and must stay buffered until ingest is back); it is SIGKILLed too. A third
process publishes what is left and is SIGKILLed mid-stream; a fourth publishes what that one
left, runs, and is stopped cleanly.

What the test expects, and how it knows: the simulated meters' readings are a pure function
of (seed, device, time), so the test recomputes every value. Which instants were polled it
learns from each gateway process's own record: the gateway logs a poll only after it is on
disk ("buffered ..."). Each of those readings must be in the database, once, with the right
value; the database may hold nothing else, except a poll a killed process had stored but not
yet logged (at most its last one per meter). Polls must also have gone on through the outage
(no gaps in the record), so a gateway that stopped polling without a broker cannot pass.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import MQTTProtocolVersion
from prometheus_client.parser import text_string_to_metric_families

from carbonflow.config import DatabaseSettings, MqttSettings
from carbonflow.mqtt_client import new_client
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from carbonflow.supervise import ServiceProcess, free_port, wait_for, wait_for_status
from edge.adapters.simulated import SimulatedMeter, simulated_layout
from edge.buffer import BatchBuffer, OverflowPolicy
from edge.config import SimulatedDevice
from schemas.presence import GatewayStatus, PresenceState
from tests.isolation import RunScope

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEED = 20261129
POLL_S = 0.5
KINDS = ("air_compressor", "cnc_mill", "chiller")
METRICS = ("active_power", "active_energy_import")
PASSWORD_VAR = "GATEWAY_MQTT_PASSWORD"
BUFFERED = re.compile(r"buffered (\S+) seq \d+: (\d+) readings, (\S+) \.\. (\S+)$")
SESSION = re.compile(r"gateway \S+ session (\S+):")


class GatewayProcess(ServiceProcess):
    """``python -m carbonflow gateway run --config ...``, logging each stored poll."""

    def __init__(self, config: Path, log_dir: Path, env: dict[str, str], name: str) -> None:
        command = ["gateway", "run", "--config", str(config)]
        super().__init__(command, log_dir, env, name=name, log_level="DEBUG")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def polls(self) -> list[tuple[str, datetime]]:
        """(device, time) of every poll this process logged as stored, in order."""
        polls = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = BUFFERED.search(line)
            if match is None:
                continue
            device_id, count, first, last = match.groups()
            assert (int(count), first) == (len(METRICS), last), line  # one instant per poll
            polls.append((device_id, datetime.fromisoformat(first)))
        return polls

    def session_id(self) -> str | None:
        match = SESSION.search(self.log_path.read_text(errors="replace"))
        return match.group(1) if match else None


def scrape(url: str) -> dict[str, float]:
    """Samples of a metrics endpoint by name (labels summed); empty if it does not answer."""
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.TransportError:
        return {}
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return totals


def stored_rows(db: DatabaseSettings, devices: list[str]) -> list[tuple[str, str, datetime, float]]:
    with psycopg.connect(db.conninfo()) as conn:
        return conn.execute(
            "SELECT device_id, metric, ts, value FROM readings WHERE device_id = ANY(%s)",
            (devices,),
        ).fetchall()


def watch_gateway_status(
    settings: MqttSettings, gateway_id: str
) -> tuple[Client, list[GatewayStatus]]:
    """Every status message of the gateway from now on (the retained one first)."""
    seen: list[GatewayStatus] = []
    subscribed = threading.Event()
    client = new_client(
        settings, client_id=f"{gateway_id}-watch", protocol=MQTTProtocolVersion.MQTTv5
    )

    def on_message(_c: Client, _u: Any, message: MQTTMessage) -> None:
        seen.append(GatewayStatus.model_validate_json(message.payload))

    client.on_connect = lambda c, *_: c.subscribe(settings.gateway_status_topic(gateway_id), qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(settings.host, settings.port)
    client.loop_start()
    assert subscribed.wait(10), "no SUBACK"
    return client, seen


def test_every_polled_reading_is_stored_once_through_outage_and_kills(
    stack: Stack,
    db_settings: DatabaseSettings,
    mqtt_settings: MqttSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
    tmp_path: Path,
    broker_dir: Path,
) -> None:
    gateway_id = f"gw-e2e-{run_id}"
    devices = [
        SimulatedDevice(
            device_id=f"{gateway_id}-{kind}",
            protocol="simulated",
            kind=kind,
            metrics=METRICS,
            poll_interval_s=POLL_S,
            timeout_s=0.2,
        )
        for kind in KINDS
    ]
    device_ids = [d.device_id for d in devices]
    with psycopg.connect(db_settings.conninfo()) as conn:
        upsert_layout(conn, simulated_layout(gateway_id, devices))
    identity = edge_mqtt_settings(gateway_id)
    assert identity.password is not None

    port = free_port()
    broker = stack.standalone_broker(broker_dir, port=port, tls_port=free_port())
    scope = RunScope.create(
        mqtt_settings.model_copy(update={"port": port}), "gwe2e", run_id, partitions=3
    )
    observer = scope.mqtt
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    config_path = tmp_path / "gateway.toml"
    buffer_path = tmp_path / "buffer" / "gateway.sqlite"
    config_path.write_text(
        "\n".join(
            [
                f'gateway_id = "{gateway_id}"',
                f'topic_root = "{observer.topic_root}"',
                "[broker]",
                f'host = "{observer.host}"',
                f"port = {port}",
                "keepalive_s = 5",
                f'username = "{gateway_id}"',
                f'password_env = "{PASSWORD_VAR}"',
                "[buffer]",
                'path = "buffer/gateway.sqlite"',
                "[publish]",
                "batch_interval_s = 1.0",
                *(
                    line
                    for d in devices
                    for line in (
                        "[[devices]]",
                        f'device_id = "{d.device_id}"',
                        'protocol = "simulated"',
                        f'kind = "{d.kind.value}"',
                        f"metrics = {json.dumps(list(METRICS))}",
                        f"poll_interval_s = {POLL_S}",
                        "timeout_s = 0.2",
                    )
                ),
            ]
        )
        + "\n"
    )
    origin = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    gateway_metrics_port = free_port()
    gateway_env = {
        PASSWORD_VAR: identity.password.get_secret_value(),
        "CARBONFLOW_GATEWAY_SIM_SEED": str(SEED),
        "CARBONFLOW_GATEWAY_SIM_COUNTER_ORIGIN": origin.isoformat(),
        "CARBONFLOW_GATEWAY_METRICS_PORT": str(gateway_metrics_port),
        "CARBONFLOW_GATEWAY_RECONNECT_MAX_S": "2",
        "CARBONFLOW_GATEWAY_SHUTDOWN_TIMEOUT_S": "20",
    }
    service_env = scope.service_env(db_settings, log_dir, CARBONFLOW_INGEST_SESSION_EXPIRY_S="600")
    metrics_url = f"http://127.0.0.1:{gateway_metrics_port}/metrics"

    def rows() -> list[tuple[str, str, datetime, float]]:
        return stored_rows(db_settings, device_ids)

    def stored_polls(device_id: str, after: datetime) -> int:
        return len({ts for d, m, ts, _ in rows() if d == device_id and ts > after})

    with ExitStack() as cleanup:
        broker.ensure_started()
        cleanup.callback(broker.stop)
        broker.wait_ready(30)
        ingest = ServiceProcess("ingest", log_dir, service_env, log_level="DEBUG")
        cleanup.callback(ingest.stop)
        stream = ServiceProcess("stream", log_dir, service_env)
        cleanup.callback(stream.stop)
        wait_for_status(observer, "ingest", scope.ingest_client_id, "online", ingest)
        pipeline = (ingest, stream)

        # 1. Running normally: polls reach the database.
        first = GatewayProcess(config_path, log_dir, gateway_env, "gateway-1")
        cleanup.callback(first.stop)
        wait_for(
            lambda: True if all(stored_polls(d, origin) >= 3 for d in device_ids) else None,
            timeout_s=60,
            what="the first polls in the database",
            services=(*pipeline, first),
        )

        # 2. The broker goes away; the gateway buffers, and is killed with readings on disk.
        broker.stop()
        broker_stopped = datetime.now(UTC)
        wait_for(
            lambda: (
                True
                if scrape(metrics_url).get("carbonflow_gateway_pending_batches", 0) >= 9
                else None
            ),
            timeout_s=20,
            what="polls buffered while the broker is away",
            services=(first,),
        )
        first.kill()

        # 3. A new process on the same buffer, broker still away: it polls on and buffers.
        second = GatewayProcess(config_path, log_dir, gateway_env, "gateway-2")
        cleanup.callback(second.stop)
        wait_for(
            lambda: True if len(second.polls()) >= 3 * len(device_ids) else None,
            timeout_s=20,
            what="the second gateway polling without a broker",
            services=(second,),
        )

        # 4. The broker comes back under the running gateway, which publishes as soon as it
        #    reconnects. Ingest is held back until the broker has answered "No matching
        #    subscribers" at least once, so that path is always exercised: the batches must
        #    stay buffered and go out once ingest has subscribed again.
        assert ingest.stop() == 0, ingest.log_tail()
        broker.ensure_started()
        broker.wait_ready(30)
        broker_back = datetime.now(UTC)
        wait_for(
            lambda: (
                True
                if scrape(metrics_url).get("carbonflow_gateway_publish_unrouted_total", 0) >= 1
                else None
            ),
            timeout_s=30,
            what="batches that reached no subscriber after the broker's restart",
            services=(second,),
        )
        ingest = ServiceProcess("ingest", log_dir, service_env, name="ingest-2", log_level="DEBUG")
        cleanup.callback(ingest.stop)
        wait_for_status(observer, "ingest", scope.ingest_client_id, "online", ingest)
        pipeline = (ingest, stream)
        backlog = set(first.polls()) | {(d, ts) for d, ts in second.polls() if ts < broker_back}
        wait_for(
            lambda: True if {(d, ts) for d, _, ts, _ in rows()} >= backlog else None,
            timeout_s=60,
            what="the backlog published after the broker came back in the database",
            services=(*pipeline, second),
        )
        second.kill()

        # 5. A third process publishes what the killed ones left...
        watcher, statuses = watch_gateway_status(observer, gateway_id)
        cleanup.callback(watcher.loop_stop)
        cleanup.callback(watcher.disconnect)
        third = GatewayProcess(config_path, log_dir, gateway_env, "gateway-3")
        cleanup.callback(third.stop)
        backlog = set(first.polls()) | set(second.polls())
        wait_for(
            lambda: True if {(d, ts) for d, _, ts, _ in rows()} >= backlog else None,
            timeout_s=60,
            what="every poll of the killed gateways in the database",
            services=(*pipeline, third),
        )

        # ...and is killed mid-stream, with polls on disk not yet acknowledged: the broker
        # announces its death (the last will).
        wait_for(
            lambda: (
                True
                if scrape(metrics_url).get("carbonflow_gateway_pending_batches", 0)
                >= len(device_ids)
                else None
            ),
            timeout_s=20,
            what="unacknowledged polls in the third gateway's buffer",
            services=(third,),
        )
        third.kill()
        wait_for(
            lambda: (
                True
                if any(
                    s.state is PresenceState.OFFLINE
                    and s.will
                    and s.session_id == third.session_id()
                    for s in statuses
                )
                else None
            ),
            timeout_s=30,
            what="the last will of the killed gateway",
        )

        # 6. A fourth process publishes what the third left, runs a while, stops cleanly.
        fourth = GatewayProcess(config_path, log_dir, gateway_env, "gateway-4")
        cleanup.callback(fourth.stop)
        started_fourth = datetime.now(UTC)
        wait_for(
            lambda: True if all(stored_polls(d, started_fourth) >= 2 for d in device_ids) else None,
            timeout_s=60,
            what="the fourth gateway's polls in the database",
            services=(*pipeline, fourth),
        )
        assert fourth.stop() == 0, fourth.log_tail()
        inherited = re.search(
            r"opened buffer .*: (\d+) pending batches", fourth.log_path.read_text()
        )
        assert inherited is not None
        assert int(inherited.group(1)) >= 1  # the third one's leftovers went out from here
        assert "buffer empty" in fourth.log_path.read_text()
        runs = [first, second, third, fourth]
        logged = {(d, ts) for run in runs for d, ts in run.polls()}
        wait_for(
            lambda: True if {(d, ts) for d, _, ts, _ in rows()} >= logged else None,
            timeout_s=60,
            what="every logged poll in the database",
            services=pipeline,
        )
        final_rows = rows()

    # Every logged poll, both metrics, with the value the meter gave, exactly once.
    meters = {
        d.device_id: SimulatedMeter.from_config(
            d, gateway_id=gateway_id, seed=SEED, counter_origin=origin
        )
        for d in devices
    }
    by_key = defaultdict(list)
    for device_id, metric, ts, value in final_rows:
        by_key[(device_id, metric, ts)].append(value)
    assert all(len(values) == 1 for values in by_key.values())  # the table's key holds
    for device_id, ts in sorted(logged, key=lambda p: p[1]):
        expected = {r.metric: r.value for r in meters[device_id].sample(ts)}
        for metric in METRICS:
            assert by_key[(device_id, metric, ts)] == [pytest.approx(expected[metric], rel=1e-12)]

    # Nothing else: a stored row that was never logged can only be a killed process's last
    # poll (stored, then killed before the log line), and its values are right too.
    unlogged = {(d, ts) for d, _, ts, _ in final_rows} - logged
    for killed, successor in itertools.pairwise(runs):
        for device_id in device_ids:
            last = max(ts for d, ts in killed.polls() if d == device_id)
            following = min(ts for d, ts in successor.polls() if d == device_id)
            tail = {(d, ts) for d, ts in unlogged if d == device_id and last < ts < following}
            assert len(tail) <= 1, (killed.name, tail)
            unlogged -= tail
            for _, ts in tail:
                expected = {r.metric: r.value for r in meters[device_id].sample(ts)}
                for metric in METRICS:
                    assert by_key[(device_id, metric, ts)] == [
                        pytest.approx(expected[metric], rel=1e-12)
                    ]
    assert unlogged == set()

    # Polling never paused for the broker, and readings taken while it was away (and then
    # killed with) made it: the outage is really inside the record.
    for run in runs:
        for device_id in device_ids:
            times = sorted(ts for d, ts in run.polls() if d == device_id)
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
            assert times, (run.name, device_id)
            assert max(gaps, default=0.0) < 4 * POLL_S, (run.name, device_id, max(gaps))
    for device_id in device_ids:
        assert any(ts > broker_stopped for d, ts in first.polls() if d == device_id)
        # The second process polled on both sides of the broker's return.
        assert any(ts < broker_back for d, ts in second.polls() if d == device_id)
        assert any(ts > broker_back for d, ts in second.polls() if d == device_id)

    # The clean stop left nothing behind.
    with BatchBuffer.open(buffer_path, max_bytes=10**9, policy=OverflowPolicy.DROP_OLDEST) as buf:
        assert buf.stats().entries == 0
