"""MQTT security on the real local Mosquitto: credentials and ACLs from the registry, TLS.

Two gateways are registered with a device each; each publishes as itself. The platform
service identity observes what gets through (through a shared subscription, as ingest
does). "Receives nothing" is shown without waiting out a timeout: after the refused
messages the same client publishes an allowed marker, and the broker delivers one client's
messages in order, so anything let through would arrive before the marker.
"""

from __future__ import annotations

import os
import queue
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dotenv import dotenv_values
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from carbonflow.config import DatabaseSettings, MqttSettings
from carbonflow.mqtt_auth import store
from carbonflow.mqtt_client import new_client
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from edge.simulator.factory import FactoryLayout, small_factory

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0
NOT_AUTHORIZED = "Not authorized"


class Session:
    """One MQTT v5 connection that records CONNACK and PUBACK reason codes and messages."""

    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        self.settings = settings
        self.client: Client = new_client(settings, client_id=client_id)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connack: queue.Queue[ReasonCode] = queue.Queue()
        self._subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self._pubacks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        self.disconnected = threading.Event()
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self._connack.put(reason)
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self._subacks.put(codes)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = lambda *_args: self.disconnected.set()

    def _on_message(self, _c: Client, _u: Any, message: MQTTMessage) -> None:
        self.messages.put((message.topic, message.payload))

    def _on_publish(self, _c: Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self._acked:
            self._pubacks[mid] = reason
            self._acked.notify_all()

    def connect(self) -> ReasonCode:
        self.client.connect(self.settings.host, self.settings.broker_port, keepalive=30)
        self.client.loop_start()
        reason = self._connack.get(timeout=TIMEOUT_S)
        if reason.is_failure:
            self.client.disconnect()  # no automatic retries with refused credentials
        return reason

    def subscribe(self, *filters: str) -> None:
        self.client.subscribe([(f, 1) for f in filters])
        codes = self._subacks.get(timeout=TIMEOUT_S)
        assert not any(code.is_failure for code in codes), codes

    def publish(self, topic: str, payload: bytes = b"{}") -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        mid = self.client.publish(topic, payload, qos=1).mid
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self._pubacks, TIMEOUT_S), "no PUBACK"
            return self._pubacks.pop(mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class Gateway:
    gateway_id: str
    device_id: str
    settings: MqttSettings


@pytest.fixture(scope="module")
def root(run_id: str) -> str:
    return f"cf-sec-{run_id}/v1"


@pytest.fixture(scope="module")
def layout(db_settings: DatabaseSettings, run_id: str) -> FactoryLayout:
    """Two gateways (``sec<run>-gw1``, ``-gw2``) with one device each."""
    layout = small_factory(2, prefix=f"sec{run_id}")
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        upsert_layout(conn, layout)
    return layout


@pytest.fixture(scope="module")
def gateways(
    layout: FactoryLayout, edge_mqtt_settings: Callable[[str], MqttSettings], root: str
) -> tuple[Gateway, Gateway]:
    a, b = (
        Gateway(
            m.gateway_id,
            m.device_id,
            edge_mqtt_settings(m.gateway_id).model_copy(update={"topic_root": root}),
        )
        for m in layout.machines
    )
    return a, b


@pytest.fixture
def service(mqtt_settings: MqttSettings, root: str) -> MqttSettings:
    return mqtt_settings.model_copy(update={"topic_root": root})


@pytest.fixture
def session() -> Iterator[Callable[[MqttSettings, str], Session]]:
    """Sessions for a test, closed after it."""
    opened: list[Session] = []

    def open_session(settings: MqttSettings, client_id: str) -> Session:
        opened.append(Session(settings, client_id))
        return opened[-1]

    yield open_session
    for s in opened:
        s.close()


@pytest.fixture
def observer(
    service: MqttSettings, session: Callable[[MqttSettings, str], Session], run_id: str
) -> Session:
    """The service identity, subscribed as ingest is: a shared subscription to telemetry."""
    s = session(service, f"sec-observer-{run_id}")
    assert not s.connect().is_failure
    s.subscribe(f"$share/sec-{run_id}/{service.telemetry_filter}", f"{service.topic_root}/status/#")
    return s


def next_message(s: Session) -> tuple[str, bytes]:
    return s.messages.get(timeout=TIMEOUT_S)


# -- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_anonymous_clients_are_refused(
    stack: Stack, session: Callable[[MqttSettings, str], Session], run_id: str, tls: bool
) -> None:
    anonymous = MqttSettings(host=stack.mqtt.host, port=stack.mqtt.port)
    anonymous = stack.tls_settings(anonymous) if tls else anonymous

    assert str(session(anonymous, f"sec-anon-{run_id}").connect()) == NOT_AUTHORIZED


