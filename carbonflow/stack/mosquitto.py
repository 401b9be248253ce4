"""Our own Mosquitto instance (not the system service), configured from infra/mosquitto/.

Security: anonymous clients are refused; the password file and ACL are generated from the
registry (``carbonflow.mqtt_auth``) and applied with SIGHUP, which Mosquitto answers by
re-reading both and disconnecting clients whose credentials are gone. Besides the plain
listener there is a TLS listener whose certificate comes from a CA of the stack's own.

Files (``<state_dir>``):

- ``mosquitto/auth/{passwords,acl}``: what the broker reads (its own account owns them, 0600);
- ``mosquitto/tls/server.{crt,key}``: the broker's certificate and key;
- ``mqtt/ca.crt``: the CA certificate that clients trust; ``mqtt/ca.key`` its key (0600);
- ``mqtt/probe.secret``: the password of the stack's own probe identity (0600), which may
  connect but do nothing else. It changes with every change of the files, so a probe
  that gets in with the new one proves the broker has re-read them.
"""

from __future__ import annotations

import logging
import pwd
import signal
import time
from pathlib import Path

from pydantic import SecretStr

from carbonflow.config import MqttSettings, StackSettings
from carbonflow.errors import StackError
from carbonflow.files import write_private
from carbonflow.mqtt_auth.access import BrokerAccess, acl_file, password_file
from carbonflow.mqtt_auth.passwords import hash_password, new_password
from carbonflow.stack.base import Service
from carbonflow.stack.probes import mqtt_probe
from carbonflow.stack.process import RunAs, can_traverse, chown_tree, ensure_port_free, is_root
from carbonflow.stack.system import ensure_packages, render, require_binary
from carbonflow.stack.tls import TlsFiles, ensure_tls

logger = logging.getLogger(__name__)

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")
MOSQUITTO_PUB = Path("/usr/bin/mosquitto_pub")
# The Debian package's unprivileged account; the broker never runs as root.
SERVICE_ACCOUNT = "mosquitto"
# Registry usernames start with a letter or digit, so this one can never clash with them.
PROBE_USERNAME = "_carbonflow-stack-probe"
# How long a reload may take to show (Mosquitto re-reads the files on its next loop).
RELOAD_TIMEOUT_S = 15.0


