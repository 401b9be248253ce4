"""Emissions per device and minute, with the factor version behind each figure, and hourly
rollups along the asset tree with daily and monthly views in each site's local time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
    -- How an energy interval was obtained.
    ALTER TABLE energy_1m ADD CONSTRAINT energy_1m_method_check
        CHECK (method IN ('power_trapezoid', 'counter_delta'));

    -- One figure per device, minute, scope, method and factor version. A restatement adds
    -- rows under the new version and marks the ones it replaces superseded: figures under
    -- the old version stay queryable. activity is what the factor was applied to (kWh, or a
    -- fuel quantity in activity_unit); coverage is the measured share of the minute.
    CREATE TABLE emissions_1m (
        device_id       text NOT NULL REFERENCES devices ON DELETE RESTRICT,
        ts              timestamptz NOT NULL CHECK (date_trunc('minute', ts) = ts),
        scope           text NOT NULL CHECK (scope IN ('scope1', 'scope2')),
        method          text NOT NULL CHECK (method ~ '^[a-z][a-z0-9_]*$'),
        factor_id       text NOT NULL,
        factor_version  integer NOT NULL,
        proxy           boolean NOT NULL,
        activity        double precision NOT NULL,
        activity_unit   text NOT NULL,
        kg_co2e         double precision NOT NULL,
        coverage        double precision NOT NULL CHECK (coverage >= 0 AND coverage <= 1),
        computed_at     timestamptz NOT NULL DEFAULT now(),
        superseded_at   timestamptz,
        PRIMARY KEY (device_id, ts, scope, method, factor_id, factor_version),
        FOREIGN KEY (factor_id, factor_version)
            REFERENCES emission_factor_versions (factor_id, version) ON DELETE RESTRICT
    );
    SELECT create_hypertable('emissions_1m', 'ts', chunk_time_interval => interval '7 days');
    CREATE INDEX emissions_1m_current_idx ON emissions_1m (device_id, ts)
        WHERE superseded_at IS NULL;
    CREATE INDEX emissions_1m_factor_idx ON emissions_1m (factor_id, factor_version, ts);

    -- The start of the local hour ts falls in: a real 60-minute span, aligned with the
    -- zone's offset (on the hour in whole-hour zones, on the half hour in Asia/Kolkata).
    -- Not time_bucket(..., zone): that maps both runs of the hour a DST change repeats onto
    -- one bucket start and loses one of them.
    CREATE FUNCTION local_hour(ts timestamptz, zone text) RETURNS timestamptz
    LANGUAGE sql STABLE AS $$
        SELECT time_bucket('1 hour', ts, timestamptz '2000-01-01 00:00:00+00' + make_interval(
            mins => (extract(epoch FROM (ts AT TIME ZONE zone) - (ts AT TIME ZONE 'UTC'))
                     / 60)::int % 60))
    $$;

    -- Energy and current emissions per node of the asset tree (assets at any depth, sites,
    -- organisations) per local hour (local_hour). devices: how many electricity meters are
    -- under the node; covered_minutes: their measured minutes, summed.
    CREATE TABLE rollup_hourly (
        node_kind                text NOT NULL
                                 CHECK (node_kind IN ('asset', 'site', 'organisation')),
        node_id                  text NOT NULL,
        hour                     timestamptz NOT NULL,
        kwh                      double precision NOT NULL,
        kg_co2e_scope1           double precision NOT NULL,
        kg_co2e_scope2_location  double precision NOT NULL,
        devices                  integer NOT NULL CHECK (devices >= 0),
        covered_minutes          double precision NOT NULL CHECK (covered_minutes >= 0),
        computed_at              timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (node_kind, node_id, hour)
    );
    SELECT create_hypertable('rollup_hourly', 'hour', chunk_time_interval => interval '90 days');

    -- The time zone each asset and site reports in (an organisation's days and months are
    -- the sum of its sites' local days and months).
    CREATE VIEW rollup_zones AS
        SELECT 'site'::text AS node_kind, site_id AS node_id, org_id, timezone FROM sites
        UNION ALL
        SELECT 'asset', a.asset_id, s.org_id, s.timezone
        FROM assets a JOIN sites s USING (site_id);

    CREATE FUNCTION rollup_local(period text)
    RETURNS TABLE (
        node_kind text, node_id text, period_start date, zone text, kwh double precision,
        kg_co2e_scope1 double precision, kg_co2e_scope2_location double precision,
        devices integer, covered_minutes double precision, expected_minutes double precision
    )
    LANGUAGE sql STABLE AS $$
        WITH local AS (
            SELECT r.node_kind, r.node_id, z.org_id, z.timezone,
                   date_trunc(period, r.hour AT TIME ZONE z.timezone)::date AS period_start,
                   r.kwh, r.kg_co2e_scope1, r.kg_co2e_scope2_location, r.devices,
                   r.covered_minutes
            FROM rollup_hourly r
            JOIN rollup_zones z ON z.node_kind = r.node_kind AND z.node_id = r.node_id
        ), nodes AS (
            SELECT node_kind, node_id, org_id, timezone, period_start,
                   sum(kwh) AS kwh, sum(kg_co2e_scope1) AS kg_co2e_scope1,
                   sum(kg_co2e_scope2_location) AS kg_co2e_scope2_location,
                   max(devices) AS devices, sum(covered_minutes) AS covered_minutes,
                   -- a local day has 23, 24 or 25 hours; a month, its days
                   max(devices) * extract(epoch FROM
                       ((period_start + ('1 ' || period)::interval)::timestamp
                            AT TIME ZONE timezone)
                       - (period_start::timestamp AT TIME ZONE timezone)) / 60.0
                       AS expected_minutes
            FROM local
            GROUP BY node_kind, node_id, org_id, timezone, period_start
        )
        SELECT node_kind, node_id, period_start, timezone, kwh, kg_co2e_scope1,
               kg_co2e_scope2_location, devices::integer, covered_minutes, expected_minutes
        FROM nodes
        UNION ALL
        SELECT 'organisation', org_id, period_start, NULL, sum(kwh), sum(kg_co2e_scope1),
               sum(kg_co2e_scope2_location), sum(devices)::integer, sum(covered_minutes),
               sum(expected_minutes)
        FROM nodes WHERE node_kind = 'site'
        GROUP BY org_id, period_start
    $$;

    -- Daily and monthly figures in each site's local calendar, with their completeness.
    CREATE VIEW rollup_daily AS
        SELECT node_kind, node_id, period_start AS day, zone, kwh, kg_co2e_scope1,
               kg_co2e_scope2_location, devices, covered_minutes, expected_minutes,
               least(covered_minutes / nullif(expected_minutes, 0), 1.0) AS coverage
        FROM rollup_local('day');
    CREATE VIEW rollup_monthly AS
        SELECT node_kind, node_id, period_start AS month, zone, kwh, kg_co2e_scope1,
               kg_co2e_scope2_location, devices, covered_minutes, expected_minutes,
               least(covered_minutes / nullif(expected_minutes, 0), 1.0) AS coverage
        FROM rollup_local('month');
    """)


def downgrade() -> None:
    op.execute("""
    DROP VIEW IF EXISTS rollup_monthly;
    DROP VIEW IF EXISTS rollup_daily;
    DROP FUNCTION IF EXISTS rollup_local(text);
    DROP VIEW IF EXISTS rollup_zones;
    DROP FUNCTION IF EXISTS local_hour(timestamptz, text);
    DROP TABLE IF EXISTS rollup_hourly;
    DROP TABLE IF EXISTS emissions_1m;
    ALTER TABLE energy_1m DROP CONSTRAINT IF EXISTS energy_1m_method_check;
    """)
