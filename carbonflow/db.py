"""Database schema management through Alembic; the migrations live in infra/migrations/."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config

from carbonflow.config import REPO_ROOT, DatabaseSettings

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = REPO_ROOT / "infra" / "migrations"


def alembic_config(db: DatabaseSettings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on a '%' in the password.
    config.set_main_option("sqlalchemy.url", db.sqlalchemy_url().replace("%", "%%"))
    return config


def migrate(db: DatabaseSettings, revision: str = "head") -> None:
    """Upgrade the schema; at head, also load the reference data (idempotently)."""
    logger.info("migrating database %s on %s:%s to %s", db.name, db.host, db.port, revision)
    command.upgrade(alembic_config(db), revision)
    if revision == "head":
        seed_reference_data(db)


def seed_reference_data(db: DatabaseSettings) -> None:
    """Record the project's emission factors (version 1 of each) that are not there yet."""
    import psycopg

    from carbonflow.factors import store

    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        store.seed_from_file(conn)


def downgrade(db: DatabaseSettings, revision: str) -> None:
    command.downgrade(alembic_config(db), revision)
