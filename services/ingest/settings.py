"""Settings of the ingest service (env prefix ``CARBONFLOW_INGEST_``)."""

from __future__ import annotations

import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_INGEST_")

    # Stable across restarts, so the broker hands a restarted instance its own queued session.
    # Several instances on one host need one each.
    client_id: str = Field(
        default_factory=lambda: f"carbonflow-ingest-{socket.gethostname()}",
        description="MQTT client id, stable per instance",
    )
    share_group: str = Field(default="carbonflow-ingest", description="MQTT shared subscription")
    max_future_s: float = Field(default=300.0, gt=0)
    max_age_days: float = Field(default=30.0, gt=0)
    receive_maximum: int = Field(default=1000, ge=1, le=65535, description="QoS 1 in flight")
    batch_max_messages: int = Field(default=500, ge=1)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=19101, ge=0, le=65535, description="0 turns metrics off")
    device_refresh_s: float = Field(default=30.0, gt=0)
    # Messages queued for an absent instance are lost when its session expires, and the
    # gateways have already deleted them: keep it longer than any outage worth surviving.
    session_expiry_s: int = Field(
        default=7 * 24 * 3600, ge=0, description="Broker keeps our queue this long"
    )
    max_payload_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
