"""Presence contract v1: retained status messages of gateways and of the meters behind them.

A gateway publishes ``GatewayStatus`` retained at ``{root}/status/gateway/{gateway_id}``:
``online`` (its birth) right after every connect, and ``offline`` as its MQTT last will, so
the broker announces a gateway that vanished without a clean disconnect. A clean shutdown
publishes ``offline`` itself before disconnecting.

Per meter it publishes ``DeviceStatus`` retained at
``{root}/status/device/{gateway_id}/{device_id}`` whenever the meter starts or stops
answering polls. A dead gateway cannot speak for its meters; consumers treat its devices as
unknown while the gateway is offline.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.telemetry import Identifier


class PresenceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class GatewayStatus(BaseModel):
    """Retained birth / death of one gateway session."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    gateway_id: Identifier
    state: PresenceState
    session_id: Identifier = Field(description="The gateway session this status belongs to")
    ts: AwareDatetime = Field(
        description="When the gateway produced the status; for a last-will death, the time "
        "of the connect that registered the will (the broker sends it later)"
    )
    will: bool = Field(
        default=False, description="True on the last-will message the broker publishes"
    )
    devices: list[Identifier] = Field(
        default_factory=list, description="Devices this gateway polls (on birth)"
    )


class DeviceStatus(BaseModel):
    """Retained reachability of one meter, as its gateway sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    gateway_id: Identifier
    device_id: Identifier
    state: PresenceState
    session_id: Identifier
    ts: AwareDatetime = Field(description="When the gateway saw the change")
    reason: str | None = Field(
        default=None, max_length=500, description="Why the meter is offline, if it is"
    )
