"""Settings of the ingest service (env prefix ``CARBONFLOW_INGEST_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_INGEST_")

    client_id: str = Field(default="carbonflow-ingest-1", description="Stable per instance")
    share_group: str = Field(default="carbonflow-ingest", description="MQTT shared subscription")
    max_future_s: float = Field(default=300.0, gt=0)
    max_age_days: float = Field(default=30.0, gt=0)
    receive_maximum: int = Field(default=1000, ge=1, le=65535, description="QoS 1 in flight")
    batch_max_messages: int = Field(default=500, ge=1)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=19101, ge=0, le=65535, description="0 turns metrics off")
    device_refresh_s: float = Field(default=30.0, gt=0)
    session_expiry_s: int = Field(
        default=3600, ge=0, description="Broker keeps our queue this long"
    )
