"""MQTT credentials: who may connect to the broker, as what role.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(r"""
    -- One MQTT identity per row. A gateway's username is its gateway id, and it may publish
    -- for the devices registered under that gateway_id; a service is a platform component.
    -- Only the hash is stored, in Mosquitto's password-file format as mosquitto_passwd
    -- writes it. Revoking keeps the row (and when); issuing again replaces hash and times.
    CREATE TABLE mqtt_credentials (
        username       text PRIMARY KEY
                       CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$' AND length(username) <= 64),
        role           text NOT NULL CHECK (role IN ('gateway', 'service')),
        password_hash  text NOT NULL CHECK (password_hash ~ '^\$[67]\$[A-Za-z0-9+/=$]+$'),
        issued_at      timestamptz NOT NULL DEFAULT now(),
        revoked_at     timestamptz,
        CHECK (revoked_at IS NULL OR revoked_at >= issued_at)
    );
    -- The broker's ACL lists each gateway's devices.
    CREATE INDEX devices_gateway_idx ON devices (gateway_id);
    """)


def downgrade() -> None:
    op.execute("""
    DROP INDEX IF EXISTS devices_gateway_idx;
    DROP TABLE IF EXISTS mqtt_credentials;
    """)
