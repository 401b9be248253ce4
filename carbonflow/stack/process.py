"""Detached service processes, their pid files, and commands whose output we narrate.

Services are started in their own session so they outlive the command that started them;
a pid file in the state dir is what later commands (status, down) go by. A pid is only
trusted while /proc shows a live process whose command line is still the service's (its
program and its state-dir-specific config argument), so a pid reused by an unrelated process
is never signalled. When the pid file is lost while the service still runs, the process is
found again by that same command line and adopted instead of being reported as a port clash.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import queue
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from carbonflow.errors import StackError

logger = logging.getLogger(__name__)

TAIL_LINES = 30
# Rotate a service log at start once it grows past this, so logs never fill a laptop disk.
MAX_LOG_BYTES = 20 * 1024 * 1024
# How often a long, quiet command gets an INFO line saying it is still going.
HEARTBEAT_S = 10.0
START_BANNER = "==== carbonflow stack: starting"


def is_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class RunAs:
    """An OS account to run a child process as (only switched to when we are root)."""

    user: str

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.user).pw_uid

    @property
    def gid(self) -> int:
        return pwd.getpwnam(self.user).pw_gid

    def ids(self) -> tuple[int | None, int | None, list[int] | None]:
        """Popen's (user, group, extra_groups): switch only when we are root."""
        if not is_root():
            return None, None, None
        return self.uid, self.gid, []

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(base if base is not None else os.environ)
        if is_root():
            entry = pwd.getpwnam(self.user)
            env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
        return env


def _ids(run_as: RunAs | None) -> tuple[int | None, int | None, list[int] | None]:
    return run_as.ids() if run_as is not None else (None, None, None)


