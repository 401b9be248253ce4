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
import time
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
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

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
        producer = AIOKafkaProducer(
            bootstrap_servers=self._kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            raise ServiceUnavailableError(
                f"Kafka at {self._kafka.bootstrap_servers}: {exc}"
            ) from exc
        client = self._mqtt_client(lambda msg: loop.call_soon_threadsafe(inbox.put_nowait, msg))
        try:
            await self._devices.refresh()
            await asyncio.to_thread(self._connect, client)
            client.loop_start()
            logger.info(
                "ingest %s: MQTT %s:%s -> Kafka %s",
                self._settings.client_id,
                self._mqtt.host,
                self._mqtt.port,
                self._kafka.readings_topic,
            )
            while not stop.is_set():
                batch = await _next_batch(inbox, stop, self._settings.batch_max_messages)
                if batch:
                    await self._forward(producer, client, batch, stop)
        finally:
            client.publish(self._status_topic, _status_payload("offline"), qos=1, retain=True)
            client.disconnect()
            client.loop_stop()
            await producer.stop()

    def _mqtt_client(self, deliver: object) -> mqtt.Client:
        client = new_client(self._mqtt, client_id=self._settings.client_id, manual_ack=True)
        subscriptions = self._subscriptions()
        # Presence: retained "online" once subscribed, "offline" by last will or on shutdown.
        client.will_set(self._status_topic, _status_payload("offline"), qos=1, retain=True)

        def on_connect(
            client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
        ) -> None:
            if reason.is_failure:
                # e.g. bad credentials: say so loudly; paho keeps retrying the connection.
                logger.error("MQTT broker refused the connection: %s", reason)
                return
            logger.info("MQTT connected; subscribing %s", ", ".join(subscriptions))
            client.subscribe([(topic, 1) for topic in subscriptions])

        def on_subscribe(
            client: mqtt.Client, _u: object, _mid: int, codes: object, _p: object
        ) -> None:
            client.publish(self._status_topic, _status_payload("online"), qos=1, retain=True)

        def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
            deliver(message)  # type: ignore[operator]

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
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

    def _connect(self, client: mqtt.Client) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.session_expiry_s
        properties.ReceiveMaximum = self._settings.receive_maximum
        try:
            client.connect(
                self._mqtt.host,
                self._mqtt.broker_port,
                keepalive=self._mqtt.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except OSError as exc:
            raise ServiceUnavailableError(
                f"MQTT at {self._mqtt.host}:{self._mqtt.port}: {exc}"
            ) from exc

    async def _forward(
        self,
        producer: AIOKafkaProducer,
        client: mqtt.Client,
        batch: list[mqtt.MQTTMessage],
        stop: asyncio.Event,
    ) -> None:
        received_at = datetime.now(UTC)
        wanted = {device for msg in batch if (device := self._router.device_of(msg.topic))}
        await self._devices.refresh_if_stale(wanted=wanted)
        started = time.perf_counter()
        sends: list[tuple[str, bytes, bytes]] = []
        commands: list[tuple[str, bytes]] = []
        for msg in batch:
            routed = self._router.route(
                msg.topic, bytes(msg.payload), received_at=received_at, known_devices=self._devices
            )
            _count(routed)
            for record in routed.records:
                key = record.device_id.encode()
                sends.append((self._kafka.readings_topic, key, record.model_dump_json().encode()))
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
        try:
            # Retriable errors (broker away, leader moving) are waited out; the MQTT messages
            # stay unacknowledged meanwhile. Anything else is a bug or a misconfiguration:
            # it stops the service with the messages unacknowledged, to be delivered again.
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, KafkaError) and e.retriable),
                wait=wait_exponential(multiplier=0.2, max=10),
                stop=stop_when_event_set(stop),  # type: ignore[arg-type]
                before_sleep=_log_kafka_retry,
            ):
                with attempt:
                    futures = [await producer.send(t, key=k, value=v) for t, k, v in sends]
                    await asyncio.gather(*futures)
        except RetryError:
            logger.warning("stopping: %d messages left unacknowledged for redelivery", len(batch))
            return
        for msg in batch:
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
        metrics.FORWARD_SECONDS.observe(time.perf_counter() - started)
        for topic, payload in commands:
            # Sparkplug: host commands (NCMD) go at QoS 0 and are never retained.
            logger.info("asking for a Sparkplug rebirth on %s", topic)
            client.publish(topic, payload, qos=0, retain=False)
            metrics.SPARKPLUG_REBIRTH_REQUESTS.inc()


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


def _count(routed: Routed) -> None:
    if routed.kind is MessageKind.TELEMETRY:
        metrics.MESSAGES.inc()
    elif routed.kind is MessageKind.PRESENCE:
        metrics.PRESENCE_MESSAGES.inc()
    elif routed.kind is MessageKind.SPARKPLUG:
        metrics.SPARKPLUG_MESSAGES.labels(routed.sparkplug_type or "invalid").inc()
    for record in routed.records:
        metrics.READINGS_FORWARDED.inc(len(record.readings))
    for reject in routed.rejects:
        metrics.DEAD_LETTERS.labels(reject.reason.value).inc()
    for event in routed.events:
        metrics.EVENTS.labels(event.source_kind.value, event.event.value).inc()
        missing = event.details.get("missing")
        if event.event is EventKind.SEQ_GAP and isinstance(missing, int):
            metrics.SEQUENCE_GAPS.labels(event.source_kind.value).inc(missing)
    for why, count in routed.skipped.items():
        metrics.SPARKPLUG_METRICS_SKIPPED.labels(why).inc(count)


def _log_kafka_retry(state: RetryCallState) -> None:
    metrics.KAFKA_RETRIES.inc()
    logger.warning("Kafka send failed (%s); retrying", state.outcome and state.outcome.exception())


def _status_payload(state: str) -> bytes:
    return json.dumps({"state": state, "at": datetime.now(UTC).isoformat()}).encode()


async def _next_batch(
    inbox: asyncio.Queue[mqtt.MQTTMessage], stop: asyncio.Event, limit: int
) -> list[mqtt.MQTTMessage]:
    """Wait for one message (or stop), then take whatever else is already waiting."""
    getter = asyncio.ensure_future(inbox.get())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if getter not in done:
        getter.cancel()
        return []
    batch = [getter.result()]
    while len(batch) < limit and not inbox.empty():
        batch.append(inbox.get_nowait())
    return batch


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
