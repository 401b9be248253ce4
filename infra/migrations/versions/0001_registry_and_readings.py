"""Registry (organisations, sites, assets, devices) and the readings / energy_1m hypertables.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    op.execute("""
    -- True when the name is an IANA time zone PostgreSQL knows (used by a CHECK on sites).
    CREATE FUNCTION is_valid_timezone(tz text) RETURNS boolean
    LANGUAGE plpgsql STABLE AS $$
    BEGIN
        PERFORM now() AT TIME ZONE tz;
        RETURN tz <> '' AND tz !~* '^(utc|gmt)?[+-]';
    EXCEPTION WHEN invalid_parameter_value THEN
        RETURN false;
    END $$;

    CREATE TABLE organisations (
        org_id      text PRIMARY KEY CHECK (org_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$'),
        name        text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE sites (
        site_id      text PRIMARY KEY CHECK (site_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$'),
        org_id       text NOT NULL REFERENCES organisations ON DELETE RESTRICT,
        name         text NOT NULL,
        timezone     text NOT NULL CHECK (is_valid_timezone(timezone)),
        country      char(2) NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
        grid_region  text NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX sites_org_idx ON sites (org_id);

    -- Assets form a tree per site: site area -> line -> machine (any depth).
    CREATE TABLE assets (
        asset_id    text PRIMARY KEY CHECK (asset_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$'),
        site_id     text NOT NULL REFERENCES sites ON DELETE RESTRICT,
        parent_id   text REFERENCES assets ON DELETE RESTRICT,
        kind        text NOT NULL CHECK (kind IN ('area', 'line', 'machine', 'utility')),
        name        text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        CHECK (parent_id IS DISTINCT FROM asset_id)
    );
    CREATE INDEX assets_site_idx ON assets (site_id);
    CREATE INDEX assets_parent_idx ON assets (parent_id);

    CREATE TABLE devices (
        device_id       text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$'),
        asset_id        text NOT NULL REFERENCES assets ON DELETE RESTRICT,
        gateway_id      text NOT NULL,
        metric          text NOT NULL,
        unit            text NOT NULL,
        energy_carrier  text NOT NULL CHECK (energy_carrier IN
                            ('electricity', 'natural_gas', 'diesel', 'coal', 'steam', 'heat')),
        description     text NOT NULL DEFAULT '',
        created_at      timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX devices_asset_idx ON devices (asset_id);

    -- Raw readings, exactly once per (device, metric, ts) whatever upstream redelivers.
    CREATE TABLE readings (
        device_id    text NOT NULL REFERENCES devices ON DELETE RESTRICT,
        metric       text NOT NULL,
        ts           timestamptz NOT NULL,
        value        double precision NOT NULL,
        quality      text NOT NULL DEFAULT 'good' CHECK (quality IN ('good', 'uncertain', 'bad')),
        ingested_at  timestamptz NOT NULL,
        stored_at    timestamptz NOT NULL DEFAULT now(),
        UNIQUE (device_id, metric, ts)
    );
    SELECT create_hypertable('readings', 'ts', chunk_time_interval => interval '1 day');

    -- Energy per device per minute, from power by trapezoid integration.
    -- coverage: share of the minute bridged by samples no further apart than the gap limit.
    CREATE TABLE energy_1m (
        device_id     text NOT NULL REFERENCES devices ON DELETE RESTRICT,
        ts            timestamptz NOT NULL CHECK (date_trunc('minute', ts) = ts),
        kwh           double precision NOT NULL,
        sample_count  integer NOT NULL CHECK (sample_count >= 0),
        coverage      double precision NOT NULL CHECK (coverage >= 0 AND coverage <= 1),
        method        text NOT NULL DEFAULT 'power_trapezoid',
        computed_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (device_id, ts)
    );
    SELECT create_hypertable('energy_1m', 'ts', chunk_time_interval => interval '7 days');
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS energy_1m;
    DROP TABLE IF EXISTS readings;
    DROP TABLE IF EXISTS devices;
    DROP TABLE IF EXISTS assets;
    DROP TABLE IF EXISTS sites;
    DROP TABLE IF EXISTS organisations;
    DROP FUNCTION IF EXISTS is_valid_timezone(text);
    """)
