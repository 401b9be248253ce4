"""Settings of the ingest service (env prefix ``CARBONFLOW_INGEST_``)."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.ingest.sparkplug.mapping import ConfiguredMetric


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
    # MQTT 3.1.1 spares paho the MQTT 5 properties of every packet: 1.2 to 2 times the
    # messages/s through one instance, at less CPU each (bench/ingest.py measures both). In
    # exchange the broker decides what the MQTT 5 properties below would: how long an absent
    # instance's session is kept (Mosquitto: persistent_client_expiration, 7 d in the stack's
    # configurations) and how many QoS 1 messages it has in flight (max_inflight_messages,
    # 1000). Shared subscriptions, retained presence, the last will, Sparkplug and retiring
    # work alike in both.
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        default="3.1.1",
        description='MQTT version ingest speaks: "3.1.1" (less CPU per message; the broker sets '
        'session lifetime and in-flight window) or "5" (session_expiry_s and receive_maximum)',
    )
    receive_maximum: int = Field(
        default=1000, ge=1, le=65535, description="QoS 1 in flight (MQTT 5 only)"
    )
    batch_max_messages: int = Field(default=500, ge=1)
    # Kafka acknowledges a batch a few ms after it is sent: while one batch waits, the next
    # ones are validated and sent. PUBACKs still leave in the order the messages came.
    batches_in_flight: int = Field(
        default=4, ge=1, description="Batches sent to Kafka and not yet acknowledged, at most"
    )
    # JSON telemetry shrinks about tenfold under zstd, and both ends gain: at batch 50 ingest
    # spends about half the CPU per message on the Kafka side, and so does the broker.
    # Consumers need the codec (the `zstd` extra of aiokafka, which the stream installs).
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="zstd", description="Compression of the record batches ingest writes to Kafka"
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=19101, ge=0, le=65535, description="0 turns metrics off")
    device_refresh_s: float = Field(default=30.0, gt=0)
    # Messages queued for an absent instance are lost when its session expires, and the
    # gateways have already deleted them: keep it longer than any outage worth surviving.
    session_expiry_s: int = Field(
        default=7 * 24 * 3600, ge=0, description="Broker keeps our queue this long (MQTT 5 only)"
    )
    max_payload_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    # Scale-down: Mosquitto keeps handing a stopped member of a shared subscription its
    # share, held in its session until the session expires. A retiring instance leaves the
    # share group, forwards what is still on its way, and ends its session on the broker.
    retire_on_stop: bool = Field(
        default=False,
        description="On SIGTERM leave the shared subscriptions, drain, and end the session",
    )
    retire_quiet_s: float = Field(
        default=1.0, gt=0, description="Retiring: drained once nothing came for this long"
    )
    retire_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Retiring: give up draining after this long and keep the session instead",
    )
    # Sequence gaps are exact only when one instance sees all of a source's messages; with
    # several instances on one shared subscription each sees a part: turn this off then.
    track_sequences: bool = Field(
        default=True, description="Record gaps in telemetry and Sparkplug seq as device events"
    )
    # Sparkplug B: opt-in per group, so a broker shared with other Sparkplug hosts (or other
    # CarbonFlow deployments) only feeds this one the groups meant for it.
    sparkplug_groups: list[str] = Field(
        default_factory=list,
        description='Sparkplug group ids to take, JSON list; ["+"] takes all, [] none',
    )
    sparkplug_metrics: dict[str, ConfiguredMetric] = Field(
        default_factory=dict,
        description="Sparkplug metric names -> platform metric and unit, beyond the built-in "
        'names, e.g. {"Meter/Total kW": {"metric": "active_power", "unit": "kW"}}',
    )
    sparkplug_rebirth_interval_s: float = Field(
        default=10.0, gt=0, description="At most one rebirth request per edge node this often"
    )

    @field_validator("sparkplug_groups")
    @classmethod
    def _valid_groups(cls, groups: list[str]) -> list[str]:
        for group in groups:
            if not group or "/" in group or "#" in group or ("+" in group and group != "+"):
                raise ValueError(f"{group!r} is not a Sparkplug group id (or '+')")
        return groups
