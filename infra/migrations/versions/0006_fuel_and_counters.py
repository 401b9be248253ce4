"""Fuel quantities per device and minute from cumulative counters, how each device's counter
register behaves, and the full factor lineage of every emissions row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
    -- Fuel burnt per device per minute, from the deltas of a cumulative fuel meter
    -- (gas_volume). quantity is in the register's unit (unit); coverage is the share of the
    -- minute bridged by counted pairs of readings.
    CREATE TABLE fuel_1m (
        device_id     text NOT NULL REFERENCES devices ON DELETE RESTRICT,
        ts            timestamptz NOT NULL CHECK (date_trunc('minute', ts) = ts),
        quantity      double precision NOT NULL CHECK (quantity >= 0),
        unit          text NOT NULL,
        method        text NOT NULL CHECK (method IN ('counter_delta')),
        sample_count  integer NOT NULL CHECK (sample_count >= 0),
        coverage      double precision NOT NULL CHECK (coverage >= 0 AND coverage <= 1),
        computed_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (device_id, ts)
    );
    SELECT create_hypertable('fuel_1m', 'ts', chunk_time_interval => interval '7 days');

    -- How fast a cumulative register of each metric may count when its device says nothing
    -- itself: a rise faster than max_rate_per_s (in the metric's unit per second; NULL: no
    -- limit) is rejected as impossible. Generous on purpose: it catches corrupt values, not
    -- a busy plant. Edit a row to change the default for every device without its own.
    CREATE TABLE counter_defaults (
        metric          text PRIMARY KEY,
        unit            text NOT NULL,
        max_rate_per_s  double precision CHECK (max_rate_per_s > 0),
        resolution      double precision NOT NULL DEFAULT 0 CHECK (resolution >= 0),
        note            text NOT NULL DEFAULT ''
    );
    INSERT INTO counter_defaults (metric, unit, max_rate_per_s, resolution, note) VALUES
        ('active_energy_import', 'Wh', 10e6 / 3600.0, 0, '10 MW'),
        ('gas_volume', 'm3', 10e3 / 3600.0, 0, '10,000 m3/h');

    -- One device's register, where it differs from its metric's default (NULL: the default).
    -- modulus: the value at which the register wraps to zero (its maximum + 1; NULL: never
    -- wraps); resolution: its smallest step, by which a pair may exceed the rate limit.
    -- All in the unit of the device's metric.
    CREATE TABLE device_counters (
        device_id       text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
        modulus         double precision CHECK (modulus > 0),
        max_rate_per_s  double precision CHECK (max_rate_per_s > 0),
        resolution      double precision CHECK (resolution >= 0),
        note            text NOT NULL DEFAULT '',
        updated_at      timestamptz NOT NULL DEFAULT now()
    );

    -- Every factor version behind a figure, as [{"factor_id": ..., "version": ...}, ...]
    -- sorted by factor id: one entry for a grid factor, three for China's Scope 1 method
    -- (calorific value, carbon content, oxidation). factor_id/factor_version stay the row's
    -- primary factor and always appear in the lineage. The lineage is part of the key, so a
    -- restatement of any one of the factors adds rows and keeps the figures it replaces.
    ALTER TABLE emissions_1m ADD COLUMN lineage jsonb;
    UPDATE emissions_1m
       SET lineage = jsonb_build_array(
               jsonb_build_object('factor_id', factor_id, 'version', factor_version));
    ALTER TABLE emissions_1m ALTER COLUMN lineage SET NOT NULL;
    ALTER TABLE emissions_1m ADD CONSTRAINT emissions_1m_lineage_check CHECK (
        jsonb_typeof(lineage) = 'array'
        AND lineage @> jsonb_build_array(
                jsonb_build_object('factor_id', factor_id, 'version', factor_version)));
    ALTER TABLE emissions_1m DROP CONSTRAINT emissions_1m_pkey;
    ALTER TABLE emissions_1m ADD PRIMARY KEY
        (device_id, ts, scope, method, factor_id, factor_version, lineage);
    -- Which figures used a given factor version: lineage @> '[{"factor_id": .., "version": ..}]'.
    CREATE INDEX emissions_1m_lineage_idx ON emissions_1m USING gin (lineage jsonb_path_ops);
    """)


def downgrade() -> None:
    op.execute("""
    DROP INDEX IF EXISTS emissions_1m_lineage_idx;
    -- Without the lineage in the key, only one figure per primary factor version can stay:
    -- the current one (or the latest superseded one).
    DELETE FROM emissions_1m a
    USING emissions_1m b
    WHERE (a.device_id, a.ts, a.scope, a.method, a.factor_id, a.factor_version)
          = (b.device_id, b.ts, b.scope, b.method, b.factor_id, b.factor_version)
      AND a.lineage <> b.lineage
      AND (a.superseded_at IS NOT NULL AND (b.superseded_at IS NULL
           OR b.superseded_at > a.superseded_at));
    ALTER TABLE emissions_1m DROP CONSTRAINT IF EXISTS emissions_1m_pkey;
    ALTER TABLE emissions_1m ADD PRIMARY KEY
        (device_id, ts, scope, method, factor_id, factor_version);
    ALTER TABLE emissions_1m DROP CONSTRAINT IF EXISTS emissions_1m_lineage_check;
    ALTER TABLE emissions_1m DROP COLUMN IF EXISTS lineage;
    DROP TABLE IF EXISTS device_counters;
    DROP TABLE IF EXISTS counter_defaults;
    DROP TABLE IF EXISTS fuel_1m;
    """)
