"""Each organisation's GWP set for Scope 1 CH4 and N2O; a default for fuel-mass meters.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
    -- The IPCC assessment whose 100-year GWPs turn an organisation's CH4 and N2O from fuel
    -- combustion into CO2e (IPCC Scope 1 method). AR6 by default, as the GHG Protocol asks
    -- of new inventories; an organisation still reporting on AR5 sets it explicitly.
    ALTER TABLE organisations
        ADD COLUMN gwp_set text NOT NULL DEFAULT 'AR6' CHECK (gwp_set IN ('AR5', 'AR6'));

    -- Fuel by mass (fuel_mass, kg): as generous as the other defaults.
    INSERT INTO counter_defaults (metric, unit, max_rate_per_s, resolution, note)
    VALUES ('fuel_mass', 'kg', 10e3 / 3600.0, 0, '10 t/h')
    ON CONFLICT (metric) DO NOTHING;
    """)


def downgrade() -> None:
    op.execute("""
    DELETE FROM counter_defaults WHERE metric = 'fuel_mass';
    ALTER TABLE organisations DROP COLUMN IF EXISTS gwp_set;
    """)