def test_a_wrong_password_is_refused(
    gateways: tuple[Gateway, Gateway],
    session: Callable[[MqttSettings, str], Session],
    run_id: str,
) -> None:
    a, b = gateways
    wrong = a.settings.model_copy(update={"password": SecretStr("not-the-password")})
    # Another identity's valid password is just as wrong.
    borrowed = a.settings.model_copy(update={"password": b.settings.password})
    unknown = a.settings.model_copy(update={"username": f"nobody-{run_id}"})

    for n, settings in enumerate((wrong, borrowed, unknown)):
        assert str(session(settings, f"sec-wrong-{run_id}-{n}").connect()) == NOT_AUTHORIZED
    assert not session(a.settings, f"sec-right-{run_id}").connect().is_failure


# -- authorisation --------------------------------------------------------------------------


def test_a_gateway_publishes_for_its_own_device(
    gateways: tuple[Gateway, Gateway],
    observer: Session,
    session: Callable[[MqttSettings, str], Session],
    run_id: str,
) -> None:
    a, _ = gateways
    gw = session(a.settings, f"sec-a-{run_id}")
    assert not gw.connect().is_failure
    topic = a.settings.telemetry_topic(a.gateway_id, a.device_id)

    assert not gw.publish(topic, b"own").is_failure
    assert not gw.publish(a.settings.gateway_status_topic(a.gateway_id), b"status").is_failure

    assert next_message(observer) == (topic, b"own")
    assert next_message(observer) == (a.settings.gateway_status_topic(a.gateway_id), b"status")


def test_a_gateway_cannot_publish_as_another_or_for_a_device_not_its_own(
    gateways: tuple[Gateway, Gateway],
    observer: Session,
    session: Callable[[MqttSettings, str], Session],
    run_id: str,
) -> None:
    a, b = gateways
    s = a.settings
    forbidden = [
        s.telemetry_topic(b.gateway_id, b.device_id),  # as gateway B, for B's device
        s.telemetry_topic(a.gateway_id, b.device_id),  # B's device, under A's name
        s.telemetry_topic(a.gateway_id, f"unregistered-{run_id}"),  # no such device under A
        s.gateway_status_topic(b.gateway_id),
        s.device_status_topic(b.gateway_id, b.device_id),
        f"spBv1.0/plant/NDATA/{b.gateway_id}",  # Sparkplug B as edge node B
        f"spBv1.0/plant/DDATA/{b.gateway_id}/{b.device_id}",
        s.service_status_topic("ingest", f"fake-{run_id}"),  # a platform service's status
    ]
    gw = session(s, f"sec-intruder-{run_id}")
    assert not gw.connect().is_failure

    refusals = {topic: str(gw.publish(topic, b"forged")) for topic in forbidden}
    marker = s.gateway_status_topic(a.gateway_id)
    assert not gw.publish(marker, b"marker").is_failure

    assert refusals == dict.fromkeys(forbidden, NOT_AUTHORIZED)
    assert next_message(observer) == (marker, b"marker")  # and nothing before it
    # A refusal is an answer, not the end of the session: the gateway stays connected.
    assert not gw.disconnected.is_set()


def test_sparkplug_commands_reach_only_their_edge_node(
    gateways: tuple[Gateway, Gateway],
    service: MqttSettings,
    session: Callable[[MqttSettings, str], Session],
    run_id: str,
) -> None:
    a, b = gateways
    node_a, node_b = (
        session(a.settings, f"sec-spa-{run_id}"),
        session(b.settings, f"sec-spb-{run_id}"),
    )
    host = session(service, f"sec-host-{run_id}")
    for s in (node_a, node_b, host):
        assert not s.connect().is_failure
    node_a.subscribe(f"spBv1.0/+/NCMD/{a.gateway_id}")
    # B asks for every node's commands; the broker delivers only those it may read.
    node_b.subscribe("spBv1.0/+/NCMD/+")
    group = f"sec{run_id}"

    assert not node_a.publish(f"spBv1.0/{group}/NBIRTH/{a.gateway_id}").is_failure
    assert not host.publish(f"spBv1.0/{group}/NCMD/{a.gateway_id}", b"rebirth-a").is_failure
    assert not host.publish(f"spBv1.0/{group}/NCMD/{b.gateway_id}", b"rebirth-b").is_failure

    assert next_message(node_a) == (f"spBv1.0/{group}/NCMD/{a.gateway_id}", b"rebirth-a")
    assert next_message(node_b) == (f"spBv1.0/{group}/NCMD/{b.gateway_id}", b"rebirth-b")
    assert str(node_a.publish(f"spBv1.0/{group}/NCMD/{b.gateway_id}")) == NOT_AUTHORIZED


