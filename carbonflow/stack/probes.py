"""Client-side readiness probes: each one talks the service's real protocol.

A probe raises StackError when the service does not (yet) answer as it should, and returns a
short description when it does. The Kafka probe lives in kafka_admin, beside its admin client.
"""

from __future__ import annotations

import os
import threading

import psycopg
from paho.mqtt.client import Client, ConnectFlags
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from carbonflow.config import MqttSettings
from carbonflow.errors import StackError
from carbonflow.mqtt_client import new_client


class BrokerRefusedError(StackError):
    """The MQTT broker answered, and refused the client (CONNACK with a failure code)."""


TIMESCALEDB_VERSION_SQL = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"


def mqtt_probe(settings: MqttSettings, timeout_s: float = 3.0) -> str:
    """A full MQTT CONNECT / CONNACK round-trip (over TLS when ``settings.tls``)."""
    done = threading.Event()
    outcome: dict[str, str] = {}
    where = f"{settings.host}:{settings.broker_port}"

    def on_connect(
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        outcome["reason"] = str(reason_code)
        outcome["ok"] = "yes" if not reason_code.is_failure else ""
        done.set()

    client = new_client(
        settings,
        client_id=f"carbonflow-stack-probe-{os.getpid()}-{threading.get_ident()}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.broker_port, keepalive=10)
    except OSError as exc:  # ssl.SSLError included
        raise StackError(f"MQTT connect to {where} failed: {exc}") from exc
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise StackError(f"no CONNACK from {where} in {timeout_s}s")
        if not outcome.get("ok"):
            raise BrokerRefusedError(
                f"MQTT broker at {where} refused the connection: {outcome.get('reason')}"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    return "MQTT CONNACK received"


def postgres_probe(conninfo: str, timeout_s: int = 3) -> str:
    """Connect as the application would and read the TimescaleDB extension version."""
    try:
        with psycopg.connect(conninfo, connect_timeout=timeout_s, autocommit=True) as conn:
            row = conn.execute(TIMESCALEDB_VERSION_SQL).fetchone()
    except psycopg.Error as exc:
        raise StackError(f"PostgreSQL probe failed: {exc}") from exc
    if row is None:
        raise StackError("PostgreSQL answers but the timescaledb extension is not created")
    return f"TimescaleDB {row[0]}"