@dataclass
class ManagedProcess:
    """A long-running service process, identified by a pid file and its command line."""

    name: str
    pid_file: Path
    log_file: Path
    # Found in the command line: the program (e.g. "kafka.Kafka")...
    marker: str
    # ...and one argument equal to this, unique to the state dir (its config file or data dir).
    identity: str
    # Further logs worth showing when the process fails (e.g. Kafka's own log4j file).
    extra_logs: tuple[Path, ...] = ()
    _child: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def pid(self) -> int | None:
        """The pid of the live service process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return self._adopt()
        exited = (
            self._child is not None and self._child.pid == pid and self._child.poll() is not None
        )
        if not exited and self._ours(pid):
            return pid
        self._forget()
        return self._adopt()

    def _ours(self, pid: int) -> bool:
        if not _alive(pid):
            return False
        argv = _argv(pid)
        return any(self.marker in arg for arg in argv) and self.identity in argv

    def _adopt(self) -> int | None:
        """Find our service running without a pid file (say the file was deleted)."""
        candidates = sorted(
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and self._ours(int(entry.name))
        )
        if not candidates:
            return None
        pid = candidates[0]
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid}\n")
        logger.info("found %s running as pid %d without its pid file; adopted it", self.name, pid)
        return pid

    def _forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        run_as: RunAs | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Start the service detached, stdout+stderr appended to its log; return its pid."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        _rotate(self.log_file)
        with self.log_file.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"{START_BANNER} {self.name} at {stamp} ====\n".encode())
            log.flush()
            user, group, extra_groups = _ids(run_as)
            try:
                child = subprocess.Popen(
                    list(argv),
                    cwd=cwd,
                    env=dict(env) if env is not None else None,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    user=user,
                    group=group,
                    extra_groups=extra_groups,
                )
            except OSError as exc:
                raise StackError(f"could not start {self.name} ({argv[0]}): {exc}") from exc
        self._child = child
        self.pid_file.write_text(f"{child.pid}\n")
        logger.info("started %s (pid %d), log: %s", self.name, child.pid, self.log_file)
        return int(child.pid)

    def died(self) -> bool:
        """True when a process we started in this interpreter has exited."""
        return self._child is not None and self._child.poll() is not None

    def exit_code(self) -> int | None:
        return self._child.poll() if self._child is not None else None

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The end of the log, from this process's start banner on (not earlier runs)."""
        text = tail(self.log_file, lines * 4)
        start = text.rfind(START_BANNER)
        if start > 0:
            text = text[text.rfind("\n", 0, start) + 1 :]
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> StackError:
        """A StackError carrying the end of the service's log."""
        return StackError(f"{self.name} {what}; last lines of {self.log_file}:\n{self.tail()}")

    def send_signal(self, sig: signal.Signals) -> int | None:
        pid = self.pid()
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return pid

    def wait_exit(self, pid: int, deadline: float) -> bool:
        """Wait until pid is gone or the deadline passes; True if it exited."""
        delay = 0.05
        while time.monotonic() < deadline:
            if self._child is not None and self._child.pid == pid:
                self._child.poll()
            if not _alive(pid):
                return True
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        return not _alive(pid)

    def stop(self, sig: signal.Signals, timeout_s: float) -> bool:
        """Graceful stop with sig, SIGKILL after timeout_s. True if something was stopped."""
        pid = self.send_signal(sig)
        if pid is None:
            return False
        logger.info("stopping %s (pid %d)", self.name, pid)
        self.finish_stop(pid, timeout_s)
        return True

    def finish_stop(self, pid: int, timeout_s: float) -> None:
        if not self.wait_exit(pid, time.monotonic() + timeout_s):
            logger.warning(
                "%s (pid %d) still running after %.0fs; killing it", self.name, pid, timeout_s
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.wait_exit(pid, time.monotonic() + 10)
        self._forget()


def _alive(pid: int) -> bool:
    """Alive and not a zombie (kill(pid, 0) succeeds on zombies)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return raw.decode(errors="replace").split("\0")


def _rotate(log_file: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if log_file.stat().st_size > MAX_LOG_BYTES:
            log_file.replace(log_file.with_suffix(log_file.suffix + ".1"))


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(data.splitlines()[-lines:]) or "(log is empty)"


def port_in_use(host: str, port: int) -> bool:
    """True when some socket is bound to host:port (a listener, say).

    A bind test rather than a connect: it sees servers of any user without opening a
    connection that would show up in their logs, and SO_REUSEADDR ignores TIME_WAIT leftovers.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def ensure_port_free(service: str, host: str, port: int) -> None:
    if port_in_use(host, port):
        raise StackError(
            f"cannot start {service}: port {port} on {host} is already in use by another "
            f"process (find it with `ss -ltnp 'sport = :{port}'`), or choose another port "
            "in the settings"
        )


def run(
    argv: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    run_as: RunAs | None = None,
    check: bool = True,
) -> tuple[int, str]:
    """Run a command to completion, narrating it.

    Every output line goes to DEBUG; at INFO a line every few seconds says the step is still
    running (with its latest output), so a long apt/maven/cmake step is never silent.
    Returns (exit code, combined output); with check=True a failure raises StackError
    carrying the last lines of output.
    """
    logger.debug("running: %s", " ".join(argv))
    user, group, extra_groups = _ids(run_as)
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            user=user,
            group=group,
            extra_groups=extra_groups,
        )
    except OSError as exc:
        raise StackError(f"{what} failed: cannot run {argv[0]}: {exc}") from exc
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace").rstrip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    output: list[str] = []
    recent: deque[str] = deque(maxlen=TAIL_LINES)
    started = last_note = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            line = ""
        else:
            if line is None:
                break
            output.append(line)
            recent.append(line)
            logger.debug("  %s", line)
        now = time.monotonic()
        if now - last_note >= HEARTBEAT_S:
            latest = next((item for item in reversed(recent) if item.strip()), "")
            logger.info(
                "  … %s still running (%.0fs)%s",
                what,
                now - started,
                f": {latest[:160]}" if latest else "",
            )
            last_note = now
    code = proc.wait()
    if check and code != 0:
        raise StackError(f"{what} failed (exit {code}); last output:\n" + "\n".join(recent))
    return code, "\n".join(output)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two stack commands on one state dir never interleave."""
    import fcntl

    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another carbonflow stack command holds %s; waiting for it", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        # `reset` deletes the state dir, lock file included, while holding the lock: a
        # waiter then holds a lock on a deleted file and must take the new one instead.
        try:
            same = os.fstat(handle.fileno()).st_ino == path.stat().st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def can_traverse(run_as: RunAs, path: Path) -> bool:
    """Whether run_as can reach path (every ancestor searchable), asked as that user."""
    if not is_root():
        return True
    user, group, extra_groups = _ids(run_as)
    code = subprocess.call(
        ["test", "-x", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=user,
        group=group,
        extra_groups=extra_groups,
    )
    return code == 0


def chown_tree(path: Path, run_as: RunAs) -> None:
    if not is_root():
        return
    uid, gid = run_as.uid, run_as.gid
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), uid, gid)
