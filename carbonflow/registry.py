"""The registry tables (organisations, sites, assets, devices), filled from a factory layout.

Every write is an upsert on the table's key, so registering the same layout again changes
nothing, and registering an edited one updates names, places and meters in place.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from edge.simulator.factory import FactoryLayout, Machine

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
