"""Apache Kafka in KRaft combined mode (one JVM is broker and controller), jars from Maven.

No Debian or PyPI package ships the broker. infra/kafka/pom.xml pins Kafka and its logging
binding; Maven copies the runtime classpath into <cache_dir>/kafka-<version>/libs once, and a
marker file (holding the pom's hash) records that the copy is complete.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import uuid
from pathlib import Path

from carbonflow.config import KafkaSettings, StackSettings
from carbonflow.errors import StackError
from carbonflow.stack import kafka_admin
from carbonflow.stack.base import Service
from carbonflow.stack.process import run
from carbonflow.stack.system import INFRA_DIR, render, which_or_install

logger = logging.getLogger(__name__)

# Keep in step with kafka.version in infra/kafka/pom.xml.
KAFKA_VERSION = "3.9.1"
POM = INFRA_DIR / "kafka" / "pom.xml"
LIBS_MARKER = ".carbonflow-complete"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})


def parse_bootstrap(bootstrap_servers: str) -> tuple[str, int]:
    """(host, port) of the first bootstrap server, which the local broker listens on."""
    first = bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise StackError(f"cannot read host:port from bootstrap_servers {bootstrap_servers!r}")
    if host not in LOOPBACK_HOSTS:
        raise StackError(
            f"the local Kafka listens on 127.0.0.1 only, but bootstrap_servers names {host}"
        )
    return "127.0.0.1", int(port)


def new_cluster_id() -> str:
    """What `kafka-storage.sh random-uuid` prints: a URL-safe base64 UUID without padding.

    Like Kafka's own Uuid.randomUuid(), never one starting with '-': the storage tool's
    argument parser would take it for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaService(Service):
    name = "kafka"
    # SIGTERM makes the broker shut down cleanly (flush logs, write the clean-shutdown file).
    stop_timeout_s = 60.0

    def __init__(self, stack: StackSettings, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.host, self.port = parse_bootstrap(kafka.bootstrap_servers)
        super().__init__(stack)
        # stdout/stderr of the JVM (startup failures, GC warnings); log4j writes kafka.log.
        self.process.log_file = self.logs_dir / "kafka.stdout.log"
        self.log4j_file = self.logs_dir / "kafka.log"
        self.process.extra_logs = (self.log4j_file,)
        self._java: Path | None = None

    @property
    def home(self) -> Path:
        return self.stack.state_dir / "kafka"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def libs_dir(self) -> Path:
        return self.stack.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"

    def cmdline_marker(self) -> str:
        return "kafka.Kafka"

    def cmdline_identity(self) -> str:
        return str(self.home / "server.properties")

    # -- install ---------------------------------------------------------------------------

    def install(self) -> None:
        self.java()
        pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()
        marker = self.libs_dir / LIBS_MARKER
        if marker.exists() and marker.read_text().strip() == pom_hash:
            return
        mvn = which_or_install("mvn", "maven", why="fetching the Kafka jars")
        logger.info(
            "downloading Kafka %s jars from Maven Central into %s (under a minute)…",
            KAFKA_VERSION,
            self.libs_dir,
        )
        # A partial or outdated copy must not mix jar versions on the classpath.
        if self.libs_dir.exists():
            shutil.rmtree(self.libs_dir)
        self.libs_dir.mkdir(parents=True)
        run(
            [
                str(mvn),
                "-B",
                "--no-transfer-progress",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.libs_dir}",
            ],
            what="mvn dependency:copy-dependencies (Kafka jars)",
            cwd=POM.parent,
        )
        jar = self.libs_dir / f"kafka_2.13-{KAFKA_VERSION}.jar"
        if not jar.exists():
            raise StackError(f"Maven finished but {jar.name} is not in {self.libs_dir}")
        marker.write_text(pom_hash + "\n")
        logger.info(
            "Kafka %s jars ready (%d files)",
            KAFKA_VERSION,
            sum(1 for _ in self.libs_dir.glob("*.jar")),
        )

    # -- configure and run -----------------------------------------------------------------

    def host_ports(self) -> list[tuple[str, int]]:
        return [(self.host, self.port), (self.host, self.stack.kafka_controller_port)]

    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        controller = f"{self.host}:{self.stack.kafka_controller_port}"
        return (
            f"Kafka {KAFKA_VERSION} KRaft broker+controller (controller {controller}); "
            f"log {self.log4j_file}"
        )

    def java(self) -> Path:
        if self._java is None:
            self._java = which_or_install("java", "default-jre-headless", why="Kafka")
        return self._java

    def _java_cmd(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        jvm = [
            str(self.java()),
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.logs_dir}",
        ]
        if heap is not None:
            jvm += [
                f"-Xmx{heap}",
                f"-Xms{heap}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExitOnOutOfMemoryError",
            ]
        return [*jvm, "-cp", f"{self.libs_dir}/*", main, *args]

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        render(
            "kafka/server.properties.template",
            self.home / "server.properties",
            port=self.port,
            controller_port=self.stack.kafka_controller_port,
            log_dirs=self.data_dir,
            partitions=self.kafka.partitions,
        )
        render(
            "kafka/log4j.properties.template",
            self.home / "log4j.properties",
            log_file=self.log4j_file,
        )
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()

    def _format_storage(self) -> None:
        id_file = self.home / "cluster_id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id() + "\n")
        cluster_id = id_file.read_text().strip()
        logger.info("formatting Kafka storage in %s (cluster id %s)…", self.data_dir, cluster_id)
        run(
            self._java_cmd(
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                cluster_id,
                "-c",
                str(self.home / "server.properties"),
            ),
            what="kafka StorageTool format",
            cwd=self.home,
        )

    def start(self) -> None:
        self.process.start(
            self._java_cmd(
                "kafka.Kafka", str(self.home / "server.properties"), heap=self.stack.kafka_heap
            ),
            cwd=self.home,
        )

    def probe(self) -> str:
        return kafka_admin.probe(self.kafka)

    def after_ready(self) -> None:
        kafka_admin.ensure_topics(
            self.kafka,
            [self.kafka.readings_topic, self.kafka.deadletter_topic, self.kafka.events_topic],
            self.kafka.partitions,
        )
