"""Device events: presence transitions and sequence gaps recorded by ingest.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- One row per thing that happened to an edge source: it came online, went offline, or
    -- skipped sequence numbers. Idempotent on its key, so redelivered events converge.
    CREATE TABLE device_events (
        ts           timestamptz NOT NULL,
        source_kind  text NOT NULL CHECK (source_kind IN
                         ('gateway', 'device', 'sparkplug_node', 'sparkplug_device')),
        source_id    text NOT NULL,
        event        text NOT NULL CHECK (event ~ '^[a-z][a-z0-9_]*$'),
        details      jsonb NOT NULL DEFAULT '{}'::jsonb,
        recorded_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (source_kind, source_id, event, ts)
    );
    SELECT create_hypertable('device_events', 'ts', chunk_time_interval => interval '30 days');
    CREATE INDEX device_events_source_idx ON device_events (source_kind, source_id, ts DESC);
    -- The last recorded presence of a source: a new online/offline is stored only if it
    -- changes that state or its session (details->>'session').
    CREATE INDEX device_events_presence_idx ON device_events (source_kind, source_id, recorded_at DESC)
        WHERE event IN ('online', 'offline');
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS device_events;")
