"""Shared fixtures: the real local stack, and a freshly migrated test database per session."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from pydantic import SecretStr

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings

if TYPE_CHECKING:
    from carbonflow.stack import Stack

TEST_DB_NAME = os.environ.get("CARBONFLOW_TEST_DB", "carbonflow_test")


@pytest.fixture(scope="session")
def stack_settings() -> StackSettings:
    return StackSettings()


@pytest.fixture(scope="session")
def stack(stack_settings: StackSettings) -> Stack:
    """Start (or reuse) the real local stack; it is left running for the next session."""
    from carbonflow.stack import Stack

    stack = Stack(
        stack=stack_settings, mqtt=MqttSettings(), kafka=KafkaSettings(), db=DatabaseSettings()
    )
    stack.up()
    return stack


@pytest.fixture(scope="session")
def mqtt_settings(stack: Stack) -> MqttSettings:
    """The platform services' MQTT identity (as ingest): reads telemetry, status and
    Sparkplug B, writes service status. Pass it to child services with ``mqtt_env``."""
    return stack.service_mqtt_settings()


@pytest.fixture(scope="session")
def edge_mqtt_settings(
    stack: Stack, db_settings: DatabaseSettings, mqtt_settings: MqttSettings
) -> Callable[[str], MqttSettings]:
    """MQTT settings that act as the given edge client (a gateway or a Sparkplug node).

    Tests that publish as a gateway use these, never ``mqtt_settings`` (the platform
    services' identity), so they exercise what a real gateway is allowed to do. The first
    call for a client id issues its credentials in the test database; every call applies
    the registry to the broker, so the gateway may publish for the devices registered under
    it so far. Devices registered later are applied before each test that uses this fixture
    (see ``pytest_runtest_call``), or at once with ``stack.sync_mqtt_access()``. Client ids
    name broker-wide identities: make them unique per run (e.g. with ``run_id``).
    """
    from carbonflow.mqtt_auth import store
    from carbonflow.mqtt_auth.access import Role

    passwords: dict[str, SecretStr] = {}

    def settings_for(client_id: str) -> MqttSettings:
        if client_id not in passwords:
            with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
                passwords[client_id] = store.issue(conn, client_id, Role.GATEWAY)
        stack.sync_mqtt_access()
        return mqtt_settings.model_copy(
            update={"username": client_id, "password": passwords[client_id]}
        )

    return settings_for


def pytest_runtest_call(item: pytest.Item) -> None:
    """Before a test that publishes as a gateway: apply devices its fixtures registered."""
    funcargs = getattr(item, "funcargs", {})
    if "edge_mqtt_settings" in funcargs:
        funcargs["stack"].sync_mqtt_access()


@pytest.fixture(scope="session")
def run_id() -> str:
    """Unique per test session, so topics and MQTT roots never see an earlier run's data."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def db_settings(stack: Stack) -> DatabaseSettings:
    """A test database, dropped and migrated from scratch once per session."""
    from carbonflow import db

    stack.drop_database(TEST_DB_NAME)
    stack.create_database(TEST_DB_NAME)
    settings = DatabaseSettings(name=TEST_DB_NAME)
    db.migrate(settings)
    return settings


@pytest.fixture
def db_conn(db_settings: DatabaseSettings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """State dir for a private Mosquitto (``Stack.standalone_broker``) that a test stops and
    starts. Not tmp_path: the broker runs as its own OS account, which must reach its files."""
    path = Path(tempfile.mkdtemp(prefix="carbonflow-test-broker-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
