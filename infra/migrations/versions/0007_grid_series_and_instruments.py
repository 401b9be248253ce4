"""Hourly grid-intensity series and contractual instruments, and market-based Scope 2 per
site and local month.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
    -- An hourly series is a factor of the registry (variant 'hourly', unit kgCO2e/kWh) and
    -- each load of it a version of that factor: emissions_1m rows priced by the series keep
    -- their foreign key to emission_factor_versions, and lineage reads the same for every
    -- method. The version's value is the mean of its hours; the hours themselves live here.
    CREATE TABLE grid_intensity_series (
        series_id    text NOT NULL,
        version      integer NOT NULL,
        region_code  text NOT NULL,
        source       text NOT NULL CHECK (source <> ''),
        file_name    text NOT NULL DEFAULT '',
        first_hour   timestamptz NOT NULL CHECK (extract(epoch FROM first_hour)::bigint % 3600 = 0),
        end_hour     timestamptz NOT NULL CHECK (extract(epoch FROM end_hour)::bigint % 3600 = 0),
        hours        integer NOT NULL CHECK (hours > 0),
        gaps         jsonb NOT NULL DEFAULT '[]',  -- [{"first_missing", "last_missing"}]
        loaded_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (series_id, version),
        FOREIGN KEY (series_id, version)
            REFERENCES emission_factor_versions (factor_id, version) ON DELETE RESTRICT,
        CHECK (end_hour > first_hour)
    );
    CREATE INDEX grid_intensity_series_region_idx
        ON grid_intensity_series (region_code, first_hour, end_hour);

    CREATE TABLE grid_intensity_hours (
        series_id        text NOT NULL,
        version          integer NOT NULL,
        hour_start       timestamptz NOT NULL
                         CHECK (extract(epoch FROM hour_start)::bigint % 3600 = 0),
        kg_co2e_per_kwh  double precision NOT NULL
                         CHECK (kg_co2e_per_kwh >= 0 AND kg_co2e_per_kwh <> 'NaN'),
        source           text NOT NULL CHECK (source <> ''),  -- the row's own source column
        PRIMARY KEY (series_id, version, hour_start),
        FOREIGN KEY (series_id, version)
            REFERENCES grid_intensity_series ON DELETE RESTRICT
    );

    CREATE TRIGGER grid_intensity_series_immutable
        BEFORE UPDATE OR DELETE ON grid_intensity_series
        FOR EACH ROW EXECUTE FUNCTION emission_factor_history_is_immutable();
    CREATE TRIGGER grid_intensity_hours_immutable
        BEFORE UPDATE OR DELETE ON grid_intensity_hours
        FOR EACH ROW EXECUTE FUNCTION emission_factor_history_is_immutable();

    -- A version of an hourly factor without its hours would price nothing and say nothing:
    -- such a version (e.g. a plain restatement) is refused when its transaction commits.
    CREATE FUNCTION hourly_factor_version_has_hours() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM emission_factors
                   WHERE factor_id = NEW.factor_id AND variant = 'hourly')
           AND NOT EXISTS (SELECT 1 FROM grid_intensity_series
                           WHERE series_id = NEW.factor_id AND version = NEW.version) THEN
            RAISE EXCEPTION '% v% is an hourly series: load a new file instead of restating it',
                NEW.factor_id, NEW.version USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NULL;
    END $$;
    CREATE CONSTRAINT TRIGGER emission_factor_versions_hourly_has_hours
        AFTER INSERT ON emission_factor_versions
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION hourly_factor_version_has_hours();

    -- Contractual instruments for market-based Scope 2: energy attribute certificates, PPAs,
    -- supplier-specific factors. Held by a site, or by an organisation for all its sites.
    -- period: calendar dates [from, until) in the holder's sites' local time. volume_kwh NULL
    -- (suppliers only): all consumption in the period. Versions, like factors: a correction
    -- is a new version, never an update.
    CREATE TABLE contractual_instruments (
        instrument_id    text NOT NULL CHECK (instrument_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$'),
        version          integer NOT NULL CHECK (version >= 1),
        org_id           text REFERENCES organisations ON DELETE RESTRICT,
        site_id          text REFERENCES sites ON DELETE RESTRICT,
        kind             text NOT NULL CHECK (kind IN ('certificate', 'ppa', 'supplier')),
        period           daterange NOT NULL CHECK (NOT isempty(period)
                             AND NOT lower_inf(period) AND NOT upper_inf(period)),
        volume_kwh       numeric CHECK (volume_kwh >= 0 AND volume_kwh <> 'NaN'),
        kg_co2e_per_kwh  numeric NOT NULL
                         CHECK (kg_co2e_per_kwh >= 0 AND kg_co2e_per_kwh <> 'NaN'),
        evidence         text NOT NULL CHECK (evidence <> ''),
        reason           text NOT NULL CHECK (reason <> ''),
        recorded_at      timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (instrument_id, version),
        CHECK ((org_id IS NULL) <> (site_id IS NULL)),
        CHECK (volume_kwh IS NOT NULL OR kind = 'supplier')
    );
    CREATE INDEX contractual_instruments_site_idx ON contractual_instruments (site_id);
    CREATE INDEX contractual_instruments_org_idx ON contractual_instruments (org_id);
    CREATE TRIGGER contractual_instruments_immutable
        BEFORE UPDATE OR DELETE ON contractual_instruments
        FOR EACH ROW EXECUTE FUNCTION emission_factor_history_is_immutable();

    -- Market-based Scope 2 of a site's electricity in one local month. A recomputation that
    -- changes the figure adds a version and marks the one it replaces superseded.
    CREATE TABLE emissions_market_monthly (
        site_id                  text NOT NULL REFERENCES sites ON DELETE RESTRICT,
        month                    date NOT NULL CHECK (extract(day FROM month) = 1),
        version                  integer NOT NULL CHECK (version >= 1),
        kwh                      double precision NOT NULL CHECK (kwh >= 0),
        kg_co2e                  double precision NOT NULL CHECK (kg_co2e >= 0),
        instrument_kwh           double precision NOT NULL CHECK (instrument_kwh >= 0),
        residual_kwh             double precision NOT NULL CHECK (residual_kwh >= 0),
        residual_kg_co2e         double precision NOT NULL CHECK (residual_kg_co2e >= 0),
        residual_factor_id       text NOT NULL,
        residual_factor_version  integer NOT NULL,
        residual_basis           text NOT NULL CHECK (residual_basis IN
                                     ('residual_mix', 'excl_market_non_fossil', 'location_grid')),
        residual_proxy           boolean NOT NULL,
        residual_note            text NOT NULL,
        coverage                 double precision NOT NULL CHECK (coverage >= 0 AND coverage <= 1),
        computed_at              timestamptz NOT NULL DEFAULT now(),
        superseded_at            timestamptz,
        PRIMARY KEY (site_id, month, version),
        FOREIGN KEY (residual_factor_id, residual_factor_version)
            REFERENCES emission_factor_versions (factor_id, version) ON DELETE RESTRICT
    );
    CREATE UNIQUE INDEX emissions_market_monthly_current_idx
        ON emissions_market_monthly (site_id, month) WHERE superseded_at IS NULL;

    -- kWh of the month each instrument covered (kg_co2e: under the instrument's factor).
    CREATE TABLE emissions_market_allocations (
        site_id             text NOT NULL,
        month               date NOT NULL,
        version             integer NOT NULL,
        instrument_id       text NOT NULL,
        instrument_version  integer NOT NULL,
        kind                text NOT NULL,
        kwh                 double precision NOT NULL CHECK (kwh >= 0),
        kg_co2e             double precision NOT NULL CHECK (kg_co2e >= 0),
        PRIMARY KEY (site_id, month, version, instrument_id, instrument_version),
        FOREIGN KEY (site_id, month, version)
            REFERENCES emissions_market_monthly ON DELETE RESTRICT,
        FOREIGN KEY (instrument_id, instrument_version)
            REFERENCES contractual_instruments (instrument_id, version) ON DELETE RESTRICT
    );
    CREATE INDEX emissions_market_allocations_instrument_idx
        ON emissions_market_allocations (instrument_id, instrument_version);

    -- A market figure is never changed: the only update is marking it superseded, once.
    CREATE FUNCTION emissions_market_monthly_only_supersede() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND OLD.superseded_at IS NULL AND NEW.superseded_at IS NOT NULL
           AND (to_jsonb(NEW) - 'superseded_at') = (to_jsonb(OLD) - 'superseded_at') THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION '% of % is not allowed: recompute the month as a new version',
            TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
    END $$;
    CREATE TRIGGER emissions_market_monthly_immutable
        BEFORE UPDATE OR DELETE ON emissions_market_monthly
        FOR EACH ROW EXECUTE FUNCTION emissions_market_monthly_only_supersede();
    CREATE TRIGGER emissions_market_allocations_immutable
        BEFORE UPDATE OR DELETE ON emissions_market_allocations
        FOR EACH ROW EXECUTE FUNCTION emission_factor_history_is_immutable();
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS emissions_market_allocations;
    DROP TABLE IF EXISTS emissions_market_monthly;
    DROP FUNCTION IF EXISTS emissions_market_monthly_only_supersede();
    DROP TABLE IF EXISTS contractual_instruments;
    DROP TRIGGER IF EXISTS emission_factor_versions_hourly_has_hours
        ON emission_factor_versions;
    DROP FUNCTION IF EXISTS hourly_factor_version_has_hours();
    DROP TABLE IF EXISTS grid_intensity_hours;
    DROP TABLE IF EXISTS grid_intensity_series;
    """)
