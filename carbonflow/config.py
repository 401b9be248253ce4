"""Settings for every component, read from the environment (prefix ``CARBONFLOW_``).

Each entry point builds the objects it needs once and passes them down; nothing below an
entry point reads the environment. Defaults match the local stack, which listens on
127.0.0.1 on ports chosen not to collide with system-wide services.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class MqttSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_MQTT_")

    host: str = "127.0.0.1"
    port: int = Field(default=11883, description="Plain MQTT listener")
    tls_port: int = Field(default=18883, description="MQTT over TLS listener")
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = Field(default=False, description="Connect over TLS, to tls_port")
    tls_ca_file: Path | None = Field(
        default=None, description="CA certificate(s) to trust for TLS; default: the system's"
    )
    topic_root: str = Field(default="cf/v1", description="Prefix of every CarbonFlow topic")
    keepalive_s: int = 30

    @property
    def broker_port(self) -> int:
        """The port a client connects to: the TLS listener when ``tls`` is on."""
        return self.tls_port if self.tls else self.port

    @property
    def telemetry_filter(self) -> str:
        """Topic filter matching every device's telemetry."""
        return f"{self.topic_root}/telemetry/+/+"

    def telemetry_topic(self, gateway_id: str, device_id: str) -> str:
        return f"{self.topic_root}/telemetry/{gateway_id}/{device_id}"

    def gateway_status_topic(self, gateway_id: str) -> str:
        """Retained birth/death of a gateway (``schemas.presence.GatewayStatus``)."""
        return f"{self.topic_root}/status/gateway/{gateway_id}"

    def device_status_topic(self, gateway_id: str, device_id: str) -> str:
        """Retained reachability of a meter (``schemas.presence.DeviceStatus``)."""
        return f"{self.topic_root}/status/device/{gateway_id}/{device_id}"

    @property
    def presence_filters(self) -> tuple[str, str]:
        """Topic filters matching every gateway's and every meter's status."""
        return (
            f"{self.topic_root}/status/gateway/+",
            f"{self.topic_root}/status/device/+/+",
        )

    def service_status_topic(self, service: str, instance: str) -> str:
        """Retained online/offline status of a platform service instance."""
        return f"{self.topic_root}/status/{service}/{instance}"


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_KAFKA_")

    bootstrap_servers: str = "127.0.0.1:19092"
    readings_topic: str = "carbonflow.readings.v1"
    deadletter_topic: str = "carbonflow.deadletter.v1"
    events_topic: str = "carbonflow.events.v1"
    partitions: int = 6


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_DB_")

    host: str = "127.0.0.1"
    port: int = 15432
    name: str = "carbonflow"
    user: str = "carbonflow"
    password: SecretStr | None = None
    pool_min_size: int = 1
    pool_max_size: int = 8

    def conninfo(self, dbname: str | None = None) -> str:
        """A libpq connection string; the password goes through PGPASSWORD-style kwargs."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "dbname": dbname or self.name,
            "user": self.user,
            "application_name": "carbonflow",
        }
        if self.password is not None:
            parts["password"] = self.password.get_secret_value()
        return " ".join(f"{key}={_quote(value)}" for key, value in parts.items())

    def sqlalchemy_url(self) -> str:
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg",
            username=self.user,
            password=self.password.get_secret_value() if self.password else None,
            host=self.host,
            port=self.port,
            database=self.name,
        ).render_as_string(hide_password=False)


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


class StackSettings(BaseSettings):
    """Where and how the local stack (Mosquitto, PostgreSQL+TimescaleDB, Kafka) runs."""

    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_STACK_")

    state_dir: Path = REPO_ROOT / ".state"
    cache_dir: Path = Path.home() / ".cache" / "carbonflow"
    kafka_controller_port: int = 19093
    kafka_heap: str = "512m"
    startup_timeout_s: float = 120.0
