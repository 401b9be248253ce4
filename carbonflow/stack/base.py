"""What every local service provides to the Stack, and the shared readiness wait."""

from __future__ import annotations

import logging
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from carbonflow.config import StackSettings
from carbonflow.errors import StackError
from carbonflow.stack.process import ManagedProcess, ensure_port_free, port_in_use

logger = logging.getLogger(__name__)

# How often a readiness wait says what it is waiting for.
WAIT_NOTE_S = 5.0


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    detail: str


class Service(ABC):
    """One local server process: install, configure, start, probe, stop."""

    name: str
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout_s: float = 30.0

    def __init__(self, stack: StackSettings) -> None:
        self.stack = stack
        self.process = ManagedProcess(
            name=self.name,
            pid_file=self.run_dir / f"{self.name}.pid",
            log_file=self.logs_dir / f"{self.name}.log",
            marker=self.cmdline_marker(),
            identity=self.cmdline_identity(),
        )
        self.started_at: float | None = None

    @property
    def run_dir(self) -> Path:
        return self.stack.state_dir / "run"

    @property
    def logs_dir(self) -> Path:
        return self.stack.state_dir / "logs"

    @abstractmethod
    def cmdline_marker(self) -> str:
        """Part of the service's command line naming the program (e.g. "mosquitto")."""

    @abstractmethod
    def cmdline_identity(self) -> str:
        """An argument of the service's command line unique to this state dir."""

    @abstractmethod
    def install(self) -> None:
        """Make the software present (cached: fast when nothing is missing)."""

    @abstractmethod
    def host_ports(self) -> list[tuple[str, int]]:
        """Every (host, port) the service listens on."""

    @abstractmethod
    def address(self) -> str:
        """Where clients connect, for humans."""

    @abstractmethod
    def prepare(self) -> None:
        """Create directories and (re)write config before a start."""

    @abstractmethod
    def start(self) -> None:
        """Launch the detached process."""

    @abstractmethod
    def probe(self) -> str:
        """Talk to the service as a client; return a short detail or raise if not ready."""

    def refresh(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """For a service found running: restore what it needs on disk, re-render config."""

    def after_ready(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Idempotent setup that needs the running service (roles, databases, topics)."""

    def describe(self) -> str:
        """A cheap detail for status (no client round-trip)."""
        return ""

    def pid(self) -> int | None:
        return self.process.pid()

    def ensure_started(self) -> bool:
        """Start the service unless it runs; True if it was started now."""
        pid = self.pid()
        if pid is not None:
            logger.info("%s already running (pid %d)", self.name, pid)
            self.started_at = None
            self.refresh()
            return False
        for host, port in self.host_ports():
            ensure_port_free(self.name, host, port)
        self.prepare()
        self.started_at = time.monotonic()
        self.start()
        return True

    def wait_ready(self, timeout_s: float) -> str:
        """Poll the real probe with backoff until it answers, the process dies, or time is up."""
        begun = self.started_at if self.started_at is not None else time.monotonic()
        deadline = begun + timeout_s
        delay = 0.1
        last_note = time.monotonic()
        last_error = "no answer yet"
        while True:
            if self.process.died() or self.pid() is None:
                code = self.process.exit_code()
                raise self.process.failure(
                    "exited during startup" + (f" (exit code {code})" if code is not None else "")
                )
            try:
                detail = self.probe()
            except Exception as exc:  # any client error means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}".strip()
            else:
                logger.info("%s ready at %s (%s)", self.name, self.address(), detail)
                return detail
            now = time.monotonic()
            if now >= deadline:
                self.stop()
                raise self.process.failure(
                    f"not ready after {timeout_s:.0f}s (last probe: {last_error}); stopped it"
                )
            if now - last_note >= WAIT_NOTE_S:
                logger.info(
                    "waiting for %s to answer on %s (%.0fs so far; last probe: %s)",
                    self.name,
                    self.address(),
                    now - begun,
                    last_error[:200],
                )
                last_note = now
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 1.5, 1.0)

    def stop(self) -> bool:
        return self.process.stop(self.stop_signal, self.stop_timeout_s)

    def status(self) -> ServiceStatus:
        pid = self.pid()
        detail = self.describe()
        if pid is not None:
            listening = all(port_in_use(host, port) for host, port in self.host_ports())
            state = "accepting connections" if listening else "not listening yet"
            detail = f"{state}; {detail}" if detail else state
        else:
            detail = f"stopped; {detail}" if detail else "stopped"
        return ServiceStatus(
            name=self.name,
            running=pid is not None,
            pid=pid,
            address=self.address(),
            detail=detail,
        )


def require_running(service: Service) -> None:
    if service.pid() is None:
        raise StackError(
            f"{service.name} is not running; start the stack with `carbonflow stack up`"
        )