def test_a_gateway_reads_no_telemetry_even_through_a_shared_subscription(
    gateways: tuple[Gateway, Gateway],
    service: MqttSettings,
    session: Callable[[MqttSettings, str], Session],
    run_id: str,
) -> None:
    a, b = gateways
    snoop = session(b.settings, f"sec-snoop-{run_id}")
    source = session(a.settings, f"sec-source-{run_id}")
    host = session(service, f"sec-marker-{run_id}")
    for s in (snoop, source, host):
        assert not s.connect().is_failure
    snoop.subscribe(
        f"$share/snoop-{run_id}/{a.settings.telemetry_filter}",
        a.settings.telemetry_filter,
        f"spBv1.0/+/NCMD/{b.gateway_id}",
    )

    # The broker routes a message before it acknowledges it, so the marker, published
    # after the telemetry's PUBACK, is queued for the snoop after anything it could read.
    assert not source.publish(a.settings.telemetry_topic(a.gateway_id, a.device_id)).is_failure
    assert not host.publish(f"spBv1.0/g/NCMD/{b.gateway_id}", b"marker").is_failure

    assert next_message(snoop) == (f"spBv1.0/g/NCMD/{b.gateway_id}", b"marker")


# -- lifecycle --------------------------------------------------------------------------------


def test_revoked_credentials_are_refused_after_the_reload(
    stack: Stack,
    db_settings: DatabaseSettings,
    layout: FactoryLayout,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    session: Callable[[MqttSettings, str], Session],
    run_id: str,
) -> None:
    gateway_id = f"sec{run_id}-revoked"
    settings = edge_mqtt_settings(gateway_id)
    connected = session(settings, f"sec-revoked-{run_id}")
    assert not connected.connect().is_failure

    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        assert store.revoke(conn, gateway_id)
    stack.sync_mqtt_access()

    # The reload ends the open session too, not only later ones.
    assert connected.disconnected.wait(TIMEOUT_S)
    assert str(session(settings, f"sec-revoked-again-{run_id}").connect()) == NOT_AUTHORIZED


# -- TLS --------------------------------------------------------------------------------------


def test_a_client_trusting_the_local_ca_connects_and_publishes_over_tls(
    stack: Stack,
    gateways: tuple[Gateway, Gateway],
    observer: Session,
    session: Callable[[MqttSettings, str], Session],
    run_id: str,
) -> None:
    a, _ = gateways
    tls = stack.tls_settings(a.settings)
    assert tls.broker_port == stack.mqtt.tls_port != stack.mqtt.port
    gw = session(tls, f"sec-tls-{run_id}")
    assert not gw.connect().is_failure
    topic = tls.telemetry_topic(a.gateway_id, a.device_id)

    assert not gw.publish(topic, b"over-tls").is_failure
    assert next_message(observer) == (topic, b"over-tls")


def test_a_client_without_the_local_ca_is_refused(
    stack: Stack, gateways: tuple[Gateway, Gateway], run_id: str
) -> None:
    a, _ = gateways
    # TLS with the system's trust store only: the broker's certificate is not trusted.
    untrusting = a.settings.model_copy(update={"tls": True, "tls_ca_file": None})
    client = new_client(untrusting, client_id=f"sec-untrusting-{run_id}")

    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect(untrusting.host, untrusting.broker_port)


# -- the command line -------------------------------------------------------------------------