class MosquittoService(Service):
    name = "mosquitto"
    stop_timeout_s = 15.0

    def __init__(self, stack: StackSettings, mqtt: MqttSettings) -> None:
        self.mqtt = mqtt
        super().__init__(stack)

    # -- where things live ----------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.stack.state_dir / "mosquitto"

    @property
    def config_file(self) -> Path:
        return self.home / "mosquitto.conf"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def auth_dir(self) -> Path:
        return self.home / "auth"

    @property
    def password_file(self) -> Path:
        return self.auth_dir / "passwords"

    @property
    def acl_file(self) -> Path:
        return self.auth_dir / "acl"

    @property
    def client_dir(self) -> Path:
        """What clients of the local stack use: the CA certificate, service credentials."""
        return self.stack.state_dir / "mqtt"

    @property
    def ca_cert(self) -> Path:
        return self.client_dir / "ca.crt"

    @property
    def probe_secret(self) -> Path:
        return self.client_dir / "probe.secret"

    @property
    def tls_files(self) -> TlsFiles:
        return TlsFiles(
            ca_cert=self.ca_cert,
            ca_key=self.client_dir / "ca.key",
            server_cert=self.home / "tls" / "server.crt",
            server_key=self.home / "tls" / "server.key",
        )

    def tls_settings(self, settings: MqttSettings | None = None) -> MqttSettings:
        """``settings`` (default: the stack's) over TLS, trusting the stack's CA."""
        return (settings or self.mqtt).model_copy(update={"tls": True, "tls_ca_file": self.ca_cert})

    # -- Service ----------------------------------------------------------------------------

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

    def _owner(self) -> tuple[int, int] | None:
        run_as = self.run_as()
        return (run_as.uid, run_as.gid) if run_as is not None else None

    def install(self) -> None:
        # mosquitto_passwd (hashing) comes with the broker; mosquitto_pub/sub with the clients.
        ensure_packages(["mosquitto", "mosquitto-clients"], why="the MQTT broker and its clients")
        for binary, package in (
            (MOSQUITTO, "mosquitto"),
            (MOSQUITTO_PASSWD, "mosquitto"),
            (MOSQUITTO_PUB, "mosquitto-clients"),
        ):
            require_binary(binary, package, why="the MQTT broker and its clients")

    def host_ports(self) -> list[tuple[str, int]]:
        return [(self.mqtt.host, self.mqtt.port), (self.mqtt.host, self.mqtt.tls_port)]

    def address(self) -> str:
        return f"mqtt://{self.mqtt.host}:{self.mqtt.port} mqtts://{self.mqtt.host}:{self.mqtt.tls_port}"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_dir.mkdir(parents=True, exist_ok=True)
        self._write_tls()
        if not self._access_files_present():
            # Nobody but the stack's probe until the registry's identities are applied.
            self._write_access(BrokerAccess((), {}))
        self._write_config()
        for private in (self.auth_dir, self.tls_files.server_key.parent):
            private.chmod(0o700)
        run_as = self.run_as()
        if run_as is not None:
            for folder in (self.data_dir, self.auth_dir, self.tls_files.server_key.parent):
                chown_tree(folder, run_as)
            if not can_traverse(run_as, self.data_dir):
                raise StackError(
                    f"the {run_as.user!r} OS user cannot reach {self.data_dir}: every parent "
                    "directory of the stack's state dir must be searchable by others (o+x); "
                    "choose another CARBONFLOW_STACK_STATE_DIR or fix the permissions"
                )

    def _access_files_present(self) -> bool:
        return all(f.exists() for f in (self.password_file, self.acl_file, self.probe_secret))

    def _write_tls(self) -> bool:
        hosts = list(dict.fromkeys([self.mqtt.host, "127.0.0.1", "localhost"]))
        return ensure_tls(self.tls_files, hosts, server_owner=self._owner())

    def _write_config(self) -> bool:
        return render(
            "mosquitto/mosquitto.conf.template",
            self.config_file,
            port=self.mqtt.port,
            tls_port=self.mqtt.tls_port,
            data_dir=self.data_dir,
            password_file=self.password_file,
            acl_file=self.acl_file,
            certfile=self.tls_files.server_cert,
            keyfile=self.tls_files.server_key,
        )

    def refresh(self) -> None:
        # Persistence writes fail if the data dir vanished under a running broker; listeners,
        # security settings and certificates take effect only on a start.
        tls_changed = self._write_tls()
        config_changed = self._write_config()
        missing = not (self.data_dir.exists() and self._access_files_present())
        if tls_changed or config_changed or missing:
            logger.info("mosquitto's configuration changed; restarting it to apply it")
            self.stop()
            for host, port in self.host_ports():
                ensure_port_free(self.name, host, port)
            self.prepare()
            self.started_at = time.monotonic()
            self.start()

    def start(self) -> None:
        # Our own instance in the foreground of its own session: never `-d`, so the pid we
        # record is the broker's.
        self.process.start(
            [str(MOSQUITTO), "-c", str(self.config_file)],
            cwd=self.home,
            run_as=self.run_as(),
        )

    def probe_settings(self) -> MqttSettings:
        try:
            secret = self.probe_secret.read_text().strip()
        except FileNotFoundError as exc:
            raise StackError(f"{self.probe_secret} is missing; run `carbonflow stack up`") from exc
        return self.mqtt.model_copy(
            update={"username": PROBE_USERNAME, "password": SecretStr(secret), "tls": False}
        )

    def probe(self) -> str:
        plain = self.probe_settings()
        mqtt_probe(plain)
        mqtt_probe(self.tls_settings(plain))
        return "MQTT CONNACK on both listeners, TLS certificate verified"

    def describe(self) -> str:
        return f"config {self.config_file}; clients trust {self.ca_cert}"

    # -- access -----------------------------------------------------------------------------

    def apply_access(self, access: BrokerAccess) -> bool:
        """Write the password file and ACL for ``access``; reload a running broker.

        Returns False when the broker already enforces exactly this. A reload is confirmed
        by the probe identity getting in with its new password.
        """
        acl = acl_file(access, self.mqtt.topic_root)
        passwords = password_file(access)
        if self._current_registry_files() == (passwords, acl):
            return False
        secret = self._write_access(access)
        if self.pid() is not None:
            self._reload(secret)
        return True

    def _current_registry_files(self) -> tuple[str, str] | None:
        try:
            lines = self.password_file.read_text().splitlines(keepends=True)
            acl = self.acl_file.read_text()
        except FileNotFoundError:
            return None
        passwords = "".join(line for line in lines if not line.startswith(f"{PROBE_USERNAME}:"))
        return passwords, acl

    def _write_access(self, access: BrokerAccess) -> SecretStr:
        secret = new_password()
        probe = {PROBE_USERNAME: hash_password(PROBE_USERNAME, secret)}
        owner = self._owner()
        self.auth_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        run_as = self.run_as()
        if run_as is not None:
            chown_tree(self.auth_dir, run_as)
        write_private(self.password_file, password_file(access, probe), owner=owner)
        write_private(self.acl_file, acl_file(access, self.mqtt.topic_root), owner=owner)
        write_private(self.probe_secret, secret.get_secret_value() + "\n")
        return secret

    def _reload(self, secret: SecretStr) -> None:
        self.process.send_signal(signal.SIGHUP)
        settings = self.probe_settings().model_copy(update={"password": secret})
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        delay = 0.05
        while True:
            try:
                mqtt_probe(settings, timeout_s=2.0)
            except StackError as exc:
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"mosquitto did not apply the new password file within "
                        f"{RELOAD_TIMEOUT_S:.0f}s: {exc}"
                    ) from exc
                time.sleep(delay)  # polling a real condition: the probe getting in
                delay = min(delay * 2, 0.5)
            else:
                logger.info("mosquitto reloaded its password file and ACL")
                return
