"""The local service stack: real Mosquitto, PostgreSQL 15 + TimescaleDB and Kafka on loopback.

Tests, the demo and CI run against these real servers, started by the project itself on a
plain Debian 12 machine (no Docker)::

    stack = Stack(stack=StackSettings(), mqtt=MqttSettings(), kafka=KafkaSettings(),
                  db=DatabaseSettings())
    stack.up()       # install what is missing, start what is not running, wait until ready
    stack.status()   # [ServiceStatus(name, running, pid, address, detail), ...]
    stack.down()     # stop what the stack started (graceful, then SIGKILL after a timeout)
    stack.reset()    # down, then delete the state dir (data, logs); the install cache stays

Where things live:

- ``StackSettings.cache_dir``: what is installed once and kept across resets: the Kafka jars
  (Maven), the TimescaleDB source and build tree.
- ``StackSettings.state_dir``: per-service data and rendered config (``mosquitto/``,
  ``postgres/``, ``kafka/``), logs (``logs/``), pid files (``run/``).
- ``infra/{mosquitto,postgres,kafka}/``: the config templates rendered into the state dir.

Every process is started in its own session, so it outlives the command that started it; the
pid files are what status and down go by. All servers listen on 127.0.0.1 only.

Database authentication (local development): the stack administers PostgreSQL as the
``postgres`` superuser over a Unix socket whose directory only the server's OS account can
enter. Applications connect over TCP as ``DatabaseSettings.user``, an ordinary role that owns
its databases. When ``DatabaseSettings.password`` is set, that role gets the password and
authenticates with scram-sha-256; when it is not set (the default), that one role is trusted
on 127.0.0.1 so that ``DatabaseSettings()`` works out of the box. Every other role always
needs a password over TCP. Set ``CARBONFLOW_DB_PASSWORD`` wherever other local users must not
be able to act as the application.

MQTT: anonymous clients are refused. The password file and ACL are generated from the
``mqtt_credentials`` and ``devices`` tables of every database on the stack's PostgreSQL and
applied with SIGHUP (``Stack.sync_mqtt_access``); ``up`` migrates the main database and
issues the platform service identity (``<state_dir>/mqtt/services.env``, 0600). A second
listener serves TLS with a certificate from the stack's own CA (``<state_dir>/mqtt/ca.crt``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carbonflow.stack.base import ServiceStatus
    from carbonflow.stack.manager import Stack

__all__ = ["ServiceStatus", "Stack"]


def __getattr__(name: str) -> Any:
    # Lazy, so `carbonflow.stack.cli` can be mounted in the top-level command on installs
    # without the stack extra (paho, psycopg, aiokafka) such as an edge gateway.
    if name == "Stack":
        from carbonflow.stack.manager import Stack

        return Stack
    if name == "ServiceStatus":
        from carbonflow.stack.base import ServiceStatus

        return ServiceStatus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
