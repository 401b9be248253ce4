"""Emission factors: effective-dated, versioned; a restatement adds a version.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
    -- What a factor is: its identity and lookup keys, fixed for all its versions.
    -- GWP values are factors too (parameter 'gwp', carrier 'none', gas key, gwp_set AR5|AR6),
    -- so an emissions row can name the GWP version it used like any other factor.
    CREATE TABLE emission_factors (
        factor_id     text PRIMARY KEY CHECK (factor_id ~ '^[A-Z0-9][A-Z0-9_]*$'),
        scope         text NOT NULL CHECK (scope IN ('scope1', 'scope2', 'scope3', 'pcf', 'all')),
        category      text NOT NULL
                      CHECK (category IN ('grid_electricity', 'fuel_combustion', 'gwp')),
        region_code   text NOT NULL
                      CHECK (region_code ~ '^([A-Z]{2}(-[A-Z][A-Za-z0-9]*)?|GLOBAL|EU27)$'),
        carrier       text NOT NULL CHECK (carrier ~ '^[a-z][a-z0-9_]*$'),
        parameter     text NOT NULL CHECK (parameter IN
                          ('emission_factor', 'ncv', 'carbon_content', 'oxidation_fraction', 'gwp')),
        gas           text NOT NULL CHECK (gas ~ '^[A-Za-z0-9_]+$'),
        variant       text NOT NULL CHECK (variant ~ '^[a-z][a-z0-9_]*$'),
        gwp_set       text NOT NULL DEFAULT '' CHECK (gwp_set IN ('', 'AR5', 'AR6')),
        unit          text NOT NULL,  -- canonical unit of every version's value
        region_label  text NOT NULL,  -- as published
        fuel_label    text NOT NULL,
        gas_label     text NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now(),
        CHECK ((parameter = 'gwp') = (gwp_set <> ''))
    );
    CREATE INDEX emission_factors_lookup_idx
        ON emission_factors (carrier, parameter, gas, region_code);

    -- Every version ever recorded. valid is a half-open range of calendar dates
    -- [valid_from, valid_until); an open end means unknown / until further notice.
    -- value is in the factor's canonical unit; source_value/source_unit as published.
    CREATE TABLE emission_factor_versions (
        factor_id      text NOT NULL REFERENCES emission_factors ON DELETE RESTRICT,
        version        integer NOT NULL CHECK (version >= 1),
        value          numeric NOT NULL CHECK (value >= 0 AND value <> 'NaN'),
        source_value   numeric NOT NULL CHECK (source_value <> 'NaN'),
        source_unit    text NOT NULL CHECK (source_unit <> ''),
        valid          daterange NOT NULL CHECK (NOT isempty(valid)),
        source         text NOT NULL CHECK (source <> ''),
        source_detail  text NOT NULL DEFAULT '',
        reason         text NOT NULL CHECK (reason <> ''),
        recorded_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (factor_id, version)
    );

    -- History is never rewritten: a version, once recorded, is neither changed nor removed,
    -- and a factor's identity never changes under its versions.
    CREATE FUNCTION emission_factor_history_is_immutable() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% of % is not allowed: restate the factor as a new version',
            TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
    END $$;
    CREATE TRIGGER emission_factor_versions_immutable
        BEFORE UPDATE OR DELETE ON emission_factor_versions
        FOR EACH ROW EXECUTE FUNCTION emission_factor_history_is_immutable();
    CREATE TRIGGER emission_factors_immutable
        BEFORE UPDATE OR DELETE ON emission_factors
        FOR EACH ROW EXECUTE FUNCTION emission_factor_history_is_immutable();
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE IF EXISTS emission_factor_versions;
    DROP TABLE IF EXISTS emission_factors;
    DROP FUNCTION IF EXISTS emission_factor_history_is_immutable();
    """)
