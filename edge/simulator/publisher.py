"""MQTT adapter: publishes telemetry batches at QoS 1 and waits for their PUBACKs.

Also the simulator's composition root, ``run_simulator``, which wires settings, the simulated
factory, the publisher and a live or replay run.
"""

from __future__ import annotations

import logging
import random
import secrets
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType, TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt_client
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from carbonflow.config import MqttSettings
from carbonflow.mqtt_client import new_client
from edge.errors import BrokerConnectionError, EdgeError, PublishError
from edge.simulator.batching import BatchBuilder, new_session_id
from edge.simulator.factory import FactoryLayout, PowerModel, demo_factory, small_factory
from edge.simulator.runner import BatchSink, PublishSummary, replay, run_live
from edge.simulator.settings import SimulatorSettings
from schemas.telemetry import TelemetryBatch

logger = logging.getLogger(__name__)

QOS = 1


class Publisher:
    """Publishes ``TelemetryBatch`` JSON to each device's telemetry topic.

    At most ``max_pending`` batches are unacknowledged at a time: ``publish_batch`` blocks for
    room (up to ``publish_timeout_s``), so memory stays bounded however fast batches come.
    paho resends unacknowledged messages after a reconnect, so a broker restart delays
    acknowledgements but loses nothing (duplicates are harmless: writes are idempotent).
    Use as a context manager, and call ``flush`` before leaving it to be sure of delivery.
    """

    def __init__(
        self,
        mqtt: MqttSettings,
        *,
        client_id: str | None = None,
        max_pending: int = 1000,
        max_inflight: int = 20,
        connect_timeout_s: float = 10.0,
        publish_timeout_s: float = 60.0,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        if max_pending < 1 or max_inflight < 1:
            raise ValueError("max_pending and max_inflight must be positive")
        self._mqtt = mqtt
        self._client_id = client_id or f"carbonflow-sim-{secrets.token_hex(4)}"
        self._max_pending = max_pending
        self._max_inflight = max_inflight
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._protocol = protocol

        self._lock = threading.Condition()
        self._pending = 0
        self._published = 0
        self._acked = 0
        self._failures: list[str] = []
        self._connected = threading.Event()
        self._refusal: str | None = None
        self._closing = False

        client = new_client(mqtt, client_id=self._client_id, protocol=protocol)
        client.max_inflight_messages_set(max_inflight)
        # Our own bound keeps paho's queue below this; it is a backstop, never the limit hit.
        client.max_queued_messages_set(max_pending)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    # -- properties -----------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    @property
    def published(self) -> int:
        with self._lock:
            return self._published

    @property
    def acked(self) -> int:
        with self._lock:
            return self._acked

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and wait for the broker's CONNACK; raises ``BrokerConnectionError``."""
        where = f"{self._mqtt.host}:{self._mqtt.broker_port}"
        self._connected.clear()
        self._refusal = None
        self._closing = False
        try:
            self._client.connect(self._mqtt.host, self._mqtt.broker_port, self._mqtt.keepalive_s)
        except (OSError, ValueError) as exc:
            raise BrokerConnectionError(f"cannot connect to MQTT broker {where}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(self._connect_timeout_s):
            self._stop_loop()
            raise BrokerConnectionError(
                f"no CONNACK from MQTT broker {where} within {self._connect_timeout_s} s"
            )
        if self._refusal is not None:
            self._stop_loop()
            raise BrokerConnectionError(f"MQTT broker {where} refused us: {self._refusal}")
        logger.info("connected to MQTT broker %s as %s", where, self._client_id)

    def close(self) -> None:
        """Disconnect. Unacknowledged batches are dropped (with a warning): flush first."""
        with self._lock:
            pending = self._pending
        if pending:
            logger.warning("closing with %d unacknowledged batches", pending)
        self._closing = True
        self._client.disconnect()
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._client.loop_stop()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- publishing -------------------------------------------------------------------------

    def publish_batch(self, batch: TelemetryBatch) -> None:
        """Queue one batch at QoS 1; blocks while ``max_pending`` batches await PUBACK."""
        self.publish_raw(
            self._mqtt.telemetry_topic(batch.gateway_id, batch.device_id),
            batch.model_dump_json().encode(),
            what=f"{batch.device_id} seq {batch.seq}",
        )

    def publish_raw(self, topic: str, payload: bytes, *, what: str = "message") -> None:
        """Queue any payload at QoS 1 (tests use it for malformed input); same accounting."""
        with self._lock:
            self._raise_failures()
            if not self._lock.wait_for(
                lambda: self._pending < self._max_pending or bool(self._failures),
                timeout=self._publish_timeout_s,
            ):
                raise PublishError(
                    f"{self._pending} messages unacknowledged for {self._publish_timeout_s} s;"
                    " is the broker reachable?"
                )
            self._raise_failures()
            self._pending += 1
        # Never hold our lock while calling paho: its network thread holds paho's own lock
        # while it calls on_publish, which takes ours.
        try:
            info = self._client.publish(topic, payload, qos=QOS)
        except (ValueError, OSError) as exc:
            self._release_slot()
            raise PublishError(f"cannot publish {what} to {topic}: {exc}") from exc
        # NO_CONN: paho keeps the message and sends it once reconnected.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._release_slot()
            raise PublishError(
                f"cannot publish {what} to {topic}: {mqtt_client.error_string(info.rc)}"
            )
        with self._lock:
            self._published += 1

    def flush(self, timeout: float = 30.0) -> None:
        """Wait (up to ``timeout`` s) for every PUBACK; raises ``PublishError``."""
        with self._lock:
            done = self._lock.wait_for(
                lambda: self._pending == 0 or bool(self._failures), timeout=timeout
            )
            self._raise_failures()
            if not done:
                raise PublishError(
                    f"{self._pending} messages still unacknowledged after {timeout} s"
                )

    def _release_slot(self) -> None:
        with self._lock:
            self._pending -= 1
            self._lock.notify_all()

    def _raise_failures(self) -> None:
        # Called with the lock held.
        if self._failures:
            shown = "; ".join(self._failures[:5])
            raise PublishError(f"broker rejected {len(self._failures)} messages: {shown}")

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(
        self,
        client: mqtt_client.Client,
        userdata: Any,
        flags: mqtt_client.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            logger.error("MQTT broker refused the connection: %s", reason_code)
        else:
            receive_maximum = getattr(properties, "ReceiveMaximum", None)
            if isinstance(receive_maximum, int) and receive_maximum < self._max_inflight:
                # MQTT 5: the broker disconnects clients that exceed its receive maximum.
                client.max_inflight_messages_set(receive_maximum)
            if self._connected.is_set():
                logger.info("reconnected to the MQTT broker")
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt_client.Client,
        userdata: Any,
        flags: mqtt_client.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._closing:
            logger.warning("disconnected from the MQTT broker (%s); reconnecting", reason_code)

    def _on_publish(
        self,
        client: mqtt_client.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._pending -= 1
            if reason_code.is_failure:
                self._failures.append(f"message {mid}: {reason_code}")
            else:
                self._acked += 1
            self._lock.notify_all()


class GatewayPublishers:
    """One ``Publisher`` per gateway, each with its gateway's own MQTT identity.

    The broker lets a gateway publish only for its own devices, so a simulated fleet needs a
    connection per gateway; batches go to the connection of their ``gateway_id``. A
    ``BatchSink`` and a context manager like ``Publisher``.
    """

    def __init__(self, connections: Mapping[str, MqttSettings], **options: Any) -> None:
        """``connections``: gateway id -> its settings; ``options`` go to each ``Publisher``
        (``client_id`` gets the gateway id appended)."""
        if not connections:
            raise ValueError("no gateways to publish for")
        client_id = options.pop("client_id", None) or f"carbonflow-sim-{secrets.token_hex(4)}"
        self._publishers = {
            gateway_id: Publisher(settings, client_id=f"{client_id}-{gateway_id}", **options)
            for gateway_id, settings in connections.items()
        }

    @property
    def published(self) -> int:
        return sum(p.published for p in self._publishers.values())

    @property
    def acked(self) -> int:
        return sum(p.acked for p in self._publishers.values())

    @property
    def pending(self) -> int:
        return sum(p.pending for p in self._publishers.values())

    def connect(self) -> None:
        connected: list[Publisher] = []
        try:
            for publisher in self._publishers.values():
                publisher.connect()
                connected.append(publisher)
        except BaseException:
            for publisher in connected:
                publisher.close()
            raise

    def close(self) -> None:
        for publisher in self._publishers.values():
            publisher.close()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def publish_batch(self, batch: TelemetryBatch) -> None:
        publisher = self._publishers.get(batch.gateway_id)
        if publisher is None:
            raise PublishError(f"no MQTT connection for gateway {batch.gateway_id}")
        publisher.publish_batch(batch)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait (up to ``timeout`` s in all) for every gateway's PUBACKs."""
        deadline = time.monotonic() + timeout
        for publisher in self._publishers.values():
            publisher.flush(max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------------------------
# Composition root


def build_layout(sim: SimulatorSettings) -> FactoryLayout:
    if sim.devices is None:
        return demo_factory()
    return small_factory(sim.devices, prefix=sim.device_prefix)


def gateway_connections(
    mqtt: MqttSettings, sim: SimulatorSettings, layout: FactoryLayout
) -> dict[str, MqttSettings]:
    """Each of the layout's gateways as its own MQTT identity (username = gateway id)."""
    missing = [g for g in layout.gateways() if g not in sim.gateway_passwords]
    if missing:
        raise EdgeError(f"no MQTT password for gateway(s) {', '.join(missing)}")
    return {
        gateway_id: mqtt.model_copy(
            update={"username": gateway_id, "password": sim.gateway_passwords[gateway_id]}
        )
        for gateway_id in layout.gateways()
    }


def _as_utc(t: datetime) -> datetime:
    # Naive times from a command line are taken as UTC, as the CLI's help says.
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def run_simulator(
    mqtt: MqttSettings,
    sim: SimulatorSettings,
    stop: threading.Event | None = None,
    replay: tuple[datetime, datetime] | None = None,
) -> PublishSummary:
    """Run the simulator: replay [start, end) if ``replay`` is given, else live until stopped.

    Live mode runs until ``stop`` is set; without one it runs until SIGINT or SIGTERM (when
    called from the main thread). Either way it publishes what it buffered and waits for the
    acknowledgements before returning. Raises ``EdgeError`` if the broker fails us.
    """
    layout = build_layout(sim)
    model = PowerModel(layout, sim.seed)
    # The session id must differ per start (ingest detects restarts by it), so it is drawn
    # from the OS, not from the simulation seed.
    session_id = sim.session_id or new_session_id(random.SystemRandom())
    builder = BatchBuilder(session_id)
    options: dict[str, Any] = {
        "client_id": sim.client_id or f"carbonflow-{session_id}",
        "max_pending": sim.max_pending,
        "max_inflight": sim.max_inflight,
        "connect_timeout_s": sim.connect_timeout_s,
        "publish_timeout_s": sim.publish_timeout_s,
    }
    publisher: Publisher | GatewayPublishers
    if sim.gateway_passwords:
        publisher = GatewayPublishers(gateway_connections(mqtt, sim, layout), **options)
    else:
        publisher = Publisher(mqtt, **options)
    logger.info(
        "simulating %d devices on %d sites, session %s, seed %d",
        len(layout.machines),
        len(layout.sites),
        session_id,
        sim.seed,
    )
    with publisher:
        if replay is not None:
            start, end = (_as_utc(t) for t in replay)
            if end <= start:
                raise EdgeError(f"replay range is empty: {start} .. {end}")
            return _replay(publisher, model, builder, start, end, sim, stop)
        if stop is not None:
            return _live(publisher, model, builder, stop, sim)
        own_stop = threading.Event()
        with _stop_on_signals(own_stop):
            return _live(publisher, model, builder, own_stop, sim)


def _replay(
    publisher: BatchSink,
    model: PowerModel,
    builder: BatchBuilder,
    start: datetime,
    end: datetime,
    sim: SimulatorSettings,
    stop: threading.Event | None,
) -> PublishSummary:
    return replay(
        publisher,
        model,
        builder,
        start,
        end,
        interval_s=sim.interval_s,
        batch_size=sim.replay_batch_size,
        flush_timeout_s=sim.flush_timeout_s,
        stop=stop,
    )


def _live(
    publisher: BatchSink,
    model: PowerModel,
    builder: BatchBuilder,
    stop: threading.Event,
    sim: SimulatorSettings,
) -> PublishSummary:
    return run_live(
        publisher,
        model,
        builder,
        stop,
        interval_s=sim.interval_s,
        batch_interval_s=sim.batch_interval_s,
        flush_timeout_s=sim.flush_timeout_s,
    )


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM set ``stop`` instead of killing us mid-batch."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install signal handlers
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping after the current batch", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
