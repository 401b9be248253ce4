"""The edge's durable store-and-forward buffer: round trip, restart, overflow, crash, threads."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.buffer import (
    BatchBuffer,
    BufferedBatch,
    BufferFullError,
    BufferStats,
    BufferStorageError,
    OverflowPolicy,
)
from edge.errors import EdgeError
from schemas.telemetry import Reading, TelemetryBatch

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
BIG = 10_000_000


def make_batch(seq: int, readings: int = 1, device_id: str = "press-01") -> TelemetryBatch:
    return TelemetryBatch(
        gateway_id="gw-1",
        device_id=device_id,
        session_id="s-1",
        seq=seq,
        sent_at=T0 + timedelta(seconds=seq),
        readings=[
            Reading(
                ts=T0 + timedelta(seconds=seq, milliseconds=i),
                metric="active_power",
                value=1000.0 + i,
                unit="W",
            )
            for i in range(readings)
        ],
    )


def size_of(batch: TelemetryBatch) -> int:
    return len(batch.model_dump_json().encode())


def open_buffer(
    path: Path, max_bytes: int = BIG, policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
) -> BatchBuffer:
    return BatchBuffer.open(path, max_bytes=max_bytes, policy=policy)


def all_pending(buffer: BatchBuffer) -> list[BufferedBatch]:
    return buffer.pending(1_000_000)


def test_round_trip(tmp_path: Path) -> None:
    batches = [make_batch(seq, readings=seq + 1) for seq in range(5)]
    with open_buffer(tmp_path / "buf.db") as buffer:
        ids = [buffer.append(b) for b in batches]
        assert ids == sorted(ids)
        assert len(set(ids)) == 5

        first = buffer.pending(3)
        assert [p.entry_id for p in first] == ids[:3]
        pending = all_pending(buffer)
        assert [p.entry_id for p in pending] == ids
        for item, batch in zip(pending, batches, strict=True):
            assert item.device_id == batch.device_id
            assert item.gateway_id == batch.gateway_id
            assert item.seq == batch.seq
            assert TelemetryBatch.model_validate_json(item.payload) == batch
            assert item.appended_at.tzinfo is not None
        assert buffer.stats() == BufferStats(
            entries=5, bytes=sum(map(size_of, batches)), dropped_batches=0, dropped_readings=0
        )

        assert buffer.ack([ids[0], ids[2]]) == 2
        assert [p.entry_id for p in all_pending(buffer)] == [ids[1], ids[3], ids[4]]
        assert buffer.ack(ids) == 3
        assert all_pending(buffer) == []
        assert buffer.stats() == BufferStats(0, 0, 0, 0)


def test_appended_at_comes_from_the_clock(tmp_path: Path) -> None:
    at = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    with BatchBuffer.open(
        tmp_path / "buf.db", max_bytes=BIG, policy=OverflowPolicy.DROP_OLDEST, clock=lambda: at
    ) as buffer:
        buffer.append(make_batch(0))
        assert buffer.pending(1)[0].appended_at == at


def test_survives_reopen_with_entries_and_dropped_counters(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    batch = make_batch(0, readings=3)
    size = size_of(batch)
    # Room for exactly two same-sized batches: the third append drops the first.
    with open_buffer(path, max_bytes=2 * size) as buffer:
        ids = [buffer.append(make_batch(seq, readings=3)) for seq in range(3)]
        before = buffer.stats()
        assert before == BufferStats(2, 2 * size, dropped_batches=1, dropped_readings=3)
        kept = all_pending(buffer)

    with open_buffer(path, max_bytes=2 * size) as buffer:
        assert buffer.stats() == before
        assert all_pending(buffer) == kept
        assert [p.entry_id for p in kept] == ids[1:]
        # Ids keep growing across restarts and are never reused after deletion.
        buffer.ack(ids)
        new_id = buffer.append(make_batch(9))
        assert new_id > max(ids)


def test_operations_after_close_raise(tmp_path: Path) -> None:
    buffer = open_buffer(tmp_path / "buf.db")
    buffer.close()
    buffer.close()  # idempotent
    with pytest.raises(BufferStorageError, match="closed"):
        buffer.append(make_batch(0))
    with pytest.raises(BufferStorageError):
        buffer.pending(1)


def test_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    path.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(BufferStorageError) as info:
        open_buffer(path)
    assert isinstance(info.value, EdgeError)
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(BufferStorageError, match="schema version 99"):
        open_buffer(path)


def test_wal_and_full_sync_are_in_force(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    with open_buffer(path) as buffer:
        buffer.append(make_batch(0))
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()
        assert (tmp_path / "buf.db-wal").exists()
        # synchronous is per connection, so ask the buffer's own (2 = FULL).
        own = buffer._conn
        assert own is not None
        assert own.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        open_buffer(tmp_path / "buf.db", max_bytes=0)
    with open_buffer(tmp_path / "buf.db") as buffer, pytest.raises(ValueError, match="limit"):
        buffer.pending(0)


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import UTC, datetime, timedelta
    from edge.buffer import BatchBuffer, OverflowPolicy
    from schemas.telemetry import Reading, TelemetryBatch

    path, n = sys.argv[1], int(sys.argv[2])
    t0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    buffer = BatchBuffer.open(path, max_bytes=10_000_000, policy=OverflowPolicy.DROP_OLDEST)
    for seq in range(n):
        batch = TelemetryBatch(
            gateway_id="gw-1", device_id="press-01", session_id="s-1", seq=seq, sent_at=t0,
            readings=[Reading(ts=t0 + timedelta(seconds=seq), metric="active_power",
                              value=float(seq), unit="W")],
        )
        entry_id = buffer.append(batch)
        # Reported only once append has returned, i.e. once the entry is durable.
        print(entry_id, seq, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_after_append_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    n = 200
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(n)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    reported = [tuple(map(int, line.split())) for line in proc.stdout.splitlines()]
    assert len(reported) == n
    # Killed without close: the entries live only in the WAL until recovery on reopen.
    assert (tmp_path / "buf.db-wal").exists()

    with open_buffer(path) as buffer:
        pending = all_pending(buffer)
        assert [(p.entry_id, p.seq) for p in pending] == reported
        for p in pending:
            assert TelemetryBatch.model_validate_json(p.payload).seq == p.seq
        assert buffer.stats().entries == n


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_drop_oldest_stays_bounded_and_counts_exactly(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    batches = [make_batch(seq, readings=rng.randint(1, 40)) for seq in range(150)]
    max_bytes = max(map(size_of, batches)) * 4
    model: deque[tuple[int, int, int]] = deque()  # (entry id, size, readings)
    dropped_batches = dropped_readings = 0

    with open_buffer(tmp_path / "buf.db", max_bytes=max_bytes) as buffer:
        for batch in batches:
            size = size_of(batch)
            while model and sum(s for _, s, _ in model) + size > max_bytes:
                _, _, readings = model.popleft()
                dropped_batches += 1
                dropped_readings += readings
            entry_id = buffer.append(batch)
            model.append((entry_id, size, len(batch.readings)))
            # Acknowledge some along the way, as the publisher would.
            if rng.random() < 0.1 and model:
                acked = model.popleft()
                assert buffer.ack([acked[0]]) == 1

            stats = buffer.stats()
            assert stats.bytes <= max_bytes
            assert stats == BufferStats(
                entries=len(model),
                bytes=sum(s for _, s, _ in model),
                dropped_batches=dropped_batches,
                dropped_readings=dropped_readings,
            )
            assert [p.entry_id for p in all_pending(buffer)] == [i for i, _, _ in model]
        assert dropped_batches > 0


@pytest.mark.parametrize("policy", list(OverflowPolicy))
def test_batch_larger_than_the_whole_buffer_is_rejected(
    tmp_path: Path, policy: OverflowPolicy
) -> None:
    small = make_batch(0)
    with open_buffer(tmp_path / "buf.db", max_bytes=size_of(small) * 2, policy=policy) as buffer:
        buffer.append(small)
        with pytest.raises(BufferFullError, match="more than"):
            buffer.append(make_batch(1, readings=50))
        # Nothing was dropped to make room for a batch that could never fit.
        assert buffer.stats() == BufferStats(1, size_of(small), 0, 0)


def test_reject_new_raises_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    size = size_of(make_batch(0))
    with open_buffer(path, max_bytes=3 * size, policy=OverflowPolicy.REJECT_NEW) as buffer:
        ids = [buffer.append(make_batch(seq)) for seq in range(3)]
        before = buffer.stats()
        kept = all_pending(buffer)
        with pytest.raises(BufferFullError) as info:
            buffer.append(make_batch(3))
        assert isinstance(info.value, EdgeError)
        assert buffer.stats() == before
        assert before.dropped_batches == 0
        assert all_pending(buffer) == kept
        # Room again once something is acknowledged.
        buffer.ack(ids[:1])
        buffer.append(make_batch(3))
    with open_buffer(path, max_bytes=3 * size, policy=OverflowPolicy.REJECT_NEW) as buffer:
        assert [p.seq for p in all_pending(buffer)] == [1, 2, 3]


def test_ack_of_unknown_ids_is_harmless(tmp_path: Path) -> None:
    with open_buffer(tmp_path / "buf.db") as buffer:
        ids = [buffer.append(make_batch(seq)) for seq in range(3)]
        before = buffer.stats()
        assert buffer.ack([]) == 0
        assert buffer.ack([max(ids) + 1, max(ids) + 1000, -5]) == 0
        assert buffer.stats() == before
        # Acking twice, or mixing known and unknown ids, counts only what existed.
        assert buffer.ack([ids[0], ids[0], 12345]) == 1
        assert buffer.ack([ids[0]]) == 0
        assert [p.entry_id for p in all_pending(buffer)] == ids[1:]


def test_ack_of_many_ids_at_once(tmp_path: Path) -> None:
    with open_buffer(tmp_path / "buf.db") as buffer:
        ids = [buffer.append(make_batch(seq)) for seq in range(1200)]
        assert buffer.ack(ids[:1100]) == 1100
        assert [p.entry_id for p in all_pending(buffer)] == ids[1100:]
        assert buffer.stats().entries == 100


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_concurrent_ack_while_appending_loses_nothing(tmp_path: Path, seed: int) -> None:
    """The poller appends while another thread (paho's, in production) acks at random."""
    path = tmp_path / "buf.db"
    n = 400
    appended: list[int] = []
    acked: set[int] = set()
    errors: list[BaseException] = []
    done = threading.Event()

    with open_buffer(path) as buffer:

        def poller() -> None:
            rng = random.Random(seed)
            try:
                for seq in range(n):
                    appended.append(buffer.append(make_batch(seq, readings=rng.randint(1, 5))))
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        def network() -> None:
            rng = random.Random(seed + 1000)
            try:
                while True:
                    finished = done.is_set()
                    batch = buffer.pending(rng.randint(1, 20))
                    chosen = [p.entry_id for p in batch if rng.random() < 0.5]
                    # Include ids never issued and ids acked before: both must be harmless.
                    buffer.ack([*chosen, -1, *list(acked)[:2]])
                    acked.update(chosen)
                    if finished:
                        return
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=poller), threading.Thread(target=network)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors
        assert len(appended) == n
        assert acked <= set(appended)

        expected = [i for i in appended if i not in acked]
        assert [p.entry_id for p in all_pending(buffer)] == expected
        assert buffer.stats().entries == len(expected)

    with open_buffer(path) as buffer:
        assert [p.entry_id for p in all_pending(buffer)] == expected
