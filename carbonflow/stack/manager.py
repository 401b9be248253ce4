"""The Stack: every local service installed, started, probed and stopped together."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg
from dotenv import dotenv_values
from pydantic import SecretStr

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings
from carbonflow.errors import CredentialError, StackError
from carbonflow.files import write_private
from carbonflow.mqtt_auth import store
from carbonflow.mqtt_auth.access import BrokerAccess, Role, merge
from carbonflow.stack import kafka_admin
from carbonflow.stack.base import Service, ServiceStatus
from carbonflow.stack.kafka import KafkaService
from carbonflow.stack.mosquitto import MosquittoService
from carbonflow.stack.postgres import PostgresService
from carbonflow.stack.probes import BrokerRefusedError, mqtt_probe
from carbonflow.stack.process import file_lock

logger = logging.getLogger(__name__)

# Written into a state dir the stack created, so reset never deletes a directory it does
# not own (say a mistyped CARBONFLOW_STACK_STATE_DIR).
STATE_MARKER = ".carbonflow-stack"
LOCK_FILE = ".lock"
# The platform services' MQTT identity (ingest reads what gateways publish).
SERVICE_IDENTITY = "ingest"
USERNAME_VAR = "CARBONFLOW_MQTT_USERNAME"
PASSWORD_VAR = "CARBONFLOW_MQTT_PASSWORD"  # noqa: S105 - the variable's name, not a password


class Stack:
    """Mosquitto, PostgreSQL + TimescaleDB and Kafka, installed and run from one state dir."""

    def __init__(
        self,
        *,
        stack: StackSettings | None = None,
        mqtt: MqttSettings | None = None,
        kafka: KafkaSettings | None = None,
        db: DatabaseSettings | None = None,
    ) -> None:
        settings = stack or StackSettings()
        # Absolute paths: they end up in config files and in the services' command lines.
        self.settings = settings.model_copy(
            update={
                "state_dir": settings.state_dir.expanduser().resolve(),
                "cache_dir": settings.cache_dir.expanduser().resolve(),
            }
        )
        self.mqtt = mqtt or MqttSettings()
        self.kafka = kafka or KafkaSettings()
        self.db = db or DatabaseSettings()
        self.mosquitto = MosquittoService(self.settings, self.mqtt)
        self.postgres = PostgresService(self.settings, self.db)
        self.kafka_service = KafkaService(self.settings, self.kafka)
        # Start order; down goes in reverse.
        self.services: list[Service] = [self.mosquitto, self.postgres, self.kafka_service]

    def _lock(self) -> AbstractContextManager[None]:
        return file_lock(self.settings.state_dir / LOCK_FILE)

    # -- lifecycle ------------------------------------------------------------------------------

    def up(self) -> list[ServiceStatus]:
        """Install what is missing, start what is not running, wait until every service answers.

        Idempotent: with everything running it only probes and re-checks setup (seconds).
        """
        begun = time.monotonic()
        self._check_state_dir()
        with self._lock():
            self._claim_state_dir()
            # Stacks with different state dirs share the install cache (and /usr/lib/postgresql).
            with file_lock(self.settings.cache_dir / LOCK_FILE):
                for service in self.services:
                    step = time.monotonic()
                    service.install()
                    logger.debug(
                        "%s install check took %.1fs", service.name, time.monotonic() - step
                    )
            # Start everything first, then wait: the JVM boots while PostgreSQL does.
            for service in self.services:
                service.ensure_started()
            for service in self.services:
                service.wait_ready(self.settings.startup_timeout_s)
            for service in self.services:
                service.after_ready()
            self._secure_mqtt()
        logger.info(
            "stack is up (%.1fs); state in %s", time.monotonic() - begun, self.settings.state_dir
        )
        return self.status()

    def down(self) -> list[str]:
        """Stop every service the stack started; return the names of those stopped."""
        if not self.settings.state_dir.exists():
            logger.info("nothing was running")
            return []
        with self._lock():
            return self._stop_all()

    def _stop_all(self) -> list[str]:
        # Signal them all first so they shut down in parallel, then wait for each.
        signalled: list[tuple[Service, int]] = []
        for service in reversed(self.services):
            pid = service.process.send_signal(service.stop_signal)
            if pid is not None:
                logger.info("stopping %s (pid %d)…", service.name, pid)
                signalled.append((service, pid))
        for service, pid in signalled:
            service.process.finish_stop(pid, service.stop_timeout_s)
        stopped = [service.name for service, _ in signalled]
        logger.info(
            "stopped %s", ", ".join(stopped) if stopped else "nothing (nothing was running)"
        )
        return stopped

    def status(self) -> list[ServiceStatus]:
        return [service.status() for service in self.services]

    def reset(self) -> None:
        """down, then delete the state dir (data, logs, pid files); the install cache stays."""
        state_dir = self.settings.state_dir
        if not state_dir.exists():
            return
        self._check_state_dir()
        # One lock around stop and delete: an `up` waiting meanwhile starts from scratch
        # afterwards instead of having its fresh files deleted under it.
        with self._lock():
            self._stop_all()
            logger.info("deleting %s", state_dir)
            try:
                shutil.rmtree(state_dir)
            except OSError as exc:
                raise StackError(f"cannot delete {state_dir}: {exc}") from exc

    def _check_state_dir(self) -> None:
        """Refuse a state dir that holds files the stack did not put there."""
        state_dir = self.settings.state_dir
        if not state_dir.exists() or (state_dir / STATE_MARKER).exists():
            return
        if any(entry.name != LOCK_FILE for entry in state_dir.iterdir()):
            raise StackError(
                f"{state_dir} exists and was not created by the carbonflow stack; "
                "choose an empty or new CARBONFLOW_STACK_STATE_DIR"
            )

    def _claim_state_dir(self) -> None:
        self._check_state_dir()
        marker = self.settings.state_dir / STATE_MARKER
        if not marker.exists():
            marker.write_text(
                "State of the CarbonFlow local stack; `carbonflow stack reset` deletes it.\n"
            )

    # -- MQTT identities --------------------------------------------------------------------------

    @property
    def services_env(self) -> Path:
        """The platform service identity's credentials, as environment variables (0600)."""
        return self.mosquitto.client_dir / "services.env"

    def _secure_mqtt(self) -> None:
        """Migrate the main database (the registry), issue the service identity if it has
        none, and apply every registry's identities to the broker."""
        from carbonflow import db

        db.migrate(self.db)
        try:
            self._ensure_service_identity()
            self.sync_mqtt_access()
            try:
                mqtt_probe(self.service_mqtt_settings())
            except BrokerRefusedError:
                # Issued anew elsewhere (say `carbonflow mqtt issue ingest --role service`):
                # the password in services.env is stale.
                logger.info(
                    "the service identity in %s is refused; issuing it anew", self.services_env
                )
                self._ensure_service_identity(renew=True)
                self.sync_mqtt_access()
        except CredentialError as exc:
            raise StackError(f"securing the MQTT broker failed: {exc}") from exc

    def _ensure_service_identity(self, *, renew: bool = False) -> None:
        known = dotenv_values(self.services_env) if self.services_env.exists() else {}
        try:
            with psycopg.connect(self.db.conninfo(), autocommit=True) as conn:
                role = store.active_role(conn, SERVICE_IDENTITY)
                if (
                    not renew
                    and role is Role.SERVICE
                    and known.get(USERNAME_VAR) == SERVICE_IDENTITY
                    and known.get(PASSWORD_VAR)
                ):
                    return
                password = store.issue(conn, SERVICE_IDENTITY, Role.SERVICE)
        except psycopg.Error as exc:
            raise StackError(f"cannot issue the MQTT service identity: {exc}") from exc
        write_private(
            self.services_env,
            f"{USERNAME_VAR}={SERVICE_IDENTITY}\n{PASSWORD_VAR}={password.get_secret_value()}\n",
        )
        logger.info(
            "issued the MQTT identity %r for platform services: %s",
            SERVICE_IDENTITY,
            self.services_env,
        )

    def service_mqtt_settings(self, settings: MqttSettings | None = None) -> MqttSettings:
        """``settings`` (default: the stack's) as the platform service identity."""
        known = dotenv_values(self.services_env) if self.services_env.exists() else {}
        username, password = known.get(USERNAME_VAR), known.get(PASSWORD_VAR)
        if not username or not password:
            raise StackError(
                f"no service credentials in {self.services_env}; run `carbonflow stack up`"
            )
        return (settings or self.mqtt).model_copy(
            update={"username": username, "password": SecretStr(password)}
        )

    def tls_settings(self, settings: MqttSettings) -> MqttSettings:
        """``settings`` over the TLS listener, trusting the stack's CA."""
        return self.mosquitto.tls_settings(settings)

    def sync_mqtt_access(self) -> BrokerAccess:
        """Regenerate the broker's password file and ACL from every registry; reload it.

        Call after issuing or revoking credentials or registering devices. Cheap when nothing
        changed (no reload then).
        """
        with file_lock(self.mosquitto.client_dir / LOCK_FILE):
            # The stack's own database wins a clash: its service identity is everyone's.
            access = merge(self.postgres.mqtt_registries(), primary=self.db.name)
            for problem in access.problems:
                logger.warning("MQTT access: %s", problem)
            if self.mosquitto.apply_access(access):
                logger.info(
                    "MQTT access applied: %d identities, %d gateway devices",
                    len(access.identities),
                    sum(len(d) for d in access.devices_by_gateway.values()),
                )
        return access

    # -- helpers for tests and tools --------------------------------------------------------------

    def create_database(self, name: str) -> None:
        """Create database `name` (idempotent), owned by the app role, with TimescaleDB."""
        self.postgres.create_database(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists (its open sessions are disconnected)."""
        self.postgres.drop_database(name)

    def ensure_topics(self, names: Sequence[str], partitions: int | None = None) -> list[str]:
        """Create the Kafka topics that are missing; return the names created."""
        return kafka_admin.ensure_topics(
            self.kafka, names, partitions if partitions is not None else self.kafka.partitions
        )

    def standalone_broker(self, state_dir: Path, *, port: int, tls_port: int) -> MosquittoService:
        """A Mosquitto of its own in ``state_dir``, admitting the identities the stack's does.

        For tests that stop and start a broker, which must never be the shared one. Start it
        with ``ensure_started()`` and ``wait_ready(timeout_s)``, stop it with ``stop()``.
        ``state_dir`` and its parents must be searchable by the broker's OS account.
        """
        broker = MosquittoService(
            self.settings.model_copy(update={"state_dir": state_dir}),
            self.mqtt.model_copy(update={"port": port, "tls_port": tls_port}),
        )
        broker.apply_access(merge(self.postgres.mqtt_registries(), primary=self.db.name))
        return broker
