"""The registry tables (organisations, sites, assets, devices), filled from a factory layout.

Every write is an upsert on the table's key, so registering the same layout again changes
nothing, and registering an edited one updates names, places and meters in place.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Self

import psycopg
from pydantic import BaseModel, ConfigDict, Field, model_validator

from carbonflow.errors import RegistryError
from edge.simulator.factory import FactoryLayout, Machine
from schemas.telemetry import METRIC_UNITS, Identifier, MetricName

logger = logging.getLogger(__name__)

_UPSERT_ORGANISATION = """
INSERT INTO organisations (org_id, name) VALUES (%s, %s)
ON CONFLICT (org_id) DO UPDATE SET name = EXCLUDED.name
"""

_UPSERT_SITE = """
INSERT INTO sites (site_id, org_id, name, timezone, country, grid_region)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (site_id) DO UPDATE SET
    org_id = EXCLUDED.org_id, name = EXCLUDED.name, timezone = EXCLUDED.timezone,
    country = EXCLUDED.country, grid_region = EXCLUDED.grid_region
"""

_UPSERT_ASSET = """
INSERT INTO assets (asset_id, site_id, parent_id, kind, name) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (asset_id) DO UPDATE SET
    site_id = EXCLUDED.site_id, parent_id = EXCLUDED.parent_id, kind = EXCLUDED.kind,
    name = EXCLUDED.name
"""

_UPSERT_DEVICE = """
INSERT INTO devices (device_id, asset_id, gateway_id, metric, unit, energy_carrier, description)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET
    asset_id = EXCLUDED.asset_id, gateway_id = EXCLUDED.gateway_id, metric = EXCLUDED.metric,
    unit = EXCLUDED.unit, energy_carrier = EXCLUDED.energy_carrier,
    description = EXCLUDED.description
"""


def _device_description(machine: Machine) -> str:
    return f"Main power meter of {machine.name} ({machine.kind.value.replace('_', ' ')})"


def upsert_layout(conn: psycopg.Connection[Any], layout: FactoryLayout) -> None:
    """Register the layout's organisation, sites, asset tree and devices in one transaction.

    Parents go before children (areas, then lines, then machines) for the foreign keys.
    Works on autocommit and non-autocommit connections alike.
    """
    org = layout.organisation
    assets: list[tuple[str, str, str | None, str, str]] = [
        (a.asset_id, a.site_id, None, "area", a.name) for a in layout.areas
    ]
    assets += [(ln.asset_id, ln.site_id, ln.area_id, "line", ln.name) for ln in layout.lines]
    assets += [(m.asset_id, m.site_id, m.line_id, "machine", m.name) for m in layout.machines]
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_UPSERT_ORGANISATION, (org.org_id, org.name))
        cur.executemany(
            _UPSERT_SITE,
            [
                (s.site_id, s.org_id, s.name, s.timezone, s.country, s.grid_region)
                for s in layout.sites
            ],
        )
        cur.executemany(_UPSERT_ASSET, assets)
        cur.executemany(
            _UPSERT_DEVICE,
            [
                (
                    m.device_id,
                    m.asset_id,
                    m.gateway_id,
                    m.metric,
                    m.unit,
                    m.energy_carrier,
                    _device_description(m),
                )
                for m in layout.machines
            ],
        )
    logger.info(
        "registered %s: %d sites, %d assets, %d devices",
        org.org_id,
        len(layout.sites),
        len(assets),
        len(layout.machines),
    )


def known_device_ids(conn: psycopg.Connection[Any]) -> set[str]:
    """Every registered device id."""
    with conn.cursor() as cur:
        cur.execute("SELECT device_id FROM devices")
        return {row[0] for row in cur.fetchall()}


class DeviceRegistration(BaseModel):
    """One meter to register under an existing asset, read through a gateway."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: Identifier
    asset_id: Identifier
    gateway_id: Identifier
    metric: MetricName = "active_power"
    unit: str = Field(default="", description="The metric's canonical unit; default: that unit")
    energy_carrier: Literal["electricity", "natural_gas", "diesel", "coal", "steam", "heat"] = (
        "electricity"
    )
    description: str = ""

    @model_validator(mode="after")
    def _canonical_unit(self) -> Self:
        canonical = METRIC_UNITS.get(self.metric)
        if canonical is None:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(METRIC_UNITS)}")
        if self.unit and self.unit != canonical:
            raise ValueError(f"{self.metric} is measured in {canonical}, not {self.unit}")
        return self

    @property
    def canonical_unit(self) -> str:
        return METRIC_UNITS[self.metric]


_INSERT_DEVICE = """
INSERT INTO devices (device_id, asset_id, gateway_id, metric, unit, energy_carrier, description)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (device_id) DO NOTHING
"""


def register_device(conn: psycopg.Connection[Any], device: DeviceRegistration) -> bool:
    """Register one device; True if added, False if it was already registered just so.

    Refuses (``RegistryError``) an unknown asset, and a device id already registered under
    another gateway or asset: moving a meter is a deliberate change, not a side effect.
    """
    values = (
        device.device_id,
        device.asset_id,
        device.gateway_id,
        device.metric,
        device.canonical_unit,
        device.energy_carrier,
        device.description,
    )
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_INSERT_DEVICE, values)
            if cur.rowcount == 1:
                logger.info(
                    "registered device %s under gateway %s", device.device_id, device.gateway_id
                )
                return True
            cur.execute(
                "SELECT gateway_id, asset_id FROM devices WHERE device_id = %s",
                (device.device_id,),
            )
            existing = cur.fetchone()
    except psycopg.errors.ForeignKeyViolation as exc:
        raise RegistryError(f"no asset {device.asset_id!r} is registered") from exc
    if existing is None:
        raise RegistryError(f"device {device.device_id} vanished while being registered")
    if existing != (device.gateway_id, device.asset_id):
        raise RegistryError(
            f"device {device.device_id} is already registered under gateway {existing[0]}"
            f" (asset {existing[1]})"
        )
    return False
