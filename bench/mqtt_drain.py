"""MQTT drain benchmark: paho's network thread against paho on the asyncio event loop.

Each measurement drains a backlog of QoS 1 messages (``--messages`` of ``--payload-bytes``
each, published beforehand into a persistent session of its own) from the local stack's
Mosquitto, acknowledging every message by hand from the event loop, as ingest does:

- ``thread``: paho's ``loop_start()`` network thread reads; each burst is handed to the
  event loop with one ``call_soon_threadsafe`` (the hand-over ingest uses with
  ``loop_start()``), and the loop acknowledges.
- ``event_loop``: ``services.ingest.mqtt_loop.AsyncioNetworkLoop`` reads and writes on the
  event loop itself.

A measurement runs from the connect to the DISCONNECT after the last acknowledgement. It
reports messages/s and the process's CPU (user + system, every thread) per message. Both
variants run in this one process, taking turns going first in each round; the report gives
medians over ``--rounds`` rounds, per MQTT version (``--mqtt-protocols``). The subscriber
reads as the platform services do: ``CARBONFLOW_MQTT_USERNAME``/``_PASSWORD`` when set, else
the stack's service identity. Every session is ended once drained.

    python bench/mqtt_drain.py
    python bench/mqtt_drain.py --messages 50000 --rounds 5 --mqtt-protocols 3.1.1 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from carbonflow.config import MqttSettings, StackSettings
from carbonflow.mqtt_client import new_client
from carbonflow.stack import Stack
from services.ingest.mqtt_loop import AsyncioNetworkLoop

PROTOCOLS = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}
VARIANTS = ("thread", "event_loop")
#: Bench sessions outlive a crashed run by this long at most (MQTT 5).
SESSION_EXPIRY_S = 600
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Options:
    settings: MqttSettings
    topic: str
    protocol: MQTTProtocolVersion
    messages: int
    batch: int
    read_budget: int
    receive_maximum: int


@dataclass(frozen=True)
class Measure:
    seconds: float
    cpu_s: float

    def report(self, messages: int) -> dict[str, float]:
        return {
            "msg_per_s": round(messages / self.seconds),
            "cpu_us_per_msg": round(self.cpu_s / messages * 1e6, 1),
        }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def subscriber(options: Options, client_id: str, *, clean: bool = False) -> Client:
    extra: dict[str, Any] = {"manual_ack": True}
    if options.protocol is MQTTProtocolVersion.MQTTv311:
        extra["clean_session"] = clean
    return new_client(options.settings, client_id=client_id, protocol=options.protocol, **extra)


def connect_options(options: Options, *, clean: bool = False) -> dict[str, Any]:
    """MQTT 5: the session outlives the connection, with ingest's in-flight window."""
    if options.protocol is not MQTTProtocolVersion.MQTTv5:
        return {}
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0 if clean else SESSION_EXPIRY_S
    properties.ReceiveMaximum = options.receive_maximum
    return {"clean_start": clean, "properties": properties}


def run_briefly(client: Client, options: Options, clean: bool, until: threading.Event) -> None:
    """Connect, wait for ``until`` (set by the client's callbacks), disconnect."""
    settings = options.settings
    client.connect(settings.host, settings.port, **connect_options(options, clean=clean))
    client.loop_start()
    try:
        if not until.wait(TIMEOUT_S):
            raise SystemExit(f"no answer from the broker at {settings.host}:{settings.port}")
    finally:
        client.disconnect()
        client.loop_stop()


