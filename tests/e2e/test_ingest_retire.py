"""Scale-down: an ingest instance retired with SIGTERM leaves the share group cleanly.

Mosquitto (2.0) keeps handing a stopped member of a shared subscription its round-robin
share, held in its session until the session expires. With retire on stop, the instance
unsubscribes, forwards what is still on its way, and ends its session; from then on the
survivor gets every message. The retired instance is never started again here, so any
message the broker still handed to it would be missing from Kafka. MQTT 5 ends the session
with its DISCONNECT; MQTT 3.1.1 with a clean-session connection afterwards: both run here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt_client
import psycopg
import pytest

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings
from carbonflow.mqtt_client import new_client
from carbonflow.registry import upsert_layout
from carbonflow.stack.kafka_admin import ensure_topics
from carbonflow.supervise import wait_for
from edge.simulator.factory import FactoryLayout, small_factory
from edge.simulator.publisher import Publisher
from tests.e2e.test_ingest_failover import (
    DEVICES,
    PROTOCOLS,
    IngestFleet,
    SteadyLoad,
    _read_topics,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

RETIRE_AFTER = 150  # messages the retiring instance has taken: mid-stream
PUBLISHED_AFTER_RETIRE = 400


@dataclass
class Retirement:
    published: set[tuple[str, int]]
    published_after: set[tuple[str, int]]
    arrived: set[tuple[str, int]]
    dead_letters: int
    exit_code: int
    survivor_messages_at_exit: float
    survivor_messages_at_end: float
    retired_log: str
    session_kept: bool


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def retirement(
    request: pytest.FixtureRequest,
    db_settings: DatabaseSettings,
    mqtt_settings: MqttSettings,
    edge_mqtt_settings: Callable[[str], MqttSettings],
    run_id: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Retirement]:
    protocol = str(request.param)
    run_id = f"{run_id}{PROTOCOLS[protocol]}"
    layout: FactoryLayout = small_factory(DEVICES, prefix=f"rt{run_id}")
    with psycopg.connect(db_settings.conninfo()) as conn:
        upsert_layout(conn, layout)
    mqtt = mqtt_settings.model_copy(update={"topic_root": f"cf-retire-{run_id}/v1"})
    kafka = KafkaSettings(
        readings_topic=f"carbonflow.retire-{run_id}.readings",
        deadletter_topic=f"carbonflow.retire-{run_id}.deadletter",
        events_topic=f"carbonflow.retire-{run_id}.events",
        partitions=3,
    )
    ensure_topics(kafka, [kafka.readings_topic, kafka.deadletter_topic, kafka.events_topic], 3)
    log_dir = tmp_path_factory.mktemp("retire-logs")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
    with ExitStack() as exits:
        fleet = IngestFleet(
            mqtt,
            kafka,
            db_settings,
            f"rt{run_id}",
            log_dir,
            exits,
            protocol=protocol,
            retire_on_stop=True,
        )
        survivor_id, retiring_id = fleet.client_ids[:2]
        for client_id in (survivor_id, retiring_id):
            fleet.start(client_id)
        for client_id in (survivor_id, retiring_id):
            fleet.wait_status(client_id, "online")
        publishers = {}
        for gateway in sorted({m.gateway_id for m in layout.machines}):
            settings = edge_mqtt_settings(gateway).model_copy(
                update={"topic_root": mqtt.topic_root}
            )
            publishers[gateway] = exits.enter_context(Publisher(settings, client_id=gateway))
        load = SteadyLoad(publishers, layout.machines, start)
        exits.callback(load.stop)
        load.start()
        survivor = fleet.processes[survivor_id]
        retiring = fleet.processes[retiring_id]
        wait_for(
            lambda: m if (m := fleet.messages(retiring_id)) and m >= RETIRE_AFTER else None,
            timeout_s=20,
            what=f"{retiring_id} to take {RETIRE_AFTER} messages",
            services=(survivor, retiring),
        )
        exit_code = retiring.stop(timeout_s=60)  # SIGTERM: retire
        session_kept = _session_kept(mqtt, retiring_id)
        survivor_at_exit = fleet.messages(survivor_id) or 0.0
        first_after = load.count
        wait_for(
            lambda: True if load.count >= first_after + PUBLISHED_AFTER_RETIRE else None,
            timeout_s=20,
            what=f"{PUBLISHED_AFTER_RETIRE} batches published after the retirement",
            services=(survivor,),
        )
        load.stop()
        assert load.error is None, f"publishing failed: {load.error!r}"
        for publisher in publishers.values():
            publisher.flush(timeout=30)
        published = {(b.device_id, b.seq) for b in load.sent}
        arrived, dead_letters = asyncio.run(_read_topics(kafka, published, timeout_s=30))
        survivor_at_end = wait_for(
            lambda: m if (m := fleet.messages(survivor_id)) else None,
            timeout_s=10,
            what="the survivor's metrics",
            services=(survivor,),
        )
        assert survivor.alive(), survivor.log_tail()
        yield Retirement(
            published=published,
            published_after={(b.device_id, b.seq) for b in load.sent[first_after:]},
            arrived=set(arrived),
            dead_letters=dead_letters,
            exit_code=exit_code,
            survivor_messages_at_exit=survivor_at_exit,
            survivor_messages_at_end=survivor_at_end,
            retired_log=retiring.log_path.read_text(errors="replace"),
            session_kept=session_kept,
        )


def _session_kept(settings: MqttSettings, client_id: str) -> bool:
    """Whether the broker holds a session for ``client_id``: an MQTT 5 connection that
    resumes any session (clean start off) reads CONNACK's session present flag; its own
    session expiry is 0, so it leaves nothing behind."""
    client = new_client(settings, client_id=client_id)
    answers: list[tuple[bool, str]] = []
    answered = threading.Event()

    def on_connect(
        _c: mqtt_client.Client,
        _u: object,
        flags: mqtt_client.ConnectFlags,
        reason: object,
        _p: object,
    ) -> None:
        answers.append((flags.session_present, str(reason)))
        answered.set()

    client.on_connect = on_connect
    client.connect(settings.host, settings.broker_port, settings.keepalive_s, clean_start=False)
    client.loop_start()
    try:
        assert answered.wait(10), f"no CONNACK for {client_id}"
    finally:
        client.disconnect()
        client.loop_stop()
    session_present, reason = answers[0]
    assert reason == "Success", reason
    return session_present


def test_a_retired_instance_loses_nothing(retirement: Retirement) -> None:
    assert retirement.exit_code == 0, retirement.retired_log[-3000:]
    assert "retired: ending the MQTT session" in retirement.retired_log
    assert not retirement.session_kept, "the broker still holds the retired instance's session"
    missing = sorted(retirement.published - retirement.arrived)
    assert not missing, f"{len(missing)} of {len(retirement.published)} missing: {missing[:10]}"
    assert retirement.dead_letters == 0


def test_after_retiring_every_message_goes_to_the_survivor(retirement: Retirement) -> None:
    # Nothing published after the exit waits in the retired instance's session: it is gone,
    # and the survivor took all of those messages.
    assert retirement.published_after <= retirement.arrived
    taken = retirement.survivor_messages_at_end - retirement.survivor_messages_at_exit
    assert taken >= len(retirement.published_after), taken
