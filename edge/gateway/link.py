"""The gateway's one MQTT v5 connection (paho-mqtt 2), reconnecting on its own for ever.

paho's network thread owns the socket. It keeps every QoS 1 message until its PUBACK and
sends the unacknowledged ones again after a reconnect, so the forwarder only has to bound
how many it hands over. Every connect registers a fresh last will (offline, stamped with
that connect's time) and every successful one publishes the retained birth. Events reach
the gateway's event loop through ``LinkListener``, never by calling into it from paho's
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Protocol

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from carbonflow.config import MqttSettings
from carbonflow.mqtt_client import new_client
from edge.config import TlsSettings
from edge.errors import PublishError
from edge.gateway.presence import GatewayPresence, StatusMessage

logger = logging.getLogger(__name__)

QOS: Final = 1
# PUBACK reason 0x10: accepted, but no subscription matched, so nobody will ever get it.
NO_MATCHING_SUBSCRIBERS: Final = 0x10
# Room in paho's in-flight window for status messages next to the forwarder's batches.
_STATUS_HEADROOM: Final = 10


class LinkListener(Protocol):
    """Connection events, delivered on the gateway's event loop."""

    def connected(self) -> None: ...

    def disconnected(self) -> None: ...

    def acknowledged(self, mid: int, error: str | None) -> None:
        """The broker answered message ``mid``; ``error`` is its reason if it refused it."""
        ...

    def unrouted(self, mid: int) -> None:
        """The broker took message ``mid`` but had no subscriber for it, so it dropped it."""
        ...


class MqttLink:
    def __init__(
        self,
        mqtt: MqttSettings,
        *,
        client_id: str,
        tls: TlsSettings | None,
        presence: GatewayPresence,
        clock: Callable[[], datetime],
        max_inflight: int,
        reconnect_min_s: int,
        reconnect_max_s: int,
    ) -> None:
        self._mqtt = mqtt
        self._presence = presence
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: LinkListener | None = None
        self._connected = False
        self._closing = False
        self._unreachable_since: datetime | None = None
        # TLS comes from the gateway's config file (which may carry a client certificate),
        # credentials from the settings.
        client = new_client(
            mqtt.model_copy(update={"tls": False}),
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if tls is not None:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
        client.max_inflight_messages_set(max_inflight + _STATUS_HEADROOM)
        client.max_queued_messages_set(0)  # the forwarder bounds what it hands over
        client.reconnect_delay_set(reconnect_min_s, max(reconnect_min_s, reconnect_max_s))
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def address(self) -> str:
        return f"{self._mqtt.host}:{self._mqtt.port}"

    def start(self, loop: asyncio.AbstractEventLoop, listener: LinkListener) -> None:
        """Connect in the background; an unreachable broker is retried, never fatal."""
        self._loop = loop
        self._listener = listener
        # Clean start: the broker holds nothing for a publisher that the buffer does not.
        self._client.connect_async(
            self._mqtt.host, self._mqtt.port, self._mqtt.keepalive_s, clean_start=True
        )
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Hand a QoS 1 message to paho (sent now, or after the next connect); its mid."""
        try:
            info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        except ValueError as exc:
            raise PublishError(f"cannot publish to {topic}: {exc}") from exc
        # NO_CONN: paho keeps the message and sends it once connected.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise PublishError(f"cannot publish to {topic}: {info.rc.name}")
        return info.mid

    def close(self, last_words: StatusMessage | None, timeout_s: float) -> None:
        """Publish ``last_words`` (waiting up to ``timeout_s`` for its PUBACK), disconnect.

        A clean DISCONNECT tells the broker to discard the last will. Blocking: call it
        from a worker thread.
        """
        self._closing = True
        if last_words is not None and self._connected:
            info: MQTTMessageInfo | None = None
            try:
                info = self._client.publish(
                    last_words.topic, last_words.payload, qos=QOS, retain=True
                )
                info.wait_for_publish(timeout_s)
            except (ValueError, RuntimeError) as exc:
                logger.warning("could not publish the gateway's offline status: %s", exc)
            if info is not None and not info.is_published():
                logger.warning("no PUBACK for the offline status within %.1f s", timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = False

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _on_pre_connect(self, client: Client, userdata: Any) -> None:
        will = self._presence.will(self._clock())
        client.will_set(will.topic, will.payload, qos=QOS, retain=True)

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            # E.g. wrong credentials; paho tries again after its reconnect delay.
            logger.error("MQTT broker %s refused the connection: %s", self.address, reason_code)
            return
        logger.info("connected to MQTT broker %s", self.address)
        self._unreachable_since = None
        birth = self._presence.birth(self._clock())
        client.publish(birth.topic, birth.payload, qos=QOS, retain=True)
        self._connected = True
        self._notify(lambda listener: listener.connected())

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        # Once per outage at WARNING, then quietly: the retries go on for as long as it takes.
        if self._unreachable_since is None:
            self._unreachable_since = self._clock()
            logger.warning("cannot reach MQTT broker %s; buffering and retrying", self.address)
        else:
            logger.debug(
                "MQTT broker %s unreachable since %s; retrying",
                self.address,
                self._unreachable_since.isoformat(timespec="seconds"),
            )

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected, self._connected = self._connected, False
        if was_connected and not self._closing:
            self._unreachable_since = self._clock()
            logger.warning(
                "lost the MQTT broker %s (%s); buffering until it is back",
                self.address,
                reason_code,
            )
        self._notify(lambda listener: listener.disconnected())

    def _on_publish(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # paho counts 0x10 as success (it is below 0x80), yet the message reached no one.
        if reason_code.value == NO_MATCHING_SUBSCRIBERS:
            self._notify(lambda listener: listener.unrouted(mid))
            return
        error = str(reason_code) if reason_code.is_failure else None
        self._notify(lambda listener: listener.acknowledged(mid, error))

    def _notify(self, event: Callable[[LinkListener], None]) -> None:
        loop, listener = self._loop, self._listener
        if loop is None or listener is None or loop.is_closed():
            return
        # RuntimeError: the loop closed meanwhile, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event, listener)