def open_session(options: Options, client_id: str) -> None:
    """A persistent session subscribed to the topic, so the broker queues the backlog."""
    client = subscriber(options, client_id)
    subscribed = threading.Event()
    client.on_connect = lambda c, *_: c.subscribe(options.topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    run_briefly(client, options, False, subscribed)


def end_session(options: Options, client_id: str) -> None:
    """A clean connection under the same client id discards the session."""
    client = subscriber(options, client_id, clean=True)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    run_briefly(client, options, True, connected)


def publish_backlog(options: Options, payload_bytes: int) -> None:
    settings = options.settings
    client = new_client(settings, protocol=MQTTProtocolVersion.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.connect(settings.host, settings.port)
    client.loop_start()
    try:
        filler = b"x" * (payload_bytes - 8)
        infos = [
            client.publish(options.topic, b"%08d" % seq + filler, qos=1)
            for seq in range(options.messages)
        ]
        for info in infos:
            info.wait_for_publish(TIMEOUT_S)
            if not info.is_published():
                raise SystemExit("the broker did not acknowledge the backlog")
    finally:
        client.disconnect()
        client.loop_stop()


class ThreadInbox:
    """Messages from paho's network thread to the event loop: one wake-up of the loop per
    burst (ingest's hand-over with ``loop_start()``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: deque[MQTTMessage] = deque()
        self._wake_scheduled = False
        self._ready = asyncio.Event()

    def put(self, message: MQTTMessage) -> None:
        self._pending.append(message)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        self._ready.set()

    async def take(self, limit: int) -> list[MQTTMessage]:
        if not self._pending:
            self._ready.clear()
            if not self._pending:
                await self._ready.wait()
        pending = self._pending
        return [pending.popleft() for _ in range(min(limit, len(pending)))]


class LoopInbox:
    """Messages delivered on the event loop itself, with the connection they came on."""

    def __init__(self) -> None:
        self._pending: deque[tuple[int, MQTTMessage]] = deque()
        self._ready = asyncio.Event()

    def put(self, connection: int, message: MQTTMessage) -> None:
        self._pending.append((connection, message))
        self._ready.set()

    async def take(self, limit: int) -> list[tuple[int, MQTTMessage]]:
        if not self._pending:
            self._ready.clear()
            await self._ready.wait()
        pending = self._pending
        return [pending.popleft() for _ in range(min(limit, len(pending)))]


class InOrder:
    """Checks that the backlog arrives whole, in order, once."""

    def __init__(self) -> None:
        self.next = 0

    def check(self, message: MQTTMessage) -> None:
        seq = int(message.payload[:8])
        if seq != self.next:
            raise SystemExit(f"expected message {self.next}, got {seq}")
        self.next += 1


async def drain_thread(options: Options, client_id: str) -> Measure:
    settings = options.settings
    inbox = ThreadInbox(asyncio.get_running_loop())
    client = subscriber(options, client_id)
    client.on_message = lambda _c, _u, message: inbox.put(message)
    sequence = InOrder()
    started, cpu = time.perf_counter(), cpu_seconds()
    await asyncio.to_thread(
        client.connect, settings.host, settings.port, **connect_options(options)
    )
    client.loop_start()
    while sequence.next < options.messages:
        for message in await inbox.take(options.batch):
            sequence.check(message)
            client.ack(message.mid, message.qos)
    client.disconnect()
    await asyncio.to_thread(client.loop_stop)
    return Measure(time.perf_counter() - started, cpu_seconds() - cpu)


async def drain_event_loop(options: Options, client_id: str) -> Measure:
    settings = options.settings
    inbox = LoopInbox()
    client = subscriber(options, client_id)
    network = AsyncioNetworkLoop(client, read_budget=options.read_budget)
    client.on_message = lambda _c, _u, message: inbox.put(network.connection, message)
    sequence = InOrder()
    started, cpu = time.perf_counter(), cpu_seconds()
    await network.connect(settings.host, settings.port, **connect_options(options))
    while sequence.next < options.messages:
        for connection, message in await inbox.take(options.batch):
            sequence.check(message)
            network.ack(message.mid, message.qos, connection)
    await network.close()
    return Measure(time.perf_counter() - started, cpu_seconds() - cpu)


DRAINS: dict[str, Callable[[Options, str], Awaitable[Measure]]] = {
    "thread": drain_thread,
    "event_loop": drain_event_loop,
}


def measure(options: Options, variant: str, client_id: str, payload_bytes: int) -> Measure:
    open_session(options, client_id)
    try:
        publish_backlog(options, payload_bytes)
        return asyncio.run(asyncio.wait_for(DRAINS[variant](options, client_id), TIMEOUT_S))
    finally:
        end_session(options, client_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="backlog per measurement")
    parser.add_argument("--payload-bytes", type=int, default=5 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mqtt-protocols", nargs="+", choices=list(PROTOCOLS), default=["3.1.1"])
    parser.add_argument("--batch", type=int, default=500, help="messages per take, as ingest")
    parser.add_argument("--read-budget", type=int, default=256, help="packets per wake-up")
    parser.add_argument("--receive-maximum", type=int, default=1000, help="MQTT 5 window")
    args = parser.parse_args()
    if args.payload_bytes < 8:
        parser.error("--payload-bytes must be at least 8")

    run = uuid.uuid4().hex[:8]
    mqtt = MqttSettings()
    stack = Stack(stack=StackSettings(), mqtt=mqtt)
    # The platform services' identity, as bench/ingest.py reads it.
    service = mqtt if mqtt.username else stack.service_mqtt_settings(mqtt)
    service = service.model_copy(update={"topic_root": f"cf-benchdrain-{run}/v1"})
    # A topic the service identity may both publish and read.
    topic = service.service_status_topic(service.username or "ingest", f"drain-{run}")

    results = []
    for name in args.mqtt_protocols:
        options = Options(
            settings=service,
            topic=topic,
            protocol=PROTOCOLS[name],
            messages=args.messages,
            batch=args.batch,
            read_budget=args.read_budget,
            receive_maximum=args.receive_maximum,
        )
        rounds: dict[str, list[Measure]] = {variant: [] for variant in VARIANTS}
        for index in range(args.rounds):
            order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                client_id = f"bench-drain-{run}-{name}-{index}-{variant}"
                result = measure(options, variant, client_id, args.payload_bytes)
                rounds[variant].append(result)
                print(
                    f"{name} round {index + 1} {variant}: "
                    f"{json.dumps(result.report(args.messages))}",
                    file=sys.stderr,
                )
        medians = {
            variant: {
                "msg_per_s": round(statistics.median(args.messages / m.seconds for m in measures)),
                "cpu_us_per_msg": round(
                    statistics.median(m.cpu_s / args.messages * 1e6 for m in measures), 1
                ),
                "rounds": [m.report(args.messages) for m in measures],
            }
            for variant, measures in rounds.items()
        }
        thread, on_loop = medians["thread"], medians["event_loop"]
        results.append(
            {
                "mqtt_protocol": name,
                **medians,
                "event_loop_over_thread_msg_per_s": round(
                    on_loop["msg_per_s"] / thread["msg_per_s"], 2
                ),
                "event_loop_over_thread_cpu_per_msg": round(
                    on_loop["cpu_us_per_msg"] / thread["cpu_us_per_msg"], 2
                ),
            }
        )

    report = {
        "benchmark": "mqtt_drain",
        "broker": f"{service.host}:{service.port}",
        "messages": args.messages,
        "payload_bytes": args.payload_bytes,
        "rounds": args.rounds,
        "batch": args.batch,
        "read_budget": args.read_budget,
        "receive_maximum_mqtt5": args.receive_maximum,
        "paho_mqtt": version("paho-mqtt"),
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
