"""Per-run names for tests that run platform services as processes.

Each scope gets its own MQTT topic root, Kafka topics (readings, dead letters, events) and
client ids, so parallel and repeated test runs never see each other's data, and a stream
worker never reads another run's history from a shared topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings
from carbonflow.stack.kafka_admin import ensure_topics
from carbonflow.supervise import free_port, mqtt_env


@dataclass(frozen=True)
class RunScope:
    tag: str
    run_id: str
    mqtt: MqttSettings
    kafka: KafkaSettings

    @classmethod
    def create(
        cls, mqtt_settings: MqttSettings, tag: str, run_id: str, *, partitions: int
    ) -> RunScope:
        """``mqtt_settings`` on this scope's topic root, and this scope's topics, created."""
        mqtt = mqtt_settings.model_copy(update={"topic_root": f"cf-{tag}-{run_id}/v1"})
        kafka = KafkaSettings(
            readings_topic=f"carbonflow.{tag}-{run_id}.readings",
            deadletter_topic=f"carbonflow.{tag}-{run_id}.deadletter",
            events_topic=f"carbonflow.{tag}-{run_id}.events",
            partitions=partitions,
        )
        ensure_topics(
            kafka, [kafka.readings_topic, kafka.deadletter_topic, kafka.events_topic], partitions
        )
        return cls(tag, run_id, mqtt, kafka)

    @property
    def ingest_client_id(self) -> str:
        return f"ingest-{self.tag}-{self.run_id}"

    def service_env(
        self, db_settings: DatabaseSettings, data_dir: Path, **overrides: str
    ) -> dict[str, str]:
        """Environment for ingest and stream processes of this scope (``overrides`` last)."""
        return {
            **mqtt_env(self.mqtt),
            "CARBONFLOW_DB_NAME": db_settings.name,
            "CARBONFLOW_KAFKA_READINGS_TOPIC": self.kafka.readings_topic,
            "CARBONFLOW_KAFKA_DEADLETTER_TOPIC": self.kafka.deadletter_topic,
            "CARBONFLOW_KAFKA_EVENTS_TOPIC": self.kafka.events_topic,
            "CARBONFLOW_KAFKA_PARTITIONS": str(self.kafka.partitions),
            "CARBONFLOW_INGEST_CLIENT_ID": self.ingest_client_id,
            "CARBONFLOW_INGEST_METRICS_PORT": str(free_port()),
            "CARBONFLOW_STREAM_APP_ID": f"stream-{self.tag}-{self.run_id}",
            "CARBONFLOW_STREAM_WEB_PORT": str(free_port()),
            "CARBONFLOW_STREAM_DATA_DIR": str(data_dir / "faust"),
            **overrides,
        }
