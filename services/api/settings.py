"""Settings of the REST API (env prefix ``CARBONFLOW_API_``)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARBONFLOW_API_")

    host: str = Field(default="127.0.0.1", description="Address to listen on")
    port: int = Field(default=18080, ge=1, le=65535)
    readings_default_limit: int = Field(
        default=10_000, ge=1, description="Readings per response when the client gives no limit"
    )
    readings_max_limit: int = Field(default=100_000, ge=1, description="Largest allowed limit")
    readings_max_range_days: float = Field(default=31.0, gt=0, description="Widest from..to")
    energy_max_range_days: float = Field(default=366.0, gt=0, description="Widest from..to")
    energy_max_buckets: int = Field(
        default=10_000, ge=1, description="Most buckets one energy response may hold"
    )
    db_acquire_timeout_s: float = Field(
        default=5.0, gt=0, description="Wait for a pooled connection before answering 503"
    )
    ready_timeout_s: float = Field(default=2.0, gt=0, description="Budget of the /readyz ping")
    statement_timeout_ms: int = Field(
        default=15_000, ge=0, description="Longest SQL statement; 0 disables the limit"
    )
    retry_after_s: int = Field(default=5, ge=0, description="Retry-After sent with 503")
    access_log: bool = True
    graceful_shutdown_s: int = Field(default=10, ge=1, description="Drain time on SIGTERM")

    @model_validator(mode="after")
    def _default_within_max(self) -> ApiSettings:
        if self.readings_default_limit > self.readings_max_limit:
            raise ValueError("readings_default_limit must not exceed readings_max_limit")
        return self
