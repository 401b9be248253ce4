"""MQTT -> Kafka bridge: the composition root of the ingest service.

It takes JSON telemetry, gateway and meter presence, and Sparkplug B (``router`` says which
handler makes what of a message) and writes readings, dead letters and device events to
their Kafka topics. An MQTT message is acknowledged (PUBACK) only after Kafka has
acknowledged everything made from it, readings, dead letters and events alike, so a crash
at any point makes the broker deliver the message again; the stream processor's idempotent
writes absorb that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import start_http_server
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential,
)

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings
from carbonflow.errors import ServiceUnavailableError
from carbonflow.mqtt_client import new_client
from schemas import EventKind
from services.ingest import metrics
from services.ingest.devices import DeviceDirectory
from services.ingest.kafka_out import PartitionedSender, Record
from services.ingest.mqtt_loop import AsyncioNetworkLoop
from services.ingest.router import MessageKind, MessageRouter, Routed
from services.ingest.sequences import BatchSequences
from services.ingest.settings import IngestSettings
from services.ingest.sparkplug import topics as sparkplug_topics
from services.ingest.sparkplug.host import SparkplugHost
from services.ingest.sparkplug.mapping import MetricMapper
from services.ingest.sparkplug.sessions import SparkplugSessions
from services.ingest.validation import ValidationPolicy

logger = logging.getLogger(__name__)


class IngestBridge:
    def __init__(
        self,
        mqtt_settings: MqttSettings,
        kafka: KafkaSettings,
        settings: IngestSettings,
        devices: DeviceDirectory,
    ) -> None:
        self._mqtt = mqtt_settings
        self._kafka = kafka
        self._settings = settings
        self._devices = devices
        self._policy = ValidationPolicy(
            max_future=timedelta(seconds=settings.max_future_s),
            max_age=timedelta(days=settings.max_age_days),
            max_payload_bytes=settings.max_payload_bytes,
        )
        self._status_topic = mqtt_settings.service_status_topic("ingest", settings.client_id)
        self._router = _router(mqtt_settings, settings, self._policy)
        self._session = BrokerSession(mqtt_settings, settings)
        self._unsubscribed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        inbox = Inbox()
        producer = AIOKafkaProducer(
            bootstrap_servers=self._kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            compression_type=_codec(self._settings.kafka_compression),
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            raise ServiceUnavailableError(
                f"Kafka at {self._kafka.bootstrap_servers}: {exc}"
            ) from exc
        network: AsyncioNetworkLoop | None = None
        end_session = False
        try:
            await self._devices.refresh()
            client = self._mqtt_client(self._unsubscribed.set)
            network = await self._session.open(client, inbox.put)
            logger.info(
                "ingest %s: MQTT %s:%s (MQTT %s) -> Kafka %s",
                self._settings.client_id,
                self._mqtt.host,
                self._mqtt.port,
                self._settings.mqtt_protocol,
                self._kafka.readings_topic,
            )
            in_flight: asyncio.Queue[InFlight | None] = asyncio.Queue(
                maxsize=self._settings.batches_in_flight
            )
            sender = PartitionedSender(producer)
            acker = asyncio.ensure_future(self._acknowledge(sender, network, in_flight, stop))
            interrupt = asyncio.ensure_future(_interrupt_on(stop, inbox))
            try:
                while not stop.is_set():
                    batch = await inbox.take(self._settings.batch_max_messages)
                    if batch:
                        await _put(in_flight, await self._send(sender, batch), acker)
                drained = False
                if self._settings.retire_on_stop:
                    drained = await self._retire(network, sender, inbox, in_flight, acker)
                await _put(in_flight, None, acker)
                all_acknowledged = await acker
                end_session = drained and all_acknowledged
            finally:
                interrupt.cancel()
                acker.cancel()
        finally:
            if network is not None:
                if network.connected:
                    network.client.publish(
                        self._status_topic, _status_payload("offline"), qos=1, retain=True
                    )
                if end_session:
                    logger.info("retired: ending the MQTT session, the broker forgets it")
                await self._session.close(network, end=end_session)
            await producer.stop()

    async def _retire(
        self,
        network: AsyncioNetworkLoop,
        sender: PartitionedSender,
        inbox: Inbox,
        in_flight: asyncio.Queue[InFlight | None],
        acker: asyncio.Future[bool],
    ) -> bool:
        """Leave the shared subscriptions and forward what still comes until it stops coming.

        True when drained: the session can end without losing anything. False (draining
        took too long) keeps the session, so what is in it waits for this client id.
        """
        shared = [topic for topic in self._subscriptions() if topic.startswith("$share/")]
        logger.info("retiring: leaving %s", ", ".join(shared))
        if not network.connected:
            logger.warning("retiring: not connected to the broker; keeping the session")
            return False
        result, _mid = network.client.unsubscribe(shared)
        if result != mqtt.MQTT_ERR_SUCCESS:
            logger.warning("retiring: could not unsubscribe (%s); keeping the session", result)
            return False
        settings = self._settings
        deadline = time.monotonic() + settings.retire_timeout_s
        unsubscribed = False
        while time.monotonic() < deadline:
            unsubscribed = unsubscribed or self._unsubscribed.is_set()
            batch = await inbox.take(settings.batch_max_messages, timeout_s=settings.retire_quiet_s)
            if batch:
                await _put(in_flight, await self._send(sender, batch), acker)
            elif unsubscribed:
                # The broker confirmed the unsubscribe, and nothing came for the quiet period:
                # what it had queued for us has arrived.
                return True
        logger.warning(
            "retiring: messages kept coming for %ss; keeping the session", settings.retire_timeout_s
        )
        return False

    def _mqtt_client(self, unsubscribed: Callable[[], object]) -> mqtt.Client:
        """The client with its last will and callbacks (they run on the event loop)."""
        client = self._session.new_client(manual_ack=True)
        subscriptions = self._subscriptions()
        # Presence: retained "online" once subscribed, "offline" by last will or on shutdown.
        client.will_set(self._status_topic, _status_payload("offline"), qos=1, retain=True)

        def on_connect(
            client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
        ) -> None:
            if reason.is_failure:
                # e.g. bad credentials: said loudly, while reconnecting keeps trying.
                logger.error("MQTT broker refused the connection: %s", reason)
                return
            logger.info("MQTT connected; subscribing %s", ", ".join(subscriptions))
            client.subscribe([(topic, 1) for topic in subscriptions])

        def on_subscribe(
            client: mqtt.Client, _u: object, _mid: int, codes: object, _p: object
        ) -> None:
            client.publish(self._status_topic, _status_payload("online"), qos=1, retain=True)

        def on_unsubscribe(
            _c: mqtt.Client, _u: object, _mid: int, _codes: object, _p: object
        ) -> None:
            unsubscribed()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_unsubscribe = on_unsubscribe
        return client

    def _subscriptions(self) -> list[str]:
        """Shared: telemetry and Sparkplug data, spread over the instances. Plain: presence
        (retained, and a shared subscription gets no retained messages) and Sparkplug births
        and deaths (every instance needs every node's aliases and bdSeq). Every instance
        records the same presence events; the store keeps one of each."""
        share = f"$share/{self._settings.share_group}"
        sparkplug_lifecycle, sparkplug_data = sparkplug_topics.subscriptions(
            self._settings.sparkplug_groups, self._settings.share_group
        )
        return [
            f"{share}/{self._mqtt.telemetry_filter}",
            *self._mqtt.presence_filters,
            *sparkplug_lifecycle,
            *sparkplug_data,
        ]

    async def _send(self, sender: PartitionedSender, batch: list[Delivered]) -> InFlight:
        """Route a batch and hand everything made of it to the Kafka producer."""
        received_at = datetime.now(UTC)
        wanted = {device for _, msg in batch if (device := self._router.device_of(msg.topic))}
        await self._devices.refresh_if_stale(wanted=wanted)
        started = time.perf_counter()
        tally = metrics.BatchTally()
        sends: list[Record] = []
        commands: list[tuple[str, bytes]] = []
        readings_topic = self._kafka.readings_topic
        for _, msg in batch:
            routed = self._router.route(
                msg.topic, bytes(msg.payload), received_at=received_at, known_devices=self._devices
            )
            _count(routed, tally)
            for accepted in routed.batches:
                sends.append((readings_topic, accepted.device_id.encode(), accepted.value))
            for reject in routed.rejects:
                logger.info("dead letter %s: %s (%s)", reject.reason, reject.detail, msg.topic)
                key = (reject.device_id or "").encode()
                sends.append((self._kafka.deadletter_topic, key, reject.model_dump_json().encode()))
            for event in routed.events:
                logger.info(
                    "%s %s: %s %s", event.source_kind, event.source_id, event.event, event.details
                )
                key = event.source_id.encode()
                sends.append((self._kafka.events_topic, key, event.model_dump_json().encode()))
            commands.extend(routed.commands)
        tally.flush()
        sent = InFlight(batch, sends, commands, started)
        try:
            sent.acks = await sender.send(sends)
        except KafkaError as exc:
            # Settled (retried or given up) in order, like a send whose acknowledgement failed.
            sent.error = exc
        return sent

    async def _acknowledge(
        self,
        sender: PartitionedSender,
        network: AsyncioNetworkLoop,
        in_flight: asyncio.Queue[InFlight | None],
        stop: asyncio.Event,
    ) -> bool:
        """PUBACK each batch, in the order the batches came, once Kafka has all of it.

        MQTT requires PUBACKs in the order the PUBLISHes arrived. Returns whether every
        batch was acknowledged (False: some were left for the broker to deliver again).
        """
        while (sent := await in_flight.get()) is not None:
            if not await self._settle(sender, sent, stop):
                logger.warning(
                    "stopping: %d messages left unacknowledged for redelivery", len(sent.batch)
                )
                # Nothing after an unacknowledged message may be acknowledged either.
                while await in_flight.get() is not None:
                    pass
                return False
            for connection, msg in sent.batch:
                # Messages of a lost connection are not acknowledged: the broker delivers
                # them again, and the stream's idempotent writes absorb the repeat.
                if msg.qos > 0:
                    network.ack(msg.mid, msg.qos, connection)
            metrics.FORWARD_SECONDS.observe(time.perf_counter() - sent.started)
            for topic, payload in sent.commands:
                # Sparkplug: host commands (NCMD) go at QoS 0 and are never retained; one
                # lost while disconnected is asked again on the node's next unborn data.
                if network.connected:
                    logger.info("asking for a Sparkplug rebirth on %s", topic)
                    network.client.publish(topic, payload, qos=0, retain=False)
                    metrics.SPARKPLUG_REBIRTH_REQUESTS.inc()
        return True

    async def _settle(self, sender: PartitionedSender, sent: InFlight, stop: asyncio.Event) -> bool:
        """Wait for Kafka to acknowledge a batch, sending it again after retriable errors."""
        error = sent.error
        if error is None:
            try:
                await asyncio.gather(*sent.acks)
                return True
            except KafkaError as exc:
                error = exc
        if not error.retriable:
            # A bug or a misconfiguration: stop with the messages unacknowledged.
            raise error
        _log_kafka_retry_of(error)
        try:
            # Retriable errors (broker away, leader moving) are waited out; the MQTT messages
            # stay unacknowledged meanwhile. Anything else stops the service.
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, KafkaError) and e.retriable),
                wait=wait_exponential(multiplier=0.2, max=10),
                stop=stop_when_event_set(stop),  # type: ignore[arg-type]
                before_sleep=_log_kafka_retry,
            ):
                with attempt:
                    await asyncio.gather(*await sender.send(sent.sends))
        except RetryError:
            return False
        return True


class BrokerSession:
    """Ingest's persistent session on the broker, in MQTT 5 or MQTT 3.1.1: the one place
    that knows how each protocol keeps, bounds and ends it.

    MQTT 5: clean start off, the session expiry and receive maximum from the settings;
    ending it is a DISCONNECT with session expiry 0. MQTT 3.1.1 has no properties: clean
    session off, and the broker decides how long an absent session is kept (Mosquitto's
    ``persistent_client_expiration``) and how many messages are in flight
    (``max_inflight_messages``). It has no way to end a session on DISCONNECT either:
    a clean-session connection under the same client id discards it instead.
    """

    def __init__(self, mqtt_settings: MqttSettings, settings: IngestSettings) -> None:
        self._mqtt = mqtt_settings
        self._client_id = settings.client_id
        self._v5 = settings.mqtt_protocol == "5"
        self._session_expiry_s = settings.session_expiry_s
        self._receive_maximum = settings.receive_maximum

    def new_client(self, *, clean: bool = False, **options: Any) -> mqtt.Client:
        if self._v5:
            return new_client(self._mqtt, client_id=self._client_id, **options)
        return new_client(
            self._mqtt,
            client_id=self._client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=clean,
            **options,
        )

    async def open(
        self, client: mqtt.Client, deliver: Callable[[Delivered], None]
    ) -> AsyncioNetworkLoop:
        """Connect ``client`` with its network I/O on the running event loop; returns once
        the broker has accepted (on_connect has run), reconnecting by itself afterwards.

        Messages go to ``deliver`` with the number of the connection they came on, which
        their acknowledgement must go back on.
        """
        network = AsyncioNetworkLoop(client)

        def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
            deliver((network.connection, message))

        client.on_message = on_message
        await network.connect(
            self._mqtt.host, self._mqtt.broker_port, self._mqtt.keepalive_s, **self._options()
        )
        return network

    async def close(self, network: AsyncioNetworkLoop, *, end: bool) -> None:
        """Disconnect after what is queued (acknowledgements first); ``end`` also ends the
        session."""
        properties = None
        if end and self._v5:
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
        await network.close(properties=properties)
        if end and not self._v5:
            await asyncio.to_thread(self._discard)

    def _options(self) -> dict[str, Any]:
        if not self._v5:
            return {}
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s
        properties.ReceiveMaximum = self._receive_maximum
        return {"clean_start": False, "properties": properties}

    def _discard(self, timeout_s: float = 10.0) -> None:
        """MQTT 3.1.1 (blocking): connect once with a clean session, which discards the
        kept one."""
        client = self.new_client(clean=True)
        accepted = threading.Event()

        def on_connect(
            _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
        ) -> None:
            if reason.is_failure:
                logger.error("MQTT broker refused the connection: %s", reason)
            else:
                accepted.set()

        client.on_connect = on_connect
        try:
            client.connect(self._mqtt.host, self._mqtt.broker_port, self._mqtt.keepalive_s)
        except OSError as exc:
            logger.warning("could not end the MQTT session (%s); the broker expires it", exc)
            return
        client.loop_start()
        try:
            if not accepted.wait(timeout_s):
                logger.warning("could not end the MQTT session; the broker expires it")
        finally:
            client.disconnect()
            client.loop_stop()


#: An MQTT message, with the number of the connection it came on (see AsyncioNetworkLoop).
Delivered = tuple[int, mqtt.MQTTMessage]


@dataclass(slots=True)
class InFlight:
    """A batch of MQTT messages whose records were handed to Kafka, awaiting its acks."""

    batch: list[Delivered]
    sends: list[Record]
    commands: list[tuple[str, bytes]]
    started: float
    acks: list[asyncio.Future[object]] = field(default_factory=list)
    error: KafkaError | None = None


class Inbox:
    """MQTT messages from paho's callbacks to the batching loop, both on the event loop."""

    def __init__(self) -> None:
        self._pending: deque[Delivered] = deque()
        self._ready = asyncio.Event()

    def put(self, delivered: Delivered) -> None:
        self._pending.append(delivered)
        self._ready.set()

    def interrupt(self) -> None:
        """Make a waiting ``take`` return (empty if nothing came)."""
        self._ready.set()

    async def take(self, limit: int, timeout_s: float | None = None) -> list[Delivered]:
        """Up to ``limit`` messages once there is one; empty after ``timeout_s`` or an
        interrupt."""
        if not self._pending:
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return []
        pending = self._pending
        return [pending.popleft() for _ in range(min(limit, len(pending)))]


async def _interrupt_on(stop: asyncio.Event, inbox: Inbox) -> None:
    await stop.wait()
    inbox.interrupt()


async def _put(
    in_flight: asyncio.Queue[InFlight | None], item: InFlight | None, acker: asyncio.Future[bool]
) -> None:
    """Queue for the acknowledger, or raise its error if it has stopped on one."""
    putter: asyncio.Future[Any] = asyncio.ensure_future(in_flight.put(item))
    waiting: set[asyncio.Future[Any]] = {putter, acker}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not putter.done():
        putter.cancel()
        acker.result()  # raises its error
        raise RuntimeError("the Kafka acknowledger stopped early")


def _router(
    mqtt_settings: MqttSettings, settings: IngestSettings, policy: ValidationPolicy
) -> MessageRouter:
    sparkplug = None
    if settings.sparkplug_groups:
        sessions = SparkplugSessions(
            rebirth_interval=timedelta(seconds=settings.sparkplug_rebirth_interval_s),
            track_seq=settings.track_sequences,
        )
        sparkplug = SparkplugHost(sessions, MetricMapper(settings.sparkplug_metrics), policy)
    return MessageRouter(
        topic_root=mqtt_settings.topic_root,
        policy=policy,
        sparkplug=sparkplug,
        sequences=BatchSequences() if settings.track_sequences else None,
    )


def _count(routed: Routed, tally: metrics.BatchTally) -> None:
    if routed.kind is MessageKind.TELEMETRY:
        tally.inc(metrics.MESSAGES)
    elif routed.kind is MessageKind.PRESENCE:
        tally.inc(metrics.PRESENCE_MESSAGES)
    elif routed.kind is MessageKind.SPARKPLUG:
        tally.inc(metrics.SPARKPLUG_MESSAGES, 1, routed.sparkplug_type or "invalid")
    for accepted in routed.batches:
        tally.inc(metrics.READINGS_FORWARDED, accepted.reading_count)
    for reject in routed.rejects:
        tally.inc(metrics.DEAD_LETTERS, 1, reject.reason.value)
    for event in routed.events:
        tally.inc(metrics.EVENTS, 1, event.source_kind.value, event.event.value)
        missing = event.details.get("missing")
        if event.event is EventKind.SEQ_GAP and isinstance(missing, int):
            tally.inc(metrics.SEQUENCE_GAPS, missing, event.source_kind.value)
    for why, count in routed.skipped.items():
        tally.inc(metrics.SPARKPLUG_METRICS_SKIPPED, count, why)


def _codec(compression: str) -> str | None:
    return None if compression == "none" else compression


def _log_kafka_retry_of(error: KafkaError) -> None:
    metrics.KAFKA_RETRIES.inc()
    logger.warning("Kafka send failed (%s); retrying", error)


def _log_kafka_retry(state: RetryCallState) -> None:
    metrics.KAFKA_RETRIES.inc()
    logger.warning("Kafka send failed (%s); retrying", state.outcome and state.outcome.exception())


def _status_payload(state: str) -> bytes:
    return json.dumps({"state": state, "at": datetime.now(UTC).isoformat()}).encode()


def run(
    mqtt_settings: MqttSettings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    settings: IngestSettings,
) -> None:
    """Run one ingest instance until SIGINT/SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if settings.metrics_port:
            start_http_server(settings.metrics_port, addr=settings.metrics_host)
        devices = DeviceDirectory(db, settings.device_refresh_s)
        await IngestBridge(mqtt_settings, kafka, settings, devices).run(stop)

    asyncio.run(main())
