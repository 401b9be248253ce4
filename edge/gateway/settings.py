"""Run-time settings of the gateway process (env prefix ``CARBONFLOW_GATEWAY_``).

The config file describes the installation (broker, buffer, meters); these settings are
about this process: where it serves metrics, how hard it pushes the broker, how long a
clean shutdown may take, and the seed of simulated meters.
"""

from __future__ import annotations

from typing import Self

from pydantic import AwareDatetime, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_GATEWAY_")

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=19102, ge=0, le=65535, description="0 turns metrics off")
    max_inflight: int = Field(
        default=10, ge=1, le=1000, description="Batches published and awaiting PUBACK at most"
    )
    reconnect_min_s: int = Field(default=1, ge=1, description="First wait before reconnecting")
    reconnect_max_s: int = Field(default=30, ge=1, description="Longest wait between reconnects")
    rejected_retry_s: float = Field(
        default=30.0, gt=0, description="Wait before publishing a batch the broker refused again"
    )
    unrouted_retry_initial_s: float = Field(
        default=0.5,
        gt=0,
        description="First wait before publishing again a batch that reached no subscriber",
    )
    unrouted_retry_max_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait between tries of a batch that reached no subscriber",
    )
    shutdown_timeout_s: float = Field(
        default=10.0, gt=0, description="How long a clean stop may spend publishing the buffer"
    )
    sim_seed: int = Field(
        default=42, description="Seed of simulated meters: same seed, same values"
    )
    sim_counter_origin: AwareDatetime | None = Field(
        default=None,
        description="When simulated energy registers started counting; default: first read",
    )

    @model_validator(mode="after")
    def _unrouted_retry_in_order(self) -> Self:
        if self.unrouted_retry_initial_s > self.unrouted_retry_max_s:
            raise ValueError("unrouted_retry_initial_s must be at most unrouted_retry_max_s")
        return self
