"""Settings of the stream processor (env prefix ``CARBONFLOW_STREAM_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StreamSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_STREAM_")

    app_id: str = Field(default="carbonflow-stream", description="Faust app id = consumer group")
    batch_max_events: int = Field(default=500, ge=1, description="Kafka records per batch")
    batches_in_flight: int = Field(
        default=2, ge=1, le=8, description="Readings batches handled at once by one worker"
    )
    batch_within_s: float = Field(default=0.5, gt=0, description="Longest wait to fill a batch")
    max_gap_s: float = Field(
        default=120.0, gt=0, description="Samples further apart are a gap, not integrated"
    )
    lateness_days: float = Field(
        default=7.0,
        gt=0,
        description="Readings older than this (by processing time) are stored but update no "
        "intervals, emissions or rollups; they are reported as late_readings device events",
    )
    shutdown_grace_s: float = Field(
        default=30.0, gt=0, description="How long shutdown waits for the batch in hand"
    )
    web_port: int = Field(default=16066, description="Faust's own web server (metrics, health)")
    data_dir: str | None = Field(
        default=None, description="Faust data dir; default: one per app id in the temp dir"
    )
