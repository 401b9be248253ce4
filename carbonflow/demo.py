"""``carbonflow demo``: the whole system on a simulated factory, until Ctrl-C.

Starts the local stack, migrates and seeds the database, issues MQTT credentials for the
simulated gateways, then runs ingest (as the platform service identity), a stream worker, the
API and the live simulator (one connection per gateway, each as itself) as child processes
with their logs under the state dir; credentials reach them through their environment.
Stops what it started, and leaves alone what was already running.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from carbonflow import db
from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings
from carbonflow.mqtt_auth import store
from carbonflow.mqtt_auth.access import Role
from carbonflow.registry import upsert_layout
from carbonflow.supervise import ServiceProcess, mqtt_env, wait_for
from edge.simulator.factory import demo_factory

logger = logging.getLogger(__name__)

SERVICES = ("ingest", "stream", "api", "simulate")
STATUS_EVERY_S = 10.0


def run_demo(
    stack_settings: StackSettings,
    mqtt: MqttSettings,
    kafka: KafkaSettings,
    database: DatabaseSettings,
) -> None:
    from carbonflow.stack import Stack

    stack = Stack(stack=stack_settings, mqtt=mqtt, kafka=kafka, db=database)
    was_running = all(service.running for service in stack.status())
    print("Starting the local stack (Mosquitto, PostgreSQL + TimescaleDB, Kafka)...", flush=True)
    stack.up()
    try:
        db.migrate(database)
        layout = demo_factory()
        with psycopg.connect(database.conninfo(), autocommit=True) as conn:
            upsert_layout(conn, layout)
            # Fresh passwords for the simulated gateways on every start: they exist only in
            # the simulator's environment.
            gateway_passwords = {
                gateway_id: store.issue(conn, gateway_id, Role.GATEWAY).get_secret_value()
                for gateway_id in layout.gateways()
            }
        stack.sync_mqtt_access()
        print(
            f"Registered the demo factory: {len(layout.machines)} machines "
            f"on {len(layout.sites)} sites, {len(gateway_passwords)} gateways.",
            flush=True,
        )
        log_dir = stack_settings.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        envs = {
            "ingest": mqtt_env(stack.service_mqtt_settings(mqtt)),
            "simulate": {"CARBONFLOW_SIM_GATEWAY_PASSWORDS": json.dumps(gateway_passwords)},
        }
        with _children(log_dir, envs) as children:
            _wait_for_api(children["api"])
            _print_banner(layout.machines[0].device_id, log_dir)
            _watch(children, database)
    finally:
        if not was_running:
            print("Stopping the local stack...", flush=True)
            stack.down()


@contextmanager
def _children(
    log_dir: Path, envs: Mapping[str, Mapping[str, str]]
) -> Iterator[dict[str, ServiceProcess]]:
    children: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:
            children[name] = ServiceProcess(name, log_dir, envs.get(name), name=f"demo-{name}")
        yield children
    finally:
        print("\nStopping the demo services...", flush=True)
        for name in reversed(SERVICES):  # the simulator first, the stream worker last
            if name in children:
                children[name].stop()


def _api_address() -> str:
    from services.api.settings import ApiSettings

    settings = ApiSettings()
    return f"http://{settings.host}:{settings.port}"


def _wait_for_api(child: ServiceProcess) -> None:
    url = f"{_api_address()}/readyz"

    def ready() -> bool | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (http only)
                return True if response.status == 200 else None
        except OSError:
            return None

    wait_for(ready, timeout_s=60, what="the API to become ready", services=(child,))


def _print_banner(device_id: str, log_dir: Path) -> None:
    base = _api_address()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    window = f"from={start:%Y-%m-%dT%H:%MZ}&to={end:%Y-%m-%dT%H:%MZ}"
    energy = f"{base}/v1/devices/{device_id}/energy?{window}&bucket=1m"
    print(
        f"""
CarbonFlow demo is running.
  API            {base}            (OpenAPI docs: {base}/docs)
  Try            curl -s '{base}/v1/sites'
                 curl -s '{energy}'
  Service logs   {log_dir}/demo-*.log
Press Ctrl-C to stop.
""",
        flush=True,
    )


def _watch(children: dict[str, ServiceProcess], database: DatabaseSettings) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(STATUS_EVERY_S):
        for child in children.values():
            if not child.alive():
                print(
                    f"{child.name} exited unexpectedly; last lines of its log:\n{child.log_tail()}"
                )
                return
        print(_status_line(database), flush=True)


def _status_line(database: DatabaseSettings) -> str:
    try:
        with psycopg.connect(database.conninfo(), connect_timeout=5) as conn:
            row = conn.execute(
                """
                SELECT count(*), count(DISTINCT device_id), max(ts)
                FROM readings WHERE stored_at > now() - interval '1 minute'
                """
            ).fetchone()
            energy = conn.execute(
                "SELECT coalesce(sum(kwh), 0) FROM energy_1m WHERE ts > now() - interval '1 hour'"
            ).fetchone()
    except psycopg.Error as exc:
        return f"status unavailable: {exc}"
    assert row is not None
    assert energy is not None
    count, devices, latest = row
    return (
        f"[{time.strftime('%H:%M:%S')}] last minute: {count} readings from {devices} devices "
        f"(newest {latest:%H:%M:%S} UTC); energy in the last hour: {energy[0]:.2f} kWh"
        if latest
        else f"[{time.strftime('%H:%M:%S')}] waiting for the first readings..."
    )
