"""Gateway and meter presence, from retained status topics to device_events, exactly once.

A gateway publishes its birth and its meters' status retained, one meter goes offline, and
the gateway vanishes (the broker publishes its last will). Then ingest restarts: the broker
hands it every retained status again, and the rows stay what they were.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client.parser import text_string_to_metric_families

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings
from carbonflow.mqtt_client import new_client
from carbonflow.registry import upsert_layout
from carbonflow.supervise import free_port, running, wait_for, wait_for_status
from edge.simulator.factory import FactoryLayout, small_factory
from schemas import DeviceStatus, GatewayStatus, PresenceState
from tests.isolation import RunScope

pytestmark = pytest.mark.integration

DISCONNECT_WITH_WILL = 4  # MQTT 5 reason code: the broker publishes the will


@pytest.fixture(scope="module")
def layout(db_settings: DatabaseSettings, run_id: str) -> FactoryLayout:
    layout = small_factory(3, prefix=f"prs{run_id}")  # two meters on the first gateway
    with psycopg.connect(db_settings.conninfo()) as conn:
        upsert_layout(conn, layout)
    return layout


@pytest.fixture(scope="module")
def scope(mqtt_settings: MqttSettings, run_id: str) -> RunScope:
    # One partition: events reach the store in the order ingest sent them, so a row stored
    # last proves everything sent before it was stored too.
    return RunScope.create(mqtt_settings, "prs", run_id, partitions=1)


@pytest.fixture(scope="module")
def settings(scope: RunScope) -> tuple[MqttSettings, KafkaSettings]:
    return scope.mqtt, scope.kafka


@pytest.fixture(scope="module")
def env(
    scope: RunScope, db_settings: DatabaseSettings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return scope.service_env(db_settings, Path(tmp_path_factory.mktemp("prs")))


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("prs-logs"))


class Gateway:
    """An MQTT connection as a gateway, with its offline status as the retained last will."""

    def __init__(self, settings: MqttSettings, gateway_id: str, client_id: str, will: bytes):
        self.settings = settings
        self._client = new_client(settings, client_id=client_id)
        self._client.will_set(settings.gateway_status_topic(gateway_id), will, qos=1, retain=True)
        connected = threading.Event()
        self._client.on_connect = lambda *_: connected.set()
        self._client.connect(settings.host, settings.broker_port, settings.keepalive_s)
        self._client.loop_start()
        assert connected.wait(20), "gateway could not connect"

    def publish(self, topic: str, status: GatewayStatus | DeviceStatus) -> None:
        payload = status.model_dump_json().encode()
        self._client.publish(topic, payload, qos=1, retain=True).wait_for_publish(20)

    def vanish(self) -> None:
        """Go away so that the broker publishes the last will."""
        reason = ReasonCode(PacketTypes.DISCONNECT, identifier=DISCONNECT_WITH_WILL)
        self._client.disconnect(reasoncode=reason)
        self._client.loop_stop()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _rows(db: DatabaseSettings, sources: list[str]) -> list[tuple[str, str, str, datetime]]:
    with psycopg.connect(db.conninfo()) as conn:
        return conn.execute(
            "SELECT source_kind, source_id, event, ts FROM device_events "
            "WHERE source_id = ANY(%s) ORDER BY recorded_at",
            (sources,),
        ).fetchall()


def _metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    text = httpx.get(url, timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def stream(env: dict[str, str], log_dir: Path) -> Iterator[object]:
    with running("stream", log_dir, env, log_level="DEBUG") as stream:
        yield stream


def test_presence_transitions_are_recorded_once_even_after_an_ingest_restart(
    settings: tuple[MqttSettings, KafkaSettings],
    env: dict[str, str],
    log_dir: Path,
    stream: object,
    layout: FactoryLayout,
    db_settings: DatabaseSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
) -> None:
    mqtt, _ = settings
    gw = layout.gateways()[0]
    d1, d2 = (m.device_id for m in layout.machines if m.gateway_id == gw)
    connected_at = (datetime.now(UTC) - timedelta(minutes=30)).replace(microsecond=0)
    t = [connected_at + timedelta(seconds=k) for k in range(20)]
    gateway_settings = edge_mqtt_settings(gw).model_copy(update={"topic_root": mqtt.topic_root})

    def gateway_status(state: PresenceState, ts: datetime, **extra: object) -> GatewayStatus:
        return GatewayStatus(gateway_id=gw, state=state, session_id="s1", ts=ts, **extra)

    def device_status(device: str, state: PresenceState, ts: datetime) -> DeviceStatus:
        return DeviceStatus(gateway_id=gw, device_id=device, state=state, session_id="s1", ts=ts)

    sources = [gw, d1, d2]
    expected = {
        ("gateway", gw, "online", t[0]),
        ("device", d1, "online", t[1]),
        ("device", d2, "online", t[1]),
        ("device", d2, "offline", t[5]),
        ("gateway", gw, "offline", t[0]),  # the last will: stamped at the connect
    }
    with running("ingest", log_dir, {**env, "CARBONFLOW_INGEST_METRICS_PORT": "0"}) as ingest:
        wait_for_status(mqtt, "ingest", env["CARBONFLOW_INGEST_CLIENT_ID"], "online", ingest)
        will = gateway_status(PresenceState.OFFLINE, t[0], will=True).model_dump_json().encode()
        gateway = Gateway(gateway_settings, gw, f"prs-{run_id}-gw", will)
        gateway.publish(
            mqtt.gateway_status_topic(gw),
            gateway_status(PresenceState.ONLINE, t[0], devices=[d1, d2]),
        )
        for device in (d1, d2):
            gateway.publish(
                mqtt.device_status_topic(gw, device),
                device_status(device, PresenceState.ONLINE, t[1]),
            )
        gateway.publish(
            mqtt.device_status_topic(gw, d2), device_status(d2, PresenceState.OFFLINE, t[5])
        )
        gateway.vanish()
        wait_for(
            lambda: True if set(_rows(db_settings, sources)) >= expected else None,
            timeout_s=90,
            what="the presence transitions in device_events",
            services=(ingest, stream),  # type: ignore[arg-type]
        )

    # Restarted, ingest gets every retained status again: gateway offline, d1 online, d2
    # offline. A new transition after them (d1 goes offline) is stored last.
    metrics_port = free_port()
    restarted_env = {**env, "CARBONFLOW_INGEST_METRICS_PORT": str(metrics_port)}
    with running("ingest", log_dir, restarted_env, name="ingest-restarted") as ingest:
        wait_for_status(mqtt, "ingest", env["CARBONFLOW_INGEST_CLIENT_ID"], "online", ingest)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(
            lambda: (
                True if _metric(url, "carbonflow_ingest_presence_messages_total") >= 3 else None
            ),
            timeout_s=60,
            what="the retained statuses to reach the restarted ingest",
            services=(ingest,),
        )
        gateway = Gateway(gateway_settings, gw, f"prs-{run_id}-gw2", will)
        gateway.publish(
            mqtt.device_status_topic(gw, d1), device_status(d1, PresenceState.OFFLINE, t[9])
        )
        expected.add(("device", d1, "offline", t[9]))
        stored = wait_for(
            lambda: (
                r if ("device", d1, "offline", t[9]) in (r := _rows(db_settings, sources)) else None
            ),
            timeout_s=90,
            what="the transition after the restart",
            services=(ingest, stream),  # type: ignore[arg-type]
        )
        # The restarted instance did send the retained statuses on as events...
        gateway_offline = {"source_kind": "gateway", "event": "offline"}
        assert _metric(url, "carbonflow_ingest_device_events_total", gateway_offline) == 1
        gateway.close()

    # ...and each transition is stored exactly once.
    assert Counter(stored) == Counter(expected)
