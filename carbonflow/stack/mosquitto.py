"""Our own Mosquitto instance (not the system service), configured from infra/mosquitto/."""

from __future__ import annotations

import pwd
from pathlib import Path

from carbonflow.config import MqttSettings, StackSettings
from carbonflow.errors import StackError
from carbonflow.stack.base import Service
from carbonflow.stack.probes import mqtt_probe
from carbonflow.stack.process import RunAs, can_traverse, chown_tree, is_root
from carbonflow.stack.system import render, require_binary

MOSQUITTO = Path("/usr/sbin/mosquitto")
# The Debian package's unprivileged account; the broker never runs as root.
SERVICE_ACCOUNT = "mosquitto"


class MosquittoService(Service):
    name = "mosquitto"
    stop_timeout_s = 15.0

    def __init__(self, stack: StackSettings, mqtt: MqttSettings) -> None:
        self.mqtt = mqtt
        super().__init__(stack)

    @property
    def home(self) -> Path:
        return self.stack.state_dir / "mosquitto"

    @property
    def config_file(self) -> Path:
        return self.home / "mosquitto.conf"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def cmdline_marker(self) -> str:
        return "mosquitto"

    def cmdline_identity(self) -> str:
        return str(self.config_file)

    def run_as(self) -> RunAs | None:
        if not is_root():
            return None
        try:
            pwd.getpwnam(SERVICE_ACCOUNT)
        except KeyError as exc:
            raise StackError(
                f"the OS user {SERVICE_ACCOUNT!r} (created by the mosquitto package) is missing"
            ) from exc
        return RunAs(SERVICE_ACCOUNT)

    def install(self) -> None:
        require_binary(MOSQUITTO, "mosquitto", why="the MQTT broker")

    def host_ports(self) -> list[tuple[str, int]]:
        return [(self.mqtt.host, self.mqtt.port)]

    def address(self) -> str:
        return f"mqtt://{self.mqtt.host}:{self.mqtt.port}"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        render(
            "mosquitto/mosquitto.conf.template",
            self.config_file,
            port=self.mqtt.port,
            data_dir=self.data_dir,
        )
        run_as = self.run_as()
        if run_as is not None:
            chown_tree(self.data_dir, run_as)
            if not can_traverse(run_as, self.data_dir):
                raise StackError(
                    f"the {run_as.user!r} OS user cannot reach {self.data_dir}: every parent "
                    "directory of the stack's state dir must be searchable by others (o+x); "
                    "choose another CARBONFLOW_STACK_STATE_DIR or fix the permissions"
                )

    def refresh(self) -> None:
        # Persistence writes fail if the data dir vanished under a running broker.
        if not self.data_dir.exists():
            self.prepare()

    def start(self) -> None:
        # Our own instance in the foreground of its own session: never `-d`, so the pid we
        # record is the broker's.
        self.process.start(
            [str(MOSQUITTO), "-c", str(self.config_file)],
            cwd=self.home,
            run_as=self.run_as(),
        )

    def probe(self) -> str:
        return mqtt_probe(self.mqtt)

    def describe(self) -> str:
        return f"config {self.config_file}"
