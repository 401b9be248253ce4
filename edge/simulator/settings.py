"""Settings of the factory simulator (env prefix ``CARBONFLOW_SIM_``), built at the entry point."""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge.simulator.factory import MAX_BATCH_SIZE


class SimulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_SIM_")

    seed: int = Field(default=42, description="Same seed, same simulated values")
    devices: int | None = Field(
        default=None,
        ge=1,
        description="Simulate a generated layout of this many devices instead of the demo factory",
    )
    device_prefix: str = Field(
        default="sim", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Ids of that layout"
    )
    interval_s: float = Field(default=1.0, gt=0, description="Sampling interval")
    batch_interval_s: float = Field(default=5.0, gt=0, description="Live: publish this often")
    replay_batch_size: int = Field(
        default=300, ge=1, le=MAX_BATCH_SIZE, description="Replay: readings per batch"
    )
    session_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=64,
        description="Fixed session id; by default a fresh one per start",
    )
    client_id: str | None = Field(default=None, description="MQTT client id; default per session")
    gateway_passwords: dict[str, SecretStr] = Field(
        default_factory=dict,
        description=(
            "MQTT password of each simulated gateway (JSON object, gateway id -> password):"
            " then each gateway publishes over its own connection as itself"
        ),
    )
    max_pending: int = Field(default=1000, ge=1, description="Unacknowledged batches at most")
    max_inflight: int = Field(default=20, ge=1, le=65535, description="QoS 1 window on the wire")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    publish_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest wait for room among the pending batches"
    )
    flush_timeout_s: float = Field(default=120.0, gt=0, description="Longest wait for PUBACKs")

    @model_validator(mode="after")
    def _batches_hold_samples(self) -> Self:
        if self.batch_interval_s < self.interval_s:
            raise ValueError("batch_interval_s must be at least interval_s")
        return self
