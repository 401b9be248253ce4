"""Our own PostgreSQL 15 cluster with TimescaleDB, in the state dir (not the system cluster).

The cluster runs as the ``postgres`` OS account (PostgreSQL refuses root). The stack itself
administers it as the ``postgres`` superuser over a Unix socket whose directory is private to
that account; applications connect over TCP on 127.0.0.1 as DatabaseSettings.user, which owns
its databases but is not a superuser. See the package docstring for how that user
authenticates.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import psycopg
from psycopg import sql

from carbonflow.config import DatabaseSettings, StackSettings
from carbonflow.errors import StackError
from carbonflow.mqtt_auth import store
from carbonflow.mqtt_auth.access import RegistrySnapshot
from carbonflow.stack.base import Service, require_running
from carbonflow.stack.probes import postgres_probe
from carbonflow.stack.process import RunAs, can_traverse, chown_tree, is_root, run
from carbonflow.stack.system import render, require_binary
from carbonflow.stack.timescaledb import PG_BIN, PG_MAJOR, ensure_timescaledb, installed_version

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"
SERVICE_ACCOUNT = "postgres"
# Databases the stack must never drop.
PROTECTED_DATABASES = frozenset({"postgres", "template0", "template1"})
# Linux limits a Unix socket path to 107 bytes.
MAX_SOCKET_PATH = 107


class PostgresService(Service):
    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
    stop_signal = signal.SIGINT
    stop_timeout_s = 60.0

    def __init__(self, stack: StackSettings, db: DatabaseSettings) -> None:
        self.db = db
        super().__init__(stack)

    @property
    def home(self) -> Path:
        return self.stack.state_dir / "postgres"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    def cmdline_marker(self) -> str:
        return "postgres"

    def cmdline_identity(self) -> str:
        return str(self.data_dir)

    def account(self) -> RunAs | None:
        """The OS account to switch to: only as root (otherwise we already are the server)."""
        return RunAs(SERVICE_ACCOUNT) if is_root() else None

    def install(self) -> None:
        require_binary(PG_BIN / "postgres", f"postgresql-{PG_MAJOR}", why="PostgreSQL")
        ensure_timescaledb(self.stack.cache_dir)

    def host_ports(self) -> list[tuple[str, int]]:
        return [(self.db.host, self.db.port)]

    def address(self) -> str:
        return f"postgresql://{self.db.user}@{self.db.host}:{self.db.port}/{self.db.name}"

    def describe(self) -> str:
        version = installed_version()
        return (
            f"PostgreSQL {PG_MAJOR}, TimescaleDB {version or 'not installed'}; data {self.data_dir}"
        )

    # -- setup -------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.db.user == SUPERUSER:
            raise StackError(
                f"DatabaseSettings.user must not be {SUPERUSER!r}: applications connect as an "
                "ordinary role that owns its databases"
            )
        socket_path = self.socket_dir / f".s.PGSQL.{self.db.port}"
        if len(str(socket_path)) > MAX_SOCKET_PATH:
            raise StackError(
                f"the PostgreSQL socket path {socket_path} is longer than {MAX_SOCKET_PATH} "
                "bytes; choose a shorter CARBONFLOW_STACK_STATE_DIR"
            )
        run_as = self.account()
        for folder in (self.home, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        if run_as is not None:
            chown_tree(self.home, run_as)
            if not can_traverse(run_as, self.home):
                raise StackError(
                    f"the {run_as.user!r} OS user cannot reach {self.home}: every parent "
                    "directory of the stack's state dir must be searchable by others (o+x); "
                    "choose another CARBONFLOW_STACK_STATE_DIR or fix the permissions"
                )
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(run_as)
        self._write_config(run_as)

    def _initdb(self, run_as: RunAs | None) -> None:
        logger.info("creating a PostgreSQL %d cluster in %s (initdb)…", PG_MAJOR, self.data_dir)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if run_as is not None:
            chown_tree(self.data_dir, run_as)
        run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
            what="initdb",
            cwd=self.home,
            run_as=run_as,
            env=run_as.env() if run_as is not None else None,
        )
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write(
                "\n# CarbonFlow local stack settings (rendered on every start).\n"
                "include 'carbonflow.conf'\n"
            )

    def _write_config(self, run_as: RunAs | None) -> None:
        render(
            "postgres/postgresql.conf.template",
            self.data_dir / "carbonflow.conf",
            port=self.db.port,
            socket_dir=self.socket_dir,
        )
        if self.db.password is None:
            # LOCAL DEVELOPMENT ONLY: without a configured password the application role
            # (never a superuser) is trusted on loopback; everyone else needs a password.
            trust = f"host    all       {self.db.user}   127.0.0.1/32      trust"
        else:
            trust = "# (a password is configured: the application role uses scram-sha-256)"
        render("postgres/pg_hba.conf.template", self.data_dir / "pg_hba.conf", app_trust_line=trust)
        if run_as is not None:
            for name in ("carbonflow.conf", "pg_hba.conf"):
                os.chown(self.data_dir / name, run_as.uid, run_as.gid)

    def start(self) -> None:
        run_as = self.account()
        self.process.start(
            [str(PG_BIN / "postgres"), "-D", str(self.data_dir)],
            cwd=self.home,
            run_as=run_as,
            env=run_as.env() if run_as is not None else None,
        )

    def refresh(self) -> None:
        # Settings may have changed since the server started (say a password was
        # configured): re-render pg_hba; after_ready has the server re-read it.
        self._write_config(self.account())

    # -- readiness and bootstrap ------------------------------------------------------------

    def superuser_conninfo(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host=str(self.socket_dir),
            port=self.db.port,
            user=SUPERUSER,
            dbname=dbname,
            application_name="carbonflow-stack",
            connect_timeout=5,
        )

    def _admin(self, dbname: str = "postgres") -> psycopg.Connection:
        try:
            return psycopg.connect(self.superuser_conninfo(dbname), autocommit=True)
        except psycopg.Error as exc:
            raise StackError(f"cannot connect to PostgreSQL as {SUPERUSER}: {exc}") from exc

    def probe(self) -> str:
        with self._admin() as conn:
            conn.execute("SELECT 1")
        return "accepting connections"

    def after_ready(self) -> None:
        try:
            with self._admin() as conn:
                conn.execute("SELECT pg_reload_conf()")
                self._ensure_role(conn)
            self.create_database(self.db.name)
        except psycopg.Error as exc:
            raise StackError(f"PostgreSQL setup failed: {exc}") from exc
        detail = postgres_probe(self.db.conninfo())
        logger.info("database %s ready for %s (%s)", self.db.name, self.db.user, detail)

    def _ensure_role(self, conn: psycopg.Connection) -> None:
        role = sql.Identifier(self.db.user)
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (self.db.user,)
        ).fetchone()
        if exists is None:
            logger.info("creating database role %s", self.db.user)
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        if self.db.password is not None:
            # Utility statements take no bind parameters: quote the literal client-side.
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                    role, sql.Literal(self.db.password.get_secret_value())
                )
            )

    def create_database(self, name: str) -> None:
        """Create database `name` owned by the application role, with TimescaleDB (idempotent)."""
        require_running(self)
        try:
            with self._admin() as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if exists is None:
                    logger.info("creating database %s owned by %s", name, self.db.user)
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(name), sql.Identifier(self.db.user)
                        )
                    )
            # The extension needs a superuser; the app role then owns its own tables.
            with self._admin(name) as conn, conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                # The job-history retention job is TSL code: in the Apache build it fails
                # every 6 hours with a license error (timescale/timescaledb#10191), and
                # alter_job() is TSL too. Unschedule it in the same transaction, before the
                # scheduler ever sees it. The history it prunes only records failed jobs.
                conn.execute(
                    "UPDATE _timescaledb_config.bgw_job SET scheduled = false"
                    " WHERE proc_schema = '_timescaledb_functions'"
                    " AND proc_name = 'policy_job_stat_history_retention' AND scheduled"
                )
        except psycopg.Error as exc:
            raise StackError(f"cannot create database {name}: {exc}") from exc

    def mqtt_registries(self) -> list[RegistrySnapshot]:
        """The MQTT identities of every database here that has the registry's credentials table.

        One broker serves them all (the demo's database and each test run's), so the broker's
        files are made from all of them. A database dropped meanwhile is skipped.
        """
        require_running(self)
        with self._admin() as conn:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
                    " ORDER BY datname"
                ).fetchall()
            ]
        snapshots = []
        for name in names:
            try:
                with psycopg.connect(self.superuser_conninfo(name), autocommit=True) as conn:
                    if store.has_credentials_table(conn):
                        snapshots.append(store.snapshot(conn, name))
            except psycopg.OperationalError as exc:
                logger.debug("skipping database %s: %s", name, exc)
        return snapshots

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists, disconnecting its sessions."""
        if name in PROTECTED_DATABASES:
            raise StackError(f"refusing to drop the system database {name}")
        require_running(self)
        try:
            with self._admin() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        except psycopg.Error as exc:
            raise StackError(f"cannot drop database {name}: {exc}") from exc
