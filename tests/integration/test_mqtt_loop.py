"""paho's network I/O on the asyncio event loop (``AsyncioNetworkLoop``) against real brokers.

Messages come from another client publishing as a gateway; the subscriber reads as the
platform service does (manual acknowledgements, persistent session). The outage tests run a
Mosquitto of their own, stopped and started under the subscriber.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from carbonflow.config import DatabaseSettings, MqttSettings
from carbonflow.errors import ServiceUnavailableError
from carbonflow.mqtt_client import new_client
from carbonflow.registry import upsert_layout
from carbonflow.stack import Stack
from carbonflow.stack.mosquitto import MosquittoService
from carbonflow.supervise import free_port
from edge.simulator.factory import small_factory
from services.ingest.mqtt_loop import AsyncioNetworkLoop

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

V311, V5 = MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5
WAIT_S = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Gateway:
    """A registered gateway with one meter, and the MQTT identity it publishes as."""

    gateway_id: str
    device_id: str
    mqtt: MqttSettings

    def telemetry_topic(self, settings: MqttSettings) -> str:
        return settings.telemetry_topic(self.gateway_id, self.device_id)


@pytest.fixture(scope="module")
def gateway(
    db_settings: DatabaseSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
) -> Gateway:
    layout = small_factory(1, prefix=f"ml{run_id}")
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        upsert_layout(conn, layout)
    machine = layout.machines[0]
    return Gateway(machine.gateway_id, machine.device_id, edge_mqtt_settings(machine.gateway_id))


@pytest.fixture
def private_broker(stack: Stack, gateway: Gateway, broker_dir: Path) -> Iterator[MosquittoService]:
    """A Mosquitto of this test's own, admitting the stack's identities (the gateway's too)."""
    broker = stack.standalone_broker(broker_dir, port=free_port(), tls_port=free_port())
    broker.ensure_started()
    try:
        broker.wait_ready(WAIT_S)
        yield broker
    finally:
        broker.stop()


def scoped(settings: MqttSettings, tag: str, run_id: str, port: int | None = None) -> MqttSettings:
    """``settings`` on a topic root of this test's own (and another broker's port)."""
    update: dict[str, Any] = {"topic_root": f"cf-ml{tag}-{run_id}/v1"}
    if port is not None:
        update["port"] = port
    return settings.model_copy(update=update)


def own_status_topic(settings: MqttSettings, instance: str) -> str:
    """A topic the platform service identity may publish to (its service status)."""
    assert settings.username is not None
    return settings.service_status_topic(settings.username, instance)


def publish(settings: MqttSettings, topic: str, payloads: list[bytes]) -> None:
    """Publish at QoS 1 from a client of its own (paho's thread) until every PUBACK is in."""
    client = new_client(settings, protocol=V311)
    client.max_inflight_messages_set(100)
    client.connect(settings.host, settings.port)
    client.loop_start()
    try:
        for info in [client.publish(topic, payload, qos=1) for payload in payloads]:
            info.wait_for_publish(WAIT_S)
            assert info.is_published(), f"no PUBACK for {topic}"
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass
class Delivery:
    connection: int
    message: MQTTMessage
    thread: int


class Subscriber:
    """A persistent-session subscriber on the event loop, acknowledging by hand."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        topics: list[str],
        protocol: MQTTProtocolVersion,
        **loop_options: Any,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.protocol = protocol
        persistent = {"clean_session": False} if protocol is V311 else {}
        self.client = new_client(
            settings, client_id=client_id, protocol=protocol, manual_ack=True, **persistent
        )
        self.network = AsyncioNetworkLoop(self.client, **loop_options)
        self.deliveries: list[Delivery] = []
        self.suback = 0
        self.published: set[int] = set()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self._topics = topics
        self._changed = asyncio.Event()  # set by every callback of the client

    async def connect(self) -> None:
        options: dict[str, Any] = {}
        if self.protocol is V5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 600
            options = {"clean_start": False, "properties": properties}
        settings = self.settings
        await self.network.connect(settings.host, settings.broker_port, 30, **options)

    async def end(self) -> None:
        """Disconnect and end the session, so the shared broker keeps nothing of this test."""
        if self.protocol is V5:
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
            await self.network.close(properties=properties)
            return
        await self.network.close()
        # MQTT 3.1.1: a clean session under the same client id discards the kept one.
        settings = self.settings
        clean = new_client(settings, client_id=self.client_id, protocol=V311, clean_session=True)
        network = AsyncioNetworkLoop(clean)
        await network.connect(settings.host, settings.broker_port)
        await network.close()

    def payloads(self) -> list[bytes]:
        return [bytes(d.message.payload) for d in self.deliveries]

    def ack(self, delivery: Delivery) -> bool:
        return self.network.ack(delivery.message.mid, delivery.message.qos, delivery.connection)

    @contextmanager
    def woken_by_log(self, logger: str) -> Iterator[None]:
        """Let ``until`` look again at each record ``logger`` logs too."""
        handler = _SetOnRecord(self._changed)
        logging.getLogger(logger).addHandler(handler)
        try:
            yield
        finally:
            logging.getLogger(logger).removeHandler(handler)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition`` holds, checking it after each callback of the client."""
        try:
            async with asyncio.timeout(WAIT_S):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {WAIT_S:g}s waiting for {what}") from None

    async def round_trip(self) -> None:
        """Publish at QoS 1 and wait for the PUBACK: the broker has then handled every
        packet this client sent before (a connection's packets are handled in order)."""
        topic = own_status_topic(self.settings, self.client_id)
        info = self.client.publish(topic, b"sync", qos=1)
        await self.until(lambda: info.mid in self.published, "the PUBACK of a round trip")

    def _on_connect(
        self, client: Client, _u: Any, _f: ConnectFlags, reason: ReasonCode, _p: Any
    ) -> None:
        self._changed.set()
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(self, *_: Any) -> None:
        self.suback += 1
        self._changed.set()

    def _on_message(self, _c: Client, _u: Any, message: MQTTMessage) -> None:
        self.deliveries.append(Delivery(self.network.connection, message, threading.get_ident()))
        self._changed.set()

    def _on_publish(self, _c: Client, _u: Any, mid: int, *_: Any) -> None:
        self.published.add(mid)
        self._changed.set()

    def _on_disconnect(self, *_: Any) -> None:
        self._changed.set()


class _SetOnRecord(logging.Handler):
    def __init__(self, event: asyncio.Event) -> None:
        super().__init__()
        self._event = event

    def emit(self, record: logging.LogRecord) -> None:
        self._event.set()  # records of the network loop are logged on the event loop


def marker(n: int) -> bytes:
    return b"end-%d" % n


@pytest.mark.parametrize(
    ("protocol", "read_budget", "tls"),
    [(V311, 256, False), (V311, 1, False), (V5, 256, False), (V311, 1, True)],
    # TLS: the handshake happens in the worker thread, and reads go through the TLS layer.
    ids=["v311", "v311-budget1", "v5", "v311-tls-budget1"],
)
async def test_messages_arrive_in_order_on_the_loop_and_acks_reach_the_broker(
    stack: Stack,
    mqtt_settings: MqttSettings,
    gateway: Gateway,
    run_id: str,
    protocol: MQTTProtocolVersion,
    read_budget: int,
    tls: bool,
) -> None:
    tag = f"order{protocol.value}b{read_budget}{'tls' if tls else ''}"
    settings = scoped(mqtt_settings, tag, run_id)
    if tls:
        settings = stack.tls_settings(settings)
    topic = gateway.telemetry_topic(settings)
    client_id = f"ml-{tag}-{run_id}"
    payloads = [b"%05d:" % i + bytes(1000) for i in range(500)]

    subscriber = Subscriber(settings, client_id, [topic], protocol, read_budget=read_budget)
    await subscriber.connect()
    assert subscriber.network.connected
    await subscriber.until(lambda: subscriber.suback == 1, "SUBACK")
    await asyncio.to_thread(publish, gateway.mqtt, topic, payloads)
    await subscriber.until(lambda: len(subscriber.deliveries) >= len(payloads), "every message")

    assert subscriber.payloads() == payloads
    loop_thread = threading.get_ident()
    assert {d.thread for d in subscriber.deliveries} == {loop_thread}
    assert all(subscriber.ack(d) for d in subscriber.deliveries)
    # Handled by the broker before the session is taken over below: a broker drops what it
    # has not yet read from a connection that another one takes over.
    await subscriber.round_trip()
    await subscriber.network.close()

    # Same client id, same session: nothing comes again before a message published now.
    again = Subscriber(settings, client_id, [topic], protocol)
    await again.connect()
    try:
        await again.until(lambda: again.suback == 1, "SUBACK")
        await asyncio.to_thread(publish, gateway.mqtt, topic, [marker(1)])
        await again.until(lambda: marker(1) in again.payloads(), "the marker")
        assert again.payloads() == [marker(1)]
        assert again.ack(again.deliveries[0])
    finally:
        await again.end()


async def test_a_backlog_is_read_in_bursts_that_leave_the_loop_its_turns(
    mqtt_settings: MqttSettings, gateway: Gateway, run_id: str
) -> None:
    budget = 16
    settings = scoped(mqtt_settings, "backlog", run_id)
    topic = gateway.telemetry_topic(settings)
    client_id = f"ml-backlog-{run_id}"
    first = Subscriber(settings, client_id, [topic], V311)
    await first.connect()
    await first.until(lambda: first.suback == 1, "SUBACK")
    await first.network.close()
    # Queued by the broker for the session while its client is away.
    payloads = [b"%04d:" % i + bytes(2000) for i in range(1000)]
    await asyncio.to_thread(publish, gateway.mqtt, topic, payloads)

    subscriber = Subscriber(settings, client_id, [topic], V311, read_budget=budget)
    seen_at_turns: list[int] = []

    async def take_turns() -> None:
        while True:  # once per pass of the event loop
            seen_at_turns.append(len(subscriber.deliveries))
            await asyncio.sleep(0)

    turns = asyncio.create_task(take_turns())
    try:
        await subscriber.connect()
        await subscriber.until(lambda: len(subscriber.deliveries) >= len(payloads), "the backlog")
    finally:
        turns.cancel()
    try:
        assert subscriber.payloads() == payloads
        per_pass = [later - earlier for earlier, later in itertools.pairwise(seen_at_turns)]
        assert max(per_pass) <= budget  # other work ran at least every `budget` messages
        assert max(per_pass) > 1  # and a wake-up read what had come, not one message
        assert all(subscriber.ack(d) for d in subscriber.deliveries)
        await subscriber.round_trip()
    finally:
        await subscriber.end()


@pytest.mark.parametrize("protocol", [V311, V5], ids=["v311", "v5"])
async def test_unacknowledged_messages_come_again_after_the_broker_returns(
    mqtt_settings: MqttSettings,
    gateway: Gateway,
    private_broker: MosquittoService,
    run_id: str,
    protocol: MQTTProtocolVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest.mqtt_loop")
    port = private_broker.mqtt.port
    tag = f"redeliver{protocol.value}"
    settings = scoped(mqtt_settings, tag, run_id, port)
    publisher = scoped(gateway.mqtt, tag, run_id, port)
    topic = gateway.telemetry_topic(settings)
    payloads = [b"%03d" % i for i in range(20)]
    acked = 8

    subscriber = Subscriber(
        settings, f"ml-{tag}-{run_id}", [topic], protocol, reconnect_min_s=0.1, reconnect_max_s=1
    )
    network = subscriber.network
    await subscriber.connect()
    first = network.connection
    try:
        await subscriber.until(lambda: subscriber.suback == 1, "SUBACK")
        await asyncio.to_thread(publish, publisher, topic, payloads)
        await subscriber.until(lambda: len(subscriber.deliveries) == len(payloads), "every message")
        assert all(subscriber.ack(d) for d in subscriber.deliveries[:acked])
        await subscriber.round_trip()

        await asyncio.to_thread(private_broker.stop)
        await subscriber.until(lambda: not network.connected, "the lost connection noticed")
        # The connection they came on is gone: acknowledging now sends nothing.
        assert not subscriber.ack(subscriber.deliveries[acked])
        # The broker stays away for two failed attempts.
        with subscriber.woken_by_log("services.ingest.mqtt_loop"):
            await subscriber.until(
                lambda: any("attempt 2 failed" in m for m in caplog.messages),
                "two failed reconnection attempts",
            )

        await asyncio.to_thread(private_broker.ensure_started)
        await asyncio.to_thread(private_broker.wait_ready, WAIT_S)
        await subscriber.until(lambda: network.connected, "the loop to reconnect by itself")
        await subscriber.until(lambda: subscriber.suback == 2, "SUBACK after reconnecting")
        await asyncio.to_thread(publish, publisher, topic, [marker(2)])
        await subscriber.until(lambda: marker(2) in subscriber.payloads(), "the marker")

        again = [d for d in subscriber.deliveries if d.connection > first]
        assert [bytes(d.message.payload) for d in again] == [*payloads[acked:], marker(2)]
        assert all(subscriber.ack(d) for d in again)
        await subscriber.round_trip()
    finally:
        await subscriber.network.close()
    assert any("lost; reconnecting" in m for m in caplog.messages), caplog.messages
    assert any("reconnected" in m for m in caplog.messages), caplog.messages


async def test_close_sends_disconnect_and_leaves_nothing_watched(
    mqtt_settings: MqttSettings, gateway: Gateway, run_id: str
) -> None:
    settings = scoped(mqtt_settings, "close", run_id)
    will_topic = own_status_topic(settings, f"ml-close-{run_id}")
    topic = gateway.telemetry_topic(settings)
    watcher = Subscriber(settings, f"ml-close-watch-{run_id}", [will_topic], V311)
    await watcher.connect()
    await watcher.until(lambda: watcher.suback == 1, "SUBACK")

    subscriber = Subscriber(settings, f"ml-close-{run_id}", [topic], V311)
    subscriber.client.will_set(will_topic, b"gone", qos=1)
    await subscriber.connect()
    await subscriber.until(lambda: subscriber.suback == 1, "SUBACK")
    await asyncio.to_thread(publish, gateway.mqtt, topic, [b"one"])
    await subscriber.until(lambda: len(subscriber.deliveries) == 1, "the message")
    sock = subscriber.client.socket()
    assert sock is not None
    fd = sock.fileno()
    delivery = subscriber.deliveries[0]
    # Queued now, written by close() before its DISCONNECT.
    assert subscriber.ack(delivery)

    await subscriber.network.close()

    loop = asyncio.get_running_loop()
    assert not loop.remove_reader(fd)
    assert not loop.remove_writer(fd)
    assert subscriber.client.socket() is None
    assert not subscriber.network.connected
    assert subscriber.client.on_socket_open is None
    assert subscriber.client.on_socket_register_write is None
    assert not subscriber.ack(delivery)

    # A clean DISCONNECT: the broker publishes no will. The marker comes after the will
    # would: the closed connection's last bytes reached the broker before the marker's
    # publisher even connected, and the broker reads them first.
    await asyncio.to_thread(publish, settings, will_topic, [marker(3)])
    await watcher.until(lambda: marker(3) in watcher.payloads(), "the marker")
    assert watcher.payloads() == [marker(3)]
    # And the acknowledgement went out before it: the session has nothing to deliver again.
    again = Subscriber(settings, f"ml-close-{run_id}", [topic], V311)
    await again.connect()
    await again.until(lambda: again.suback == 1, "SUBACK")
    await asyncio.to_thread(publish, gateway.mqtt, topic, [marker(4)])
    await again.until(lambda: marker(4) in again.payloads(), "the marker")
    assert again.payloads() == [marker(4)]
    await again.end()
    await watcher.end()


async def test_close_while_reconnecting_stops_and_leaves_nothing_watched(
    mqtt_settings: MqttSettings, gateway: Gateway, private_broker: MosquittoService, run_id: str
) -> None:
    settings = scoped(mqtt_settings, "closeoff", run_id, private_broker.mqtt.port)
    subscriber = Subscriber(
        settings, f"ml-closeoff-{run_id}", [gateway.telemetry_topic(settings)], V311
    )
    await subscriber.connect()
    sock = subscriber.client.socket()
    assert sock is not None
    fd = sock.fileno()
    await asyncio.to_thread(private_broker.stop)
    await subscriber.until(lambda: not subscriber.network.connected, "the lost connection noticed")

    async with asyncio.timeout(10):
        await subscriber.network.close()
    loop = asyncio.get_running_loop()
    assert not loop.remove_reader(fd)
    assert not loop.remove_writer(fd)
    assert subscriber.client.socket() is None


async def test_connect_gives_up_on_a_broker_that_never_answers(mqtt_settings: MqttSettings) -> None:
    # A deliberately misbehaving peer: it takes the connection and the CONNECT, and stays
    # silent.
    received = bytearray()
    peer_closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
        peer_closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = new_client(mqtt_settings, protocol=V311)
    network = AsyncioNetworkLoop(client, connect_timeout_s=1)
    try:
        with pytest.raises(ServiceUnavailableError, match="no answer within 1s"):
            await network.connect("127.0.0.1", port)
        async with asyncio.timeout(WAIT_S):
            await peer_closed.wait()
    finally:
        server.close()
    assert received[:1] == b"\x10"  # the CONNECT went out; then the socket was closed
    assert client.socket() is None
    assert not network.connected
    await network.close()


async def test_connect_fails_clearly_when_nothing_listens(mqtt_settings: MqttSettings) -> None:
    port = free_port()
    client = new_client(mqtt_settings, protocol=V311)
    network = AsyncioNetworkLoop(client)
    with pytest.raises(ServiceUnavailableError, match=f"MQTT at 127.0.0.1:{port}"):
        await network.connect("127.0.0.1", port)
    assert client.socket() is None
    assert not network.connected
    await network.close()


async def test_connect_fails_clearly_when_the_broker_refuses(
    mqtt_settings: MqttSettings, run_id: str
) -> None:
    wrong = mqtt_settings.model_copy(update={"password": SecretStr(f"wrong-{run_id}")})
    client = new_client(wrong, protocol=V311)
    network = AsyncioNetworkLoop(client)
    with pytest.raises(ServiceUnavailableError, match="refused the connection"):
        await network.connect(wrong.host, wrong.port)
    assert client.socket() is None
    assert not network.connected
    await network.close()
