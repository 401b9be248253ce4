"""The Stack: every local service installed, started, probed and stopped together."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings
from carbonflow.errors import StackError
from carbonflow.stack import kafka_admin
from carbonflow.stack.base import Service, ServiceStatus
from carbonflow.stack.kafka import KafkaService
from carbonflow.stack.mosquitto import MosquittoService
from carbonflow.stack.postgres import PostgresService
from carbonflow.stack.process import file_lock

logger = logging.getLogger(__name__)

# Written into a state dir the stack created, so reset never deletes a directory it does
# not own (say a mistyped CARBONFLOW_STACK_STATE_DIR).
STATE_MARKER = ".carbonflow-stack"
LOCK_FILE = ".lock"


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
