"""Poll results on disk at once; a full buffer is counted and logged, as its policy says.

The MQTT link here is never started (nothing is published): statuses wait for a connect.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carbonflow.config import MqttSettings
from edge.buffer import BatchBuffer, OverflowPolicy
from edge.gateway.announcer import DeviceAnnouncer
from edge.gateway.link import MqttLink
from edge.gateway.metrics import GatewayMetrics
from edge.gateway.presence import DevicePresence, GatewayPresence
from edge.gateway.recorder import PollRecorder
from schemas.telemetry import Reading, TelemetryBatch

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
MQTT = MqttSettings(topic_root="plant/v1")


def clock() -> datetime:
    return T0


def recorder_for(buffer: BatchBuffer, metrics: GatewayMetrics) -> PollRecorder:
    link = MqttLink(
        MQTT,
        client_id="gw-1",
        tls=None,
        presence=GatewayPresence(MQTT, "gw-1", "s1", ["m1"]),
        clock=clock,
        max_inflight=5,
        reconnect_min_s=1,
        reconnect_max_s=2,
    )
    announcer = DeviceAnnouncer(link, DevicePresence(MQTT, "gw-1", "s1"), clock)
    return PollRecorder(
        buffer,
        gateway_id="gw-1",
        session_id="s1",
        max_batch_readings=100,
        metrics=metrics,
        announcer=announcer,
        clock=clock,
    )


def poll(k: int, n: int = 20) -> list[Reading]:
    ts = T0 + timedelta(seconds=k)
    return [Reading(ts=ts, metric="active_power", value=float(i), unit="W") for i in range(n)]


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def stored(path: Path) -> list[TelemetryBatch]:
    with BatchBuffer.open(path, max_bytes=10**9, policy=OverflowPolicy.DROP_OLDEST) as buffer:
        return [TelemetryBatch.model_validate_json(e.payload) for e in buffer.pending(1000)]


def test_each_poll_is_on_disk_when_it_has_been_recorded(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    metrics = GatewayMetrics()

    async def run() -> None:
        with BatchBuffer.open(path, max_bytes=10**9, policy=OverflowPolicy.DROP_OLDEST) as buf:
            recorder = recorder_for(buf, metrics)
            for k in range(3):
                await recorder.polled("m1", poll(k, n=2))
                # Read back through a second connection: committed, not merely queued.
                assert len(stored(path)) == k + 1

    asyncio.run(run())
    batches = stored(path)
    assert [b.seq for b in batches] == [0, 1, 2]
    assert [r for b in batches for r in b.readings] == poll(0, 2) + poll(1, 2) + poll(2, 2)
    assert sample(metrics, "carbonflow_gateway_readings_polled_total", device="m1") == 6
    assert sample(metrics, "carbonflow_gateway_pending_batches") == 3
    assert sample(metrics, "carbonflow_gateway_device_up", device="m1") == 1


def test_a_full_buffer_rejecting_new_readings_counts_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "buffer.sqlite"
    metrics = GatewayMetrics()

    async def run() -> None:
        with BatchBuffer.open(path, max_bytes=3000, policy=OverflowPolicy.REJECT_NEW) as buf:
            recorder = recorder_for(buf, metrics)
            for k in range(4):
                await recorder.polled("m1", poll(k))

    with caplog.at_level(logging.WARNING, logger="edge.gateway.recorder"):
        asyncio.run(run())
    kept = stored(path)
    rejected = 4 - len(kept)
    assert 1 <= len(kept) < 4
    assert [b.seq for b in kept] == list(range(len(kept)))  # the oldest stay
    assert sample(metrics, "carbonflow_gateway_buffer_full_events_total", policy="reject_new") == (
        rejected
    )
    assert sample(
        metrics, "carbonflow_gateway_readings_dropped_total", reason="buffer_full_rejected_new"
    ) == (20 * rejected)
    assert sum("buffer full (reject_new)" in r.getMessage() for r in caplog.records) == rejected


def test_a_full_buffer_dropping_the_oldest_counts_what_it_dropped(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite"
    metrics = GatewayMetrics()

    async def run() -> None:
        with BatchBuffer.open(path, max_bytes=3000, policy=OverflowPolicy.DROP_OLDEST) as buf:
            recorder = recorder_for(buf, metrics)
            for k in range(6):
                await recorder.polled("m1", poll(k))

    asyncio.run(run())
    kept = stored(path)
    assert kept[-1].seq == 5  # the freshest stay
    dropped = 6 - len(kept)
    assert dropped >= 1
    assert sample(
        metrics, "carbonflow_gateway_readings_dropped_total", reason="buffer_full_dropped_oldest"
    ) == (20 * dropped)
    assert sample(metrics, "carbonflow_gateway_buffer_full_events_total", policy="drop_oldest") >= 1


def test_a_failed_poll_marks_the_meter_down(tmp_path: Path) -> None:
    metrics = GatewayMetrics()
    with BatchBuffer.open(
        tmp_path / "b.sqlite", max_bytes=10**6, policy=OverflowPolicy.DROP_OLDEST
    ) as buf:
        recorder_for(buf, metrics).failed("m1", "connection refused")
    assert sample(metrics, "carbonflow_gateway_poll_failures_total", device="m1") == 1
    assert sample(metrics, "carbonflow_gateway_device_up", device="m1") == 0
