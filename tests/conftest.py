"""Shared fixtures: the real local stack, and a freshly migrated test database per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings

TEST_DB_NAME = os.environ.get("CARBONFLOW_TEST_DB", "carbonflow_test")


@pytest.fixture(scope="session")
def stack_settings() -> StackSettings:
    return StackSettings()


@pytest.fixture(scope="session")
def mqtt_settings() -> MqttSettings:
    return MqttSettings()


@pytest.fixture(scope="session")
def edge_mqtt_settings(mqtt_settings: MqttSettings) -> Callable[[str], MqttSettings]:
    """MQTT settings that act as the given edge client (a gateway or a Sparkplug node).

    Tests that publish as a gateway use these, never ``mqtt_settings`` (the platform
    services' identity), so they exercise what a real gateway is allowed to do.
    """

    def settings_for(client_id: str) -> MqttSettings:
        return mqtt_settings.model_copy(update={"username": client_id, "password": None})

    return settings_for


@pytest.fixture(scope="session")
def run_id() -> str:
    """Unique per test session, so topics and MQTT roots never see an earlier run's data."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def stack(stack_settings: StackSettings, mqtt_settings: MqttSettings) -> object:
    """Start (or reuse) the real local stack; it is left running for the next session."""
    from carbonflow.stack import Stack

    stack = Stack(
        stack=stack_settings, mqtt=mqtt_settings, kafka=KafkaSettings(), db=DatabaseSettings()
    )
    stack.up()
    return stack


@pytest.fixture(scope="session")
def db_settings(stack: object) -> DatabaseSettings:
    """A test database, dropped and migrated from scratch once per session."""
    from carbonflow import db
    from carbonflow.stack import Stack

    assert isinstance(stack, Stack)
    stack.drop_database(TEST_DB_NAME)
    stack.create_database(TEST_DB_NAME)
    settings = DatabaseSettings(name=TEST_DB_NAME)
    db.migrate(settings)
    return settings


@pytest.fixture
def db_conn(db_settings: DatabaseSettings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        yield conn
