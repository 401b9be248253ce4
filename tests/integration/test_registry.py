"""Registering a factory layout in the real database: idempotent upserts and a correct tree."""

from __future__ import annotations

from dataclasses import replace

import psycopg
import pytest

from carbonflow.registry import known_device_ids, upsert_layout
from edge.simulator.factory import FactoryLayout, demo_factory, small_factory

pytestmark = pytest.mark.integration


def _snapshot(conn: psycopg.Connection, org_id: str) -> dict[str, list[tuple[object, ...]]]:
    """Every registry row of one organisation (without created_at)."""
    queries = {
        "organisations": "SELECT org_id, name FROM organisations WHERE org_id = %(org)s",
        "sites": "SELECT site_id, org_id, name, timezone, country, grid_region FROM sites"
        " WHERE org_id = %(org)s ORDER BY site_id",
        "assets": "SELECT a.asset_id, a.site_id, a.parent_id, a.kind, a.name FROM assets a"
        " JOIN sites s USING (site_id) WHERE s.org_id = %(org)s ORDER BY asset_id",
        "devices": "SELECT d.device_id, d.asset_id, d.gateway_id, d.metric, d.unit,"
        " d.energy_carrier, d.description FROM devices d JOIN assets a USING (asset_id)"
        " JOIN sites s USING (site_id) WHERE s.org_id = %(org)s ORDER BY device_id",
    }
    return {table: conn.execute(sql, {"org": org_id}).fetchall() for table, sql in queries.items()}


@pytest.fixture
def layout(run_id: str) -> FactoryLayout:
    """A layout of its own per test run, so reruns and other tests never share rows."""
    return small_factory(30, prefix=f"reg-{run_id}", machines_per_line=4)


def test_upserting_a_layout_twice_changes_nothing(
    db_conn: psycopg.Connection, layout: FactoryLayout
) -> None:
    upsert_layout(db_conn, layout)
    first = _snapshot(db_conn, layout.organisation.org_id)
    upsert_layout(db_conn, layout)
    assert _snapshot(db_conn, layout.organisation.org_id) == first
    assert len(first["sites"]) == len(layout.sites)
    assert len(first["assets"]) == len(layout.areas) + len(layout.lines) + len(layout.machines)
    assert len(first["devices"]) == len(layout.machines) == 30


def test_assets_form_an_area_line_machine_tree_within_each_site(
    db_conn: psycopg.Connection,
) -> None:
    layout = demo_factory()
    upsert_layout(db_conn, layout)
    rows = _snapshot(db_conn, layout.organisation.org_id)["assets"]
    assets = {asset_id: (site, parent, kind) for asset_id, site, parent, kind, _ in rows}
    kinds = [kind for _, _, kind in assets.values()]
    assert kinds.count("area") == len(layout.sites)
    assert kinds.count("line") == len(layout.lines)
    assert kinds.count("machine") == len(layout.machines)
    expected_parent_kind = {"machine": "line", "line": "area"}
    for asset_id, (site, parent, kind) in assets.items():
        if kind == "area":
            assert parent is None, asset_id
            continue
        parent_site, _, parent_kind = assets[parent]
        assert parent_kind == expected_parent_kind[kind], asset_id
        assert parent_site == site, asset_id


def test_devices_point_at_their_machines_with_the_telemetry_metric(
    db_conn: psycopg.Connection,
) -> None:
    layout = demo_factory()
    upsert_layout(db_conn, layout)
    devices = _snapshot(db_conn, layout.organisation.org_id)["devices"]
    assert len(devices) == len(layout.machines)
    for device_id, asset_id, gateway_id, metric, unit, carrier, description in devices:
        machine = layout.machine(str(device_id))
        assert (asset_id, gateway_id) == (machine.asset_id, machine.gateway_id)
        assert (metric, unit, carrier) == ("active_power", "W", "electricity")
        assert machine.name in str(description)
    assert set(layout.devices()) <= known_device_ids(db_conn)


def test_an_edited_layout_updates_rows_in_place(
    db_conn: psycopg.Connection, layout: FactoryLayout
) -> None:
    upsert_layout(db_conn, layout)
    machine = layout.machines[0]
    renamed = replace(machine, name="Renamed machine", gateway_id="gw-moved")
    edited = replace(layout, machines=(renamed, *layout.machines[1:]))
    upsert_layout(db_conn, edited)
    snapshot = _snapshot(db_conn, layout.organisation.org_id)
    assert len(snapshot["devices"]) == len(layout.machines)
    row = next(r for r in snapshot["devices"] if r[0] == machine.device_id)
    assert row[2] == "gw-moved"
    assert "Renamed machine" in str(row[6])
    asset = next(r for r in snapshot["assets"] if r[0] == machine.asset_id)
    assert asset[4] == "Renamed machine"


def test_upsert_commits_on_a_connection_outside_autocommit(
    db_conn: psycopg.Connection, db_settings: object, run_id: str
) -> None:
    from carbonflow.config import DatabaseSettings

    assert isinstance(db_settings, DatabaseSettings)
    layout = small_factory(3, prefix=f"tx-{run_id}")
    with psycopg.connect(db_settings.conninfo()) as conn:
        upsert_layout(conn, layout)
    assert set(layout.devices()) <= known_device_ids(db_conn)