def _carbonflow(db_settings: DatabaseSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CARBONFLOW_DB_NAME": db_settings.name, "CARBONFLOW_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "carbonflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_device_add_issues_working_credentials_for_the_devices_gateway(
    db_settings: DatabaseSettings,
    layout: FactoryLayout,
    observer: Session,
    service: MqttSettings,
    session: Callable[[MqttSettings, str], Session],
    run_id: str,
    tmp_path: Path,
) -> None:
    gateway_id, asset = f"sec{run_id}-gwcli", layout.lines[0].asset_id
    first, second = f"sec{run_id}-cli-1", f"sec{run_id}-cli-2"
    credentials = tmp_path / "gateway.env"

    added = _carbonflow(
        db_settings,
        "device",
        "add",
        first,
        "--gateway",
        gateway_id,
        "--asset",
        asset,
        "--password-file",
        str(credentials),
    )
    assert added.returncode == 0, added.stderr
    assert credentials.stat().st_mode & 0o777 == 0o600
    values = dotenv_values(credentials)
    assert values["CARBONFLOW_MQTT_USERNAME"] == gateway_id
    settings = service.model_copy(
        update={
            "username": gateway_id,
            "password": SecretStr(values["CARBONFLOW_MQTT_PASSWORD"] or ""),
        }
    )
    gw = session(settings, f"sec-cli-{run_id}")
    assert not gw.connect().is_failure
    assert not gw.publish(settings.telemetry_topic(gateway_id, first), b"first").is_failure
    assert str(gw.publish(settings.telemetry_topic(gateway_id, second))) == NOT_AUTHORIZED

    # A second device under the same gateway: no new password, and the ACL now has it.
    again = _carbonflow(
        db_settings, "device", "add", second, "--gateway", gateway_id, "--asset", asset
    )
    assert again.returncode == 0, again.stderr
    assert "already has credentials" in again.stdout
    assert "CARBONFLOW_MQTT_PASSWORD" not in again.stdout
    assert not gw.publish(settings.telemetry_topic(gateway_id, second), b"second").is_failure

    assert next_message(observer) == (settings.telemetry_topic(gateway_id, first), b"first")
    assert next_message(observer) == (settings.telemetry_topic(gateway_id, second), b"second")


def test_device_add_prints_new_credentials_once_and_refuses_bad_input(
    db_settings: DatabaseSettings, layout: FactoryLayout, run_id: str
) -> None:
    gateway_id, asset = f"sec{run_id}-gwprint", layout.lines[0].asset_id

    printed = _carbonflow(
        db_settings, "device", "add", f"sec{run_id}-p-1", "--gateway", gateway_id, "--asset", asset
    )
    unknown_asset = _carbonflow(
        db_settings,
        "device",
        "add",
        f"sec{run_id}-p-2",
        "--gateway",
        gateway_id,
        "--asset",
        f"nowhere-{run_id}",
    )
    wrong_unit = _carbonflow(
        db_settings,
        "device",
        "add",
        f"sec{run_id}-p-3",
        "--gateway",
        gateway_id,
        "--asset",
        asset,
        "--metric",
        "active_power",
        "--unit",
        "kW",
    )
    as_service = _carbonflow(
        db_settings, "device", "add", f"sec{run_id}-p-4", "--gateway", "ingest", "--asset", asset
    )

    assert printed.returncode == 0, printed.stderr
    assert f"CARBONFLOW_MQTT_USERNAME={gateway_id}" in printed.stdout
    assert printed.stdout.count("CARBONFLOW_MQTT_PASSWORD=") == 1
    assert (unknown_asset.returncode, wrong_unit.returncode) == (1, 1)
    assert f"no asset 'nowhere-{run_id}'" in unknown_asset.stderr
    assert "measured in W, not kW" in wrong_unit.stderr
    assert as_service.returncode == 1
    assert "ingest is reserved for a platform service" in as_service.stderr


def test_mqtt_issue_revoke_and_list_manage_an_identity_from_the_command_line(
    db_settings: DatabaseSettings,
    service: MqttSettings,
    session: Callable[[MqttSettings, str], Session],
    run_id: str,
    tmp_path: Path,
) -> None:
    gateway_id = f"sec{run_id}-lifecycle"
    credentials = tmp_path / "lifecycle.env"

    issued = _carbonflow(
        db_settings, "mqtt", "issue", gateway_id, "--password-file", str(credentials)
    )
    assert issued.returncode == 0, issued.stderr
    password = SecretStr(dotenv_values(credentials)["CARBONFLOW_MQTT_PASSWORD"] or "")
    settings = service.model_copy(update={"username": gateway_id, "password": password})
    connected = session(settings, f"sec-lifecycle-{run_id}")
    assert not connected.connect().is_failure

    revoked = _carbonflow(db_settings, "mqtt", "revoke", gateway_id)
    listed = _carbonflow(db_settings, "mqtt", "list")
    again = _carbonflow(db_settings, "mqtt", "revoke", gateway_id)

    assert revoked.returncode == 0, revoked.stderr
    assert connected.disconnected.wait(TIMEOUT_S)
    assert str(session(settings, f"sec-lifecycle-2-{run_id}").connect()) == NOT_AUTHORIZED
    line = next(row for row in listed.stdout.splitlines() if row.startswith(gateway_id))
    assert "gateway" in line
    assert "revoked" in line
    assert again.returncode == 1
    assert "no active credentials" in again.stderr
