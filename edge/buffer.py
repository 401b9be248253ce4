"""Durable store-and-forward buffer for outgoing telemetry batches.

A batch is written to disk *before* it is published and deleted only after the broker's PUBACK,
so a broker outage or a power cut loses nothing that ``append`` accepted. On start the gateway
republishes whatever ``pending`` returns; duplicates are harmless downstream because every write
is idempotent on (device_id, metric, ts).

Storage is one SQLite file (stdlib ``sqlite3``) in WAL mode with ``synchronous=FULL``: each
commit fsyncs the write-ahead log, so an entry survives a crash or power loss once ``append``
has returned.

Thread-safety: one connection, opened with ``check_same_thread=False``, guarded by one lock.
paho's network thread calls ``ack`` from its PUBACK callback while the poller thread calls
``append``; every public method takes the lock for its whole transaction, so they serialise.
One process owns a buffer file at a time.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from edge.errors import EdgeError
from schemas.telemetry import TelemetryBatch

logger = logging.getLogger(__name__)

#: Bumped whenever the table layout changes; a file with another version is refused.
SCHEMA_VERSION: Final = 1

# Well below SQLite's bound-parameter limit, whatever version the device ships.
_ACK_CHUNK: Final = 500

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS entries (
    -- AUTOINCREMENT: ids are never reused, so a late ack cannot delete a newer entry.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    size INTEGER NOT NULL,
    appended_at TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped_batches', 0), ('dropped_readings', 0);
"""


class BufferStorageError(EdgeError):
    """The buffer's database could not be opened, read or written."""


class BufferFullError(EdgeError):
    """The buffer has no room for a batch (``REJECT_NEW``, or the batch alone exceeds it)."""


class OverflowPolicy(enum.Enum):
    """What ``append`` does when a batch would take the buffer past ``max_bytes``."""

    #: Delete the oldest entries until the new batch fits, and count what was dropped.
    DROP_OLDEST = "drop_oldest"
    #: Keep what is stored and raise ``BufferFullError``.
    REJECT_NEW = "reject_new"


@dataclass(frozen=True, slots=True)
class BufferedBatch:
    """One stored batch awaiting its PUBACK; ``payload`` is the batch's JSON, ready to publish."""

    entry_id: int
    gateway_id: str
    device_id: str
    seq: int
    payload: bytes
    appended_at: datetime


@dataclass(frozen=True, slots=True)
class BufferStats:
    """Current contents plus what overflow has dropped since the file was created."""

    entries: int
    bytes: int
    dropped_batches: int
    dropped_readings: int


def _utc_now() -> datetime:
    return datetime.now(UTC)


