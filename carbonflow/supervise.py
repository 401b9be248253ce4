"""CarbonFlow services as child processes: used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from carbonflow.config import MqttSettings
from carbonflow.errors import CarbonFlowError

T = TypeVar("T")


class ServiceProcess:
    """``python -m carbonflow <command> [args...]`` with its output in ``<log_dir>/<name>.log``."""

    def __init__(
        self,
        command: str | Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        name: str | None = None,
        log_level: str = "INFO",
    ) -> None:
        argv = [command] if isinstance(command, str) else list(command)
        self.name = name or argv[0]
        self.log_path = log_dir / f"{self.name}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "carbonflow", "--log-level", log_level, *argv],
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the parent only; it stops us in order
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextmanager
def running(
    command: str | Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None, **kwargs: str
) -> Iterator[ServiceProcess]:
    service = ServiceProcess(command, log_dir, env, **kwargs)
    try:
        yield service
    finally:
        service.stop()


class WaitTimeoutError(CarbonFlowError, AssertionError):
    """A condition polled by :func:`wait_for` did not come true in time."""


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    services: tuple[ServiceProcess, ...] = (),
    interval_s: float = 0.2,
) -> T:
    """Poll ``probe`` until it returns something other than None; fail with the logs if not."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        result = probe()
        if result is not None:
            return result
        dead = [s for s in services if not s.alive()]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(s.log_tail() for s in services)
            cause = f"{dead[0].name} exited" if dead else f"not within {timeout_s:.0f}s"
            raise WaitTimeoutError(f"waiting for {what}: {cause}\n{logs}")
        pause.wait(interval_s)


def wait_for_status(
    mqtt_settings: MqttSettings,
    service: str,
    instance: str,
    state: str,
    process: ServiceProcess,
    timeout_s: float = 60.0,
) -> None:
    """Block until the retained presence message of a service instance says ``state``."""
    import json

    import paho.mqtt.client as mqtt

    from carbonflow.mqtt_client import new_client

    topic = mqtt_settings.service_status_topic(service, instance)
    seen = threading.Event()
    client = new_client(mqtt_settings)

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        if json.loads(message.payload).get("state") == state:
            seen.set()

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe(topic, qos=1)

    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(mqtt_settings.host, mqtt_settings.broker_port)
    client.loop_start()
    try:
        wait_for(
            lambda: True if seen.is_set() else None,
            timeout_s=timeout_s,
            what=f"{topic} to say {state}",
            services=(process,),
        )
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_env(settings: MqttSettings) -> dict[str, str]:
    """Environment variables that make a child service's ``MqttSettings()`` equal ``settings``.

    Secrets reach child services this way only: never on a command line.
    """
    env = {
        "CARBONFLOW_MQTT_HOST": settings.host,
        "CARBONFLOW_MQTT_PORT": str(settings.port),
        "CARBONFLOW_MQTT_TLS_PORT": str(settings.tls_port),
        "CARBONFLOW_MQTT_TLS": "true" if settings.tls else "false",
        "CARBONFLOW_MQTT_TOPIC_ROOT": settings.topic_root,
        "CARBONFLOW_MQTT_KEEPALIVE_S": str(settings.keepalive_s),
    }
    if settings.tls_ca_file is not None:
        env["CARBONFLOW_MQTT_TLS_CA_FILE"] = str(settings.tls_ca_file)
    if settings.username is not None:
        env["CARBONFLOW_MQTT_USERNAME"] = settings.username
    if settings.password is not None:
        env["CARBONFLOW_MQTT_PASSWORD"] = settings.password.get_secret_value()
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, for a child service to bind."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