class BatchBuffer:
    """A bounded, durable FIFO of telemetry batches on disk.

    Create with ``BatchBuffer.open(path, max_bytes=..., policy=...)`` and use as a context
    manager (or call ``close``). ``max_bytes`` bounds the total payload size (the batches'
    JSON), not the file size, which SQLite's page and index overhead makes somewhat larger.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        path: Path,
        max_bytes: int,
        policy: OverflowPolicy,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """Prefer ``open``; this takes a connection that ``open`` has already prepared."""
        self._conn: sqlite3.Connection | None = connection
        self._path = path
        self._max_bytes = max_bytes
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        # Cached totals of the entries table, kept in step inside each transaction, so that
        # append need not scan the table to know whether a batch fits.
        self._entries = 0
        self._bytes = 0

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        max_bytes: int,
        policy: OverflowPolicy,
        clock: Callable[[], datetime] = _utc_now,
    ) -> Self:
        """Open (creating if needed) the buffer at ``path``; raises ``BufferStorageError``."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        path = Path(path)
        try:
            conn = _connect(path)
        except sqlite3.Error as exc:
            raise BufferStorageError(f"cannot open buffer {path}: {exc}") from exc
        buffer = cls(conn, path=path, max_bytes=max_bytes, policy=policy, clock=clock)
        try:
            buffer._load_totals()
        except BaseException:
            conn.close()
            raise
        stats = buffer.stats()
        logger.info(
            "opened buffer %s: %d pending batches, %d bytes (max %d, %s)",
            path,
            stats.entries,
            stats.bytes,
            max_bytes,
            policy.value,
        )
        if stats.bytes > max_bytes:
            # E.g. reopened with a smaller bound: nothing is deleted until the next append.
            logger.warning(
                "buffer %s holds %d bytes, above max_bytes %d", path, stats.bytes, max_bytes
            )
        return buffer

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def policy(self) -> OverflowPolicy:
        return self._policy

    def close(self) -> None:
        """Close the database; idempotent. Pending entries stay on disk for the next open."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise BufferStorageError(f"cannot close buffer {self._path}: {exc}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- operations ----------------------------------------------------------------------

    def append(self, batch: TelemetryBatch) -> int:
        """Store ``batch``; its entry id is returned once it is durable on disk.

        Raises ``BufferFullError`` if it does not fit (``REJECT_NEW``, or a batch larger than
        ``max_bytes`` under either policy); nothing is stored or dropped then.
        """
        payload = batch.model_dump_json().encode()
        size = len(payload)
        if size > self._max_bytes:
            raise BufferFullError(
                f"batch {batch.device_id} seq {batch.seq} is {size} bytes,"
                f" more than the buffer's max_bytes {self._max_bytes}"
            )
        appended_at = self._clock().astimezone(UTC).isoformat()
        with self._transaction("append") as conn:
            if self._bytes + size > self._max_bytes:
                if self._policy is OverflowPolicy.REJECT_NEW:
                    raise BufferFullError(
                        f"buffer full ({self._bytes} of {self._max_bytes} bytes): rejected"
                        f" {batch.device_id} seq {batch.seq} ({size} bytes)"
                    )
                self._drop_oldest(conn, self._bytes + size - self._max_bytes)
            cursor = conn.execute(
                "INSERT INTO entries"
                " (gateway_id, device_id, seq, readings, size, appended_at, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    batch.gateway_id,
                    batch.device_id,
                    batch.seq,
                    len(batch.readings),
                    size,
                    appended_at,
                    payload,
                ),
            )
            entry_id = cursor.lastrowid
            if entry_id is None:  # pragma: no cover - an INSERT always sets it
                raise BufferStorageError("SQLite returned no id for an inserted entry")
            self._entries += 1
            self._bytes += size
        return entry_id

    def pending(self, limit: int) -> list[BufferedBatch]:
        """Up to ``limit`` unacknowledged batches, oldest first, earlier runs' included."""
        if limit < 1:
            raise ValueError("limit must be positive")
        with self._locked("read pending batches") as conn:
            rows = conn.execute(
                "SELECT id, gateway_id, device_id, seq, payload, appended_at"
                " FROM entries ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            BufferedBatch(
                entry_id=int(row[0]),
                gateway_id=str(row[1]),
                device_id=str(row[2]),
                seq=int(row[3]),
                payload=bytes(row[4]),
                appended_at=datetime.fromisoformat(str(row[5])),
            )
            for row in rows
        ]

    def ack(self, entry_ids: Iterable[int]) -> int:
        """Delete acknowledged entries; returns how many existed. Unknown ids are ignored
        (an entry may already have been acked, or dropped by overflow)."""
        ids = sorted(set(entry_ids))
        if not ids:
            return 0
        deleted = 0
        freed = 0
        with self._transaction("ack") as conn:
            for start in range(0, len(ids), _ACK_CHUNK):
                chunk = ids[start : start + _ACK_CHUNK]
                marks = ",".join("?" * len(chunk))
                count, size = conn.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries WHERE id IN ({marks})",
                    chunk,
                ).fetchone()
                conn.execute(f"DELETE FROM entries WHERE id IN ({marks})", chunk)
                deleted += int(count)
                freed += int(size)
            self._entries -= deleted
            self._bytes -= freed
        return deleted

    def stats(self) -> BufferStats:
        """Entries and payload bytes stored now, and overflow drops ever counted."""
        with self._locked("read stats") as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            return BufferStats(
                entries=self._entries,
                bytes=self._bytes,
                dropped_batches=int(meta.get("dropped_batches", 0)),
                dropped_readings=int(meta.get("dropped_readings", 0)),
            )

    # -- internals ------------------------------------------------------------------------

    def _load_totals(self) -> None:
        with self._locked("read totals") as conn:
            count, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries"
            ).fetchone()
            self._entries = int(count)
            self._bytes = int(size)

    def _drop_oldest(self, conn: sqlite3.Connection, need: int) -> None:
        """Delete the oldest entries until at least ``need`` bytes are freed; count them."""
        freed = 0
        batches = 0
        readings = 0
        last_id = 0
        cursor = conn.execute("SELECT id, size, readings FROM entries ORDER BY id")
        for entry_id, size, n_readings in cursor:
            if freed >= need:
                break
            freed += int(size)
            batches += 1
            readings += int(n_readings)
            last_id = int(entry_id)
        cursor.close()
        if freed < need:  # pragma: no cover - append checks the batch fits an empty buffer
            raise BufferStorageError("cached totals disagree with the stored entries")
        conn.execute("DELETE FROM entries WHERE id <= ?", (last_id,))
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_batches'", (batches,))
        conn.execute(
            "UPDATE meta SET value = value + ? WHERE key = 'dropped_readings'", (readings,)
        )
        self._entries -= batches
        self._bytes -= freed
        logger.warning(
            "buffer %s full: dropped the %d oldest batches (%d readings, %d bytes)",
            self._path,
            batches,
            readings,
            freed,
        )

    @contextmanager
    def _locked(self, what: str) -> Iterator[sqlite3.Connection]:
        """Hold the lock and translate SQLite errors; for reads outside a transaction."""
        with self._lock:
            if self._conn is None:
                raise BufferStorageError(f"cannot {what}: buffer {self._path} is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise BufferStorageError(f"cannot {what} in buffer {self._path}: {exc}") from exc

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; cached totals roll back with it."""
        with self._locked(what) as conn:
            entries, size = self._entries, self._bytes
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._entries, self._bytes = entries, size
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.exception("rollback failed in buffer %s", self._path)
                raise


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves) with durable settings."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL is required")
        # FULL: each commit fsyncs the WAL, so an acknowledged append survives power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(
                f"schema version {version}, this gateway understands {SCHEMA_VERSION}"
            )
        conn.execute("BEGIN IMMEDIATE")
        # Statement by statement: executescript would commit our transaction first.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn
