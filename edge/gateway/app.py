"""The gateway's composition root: from the config file to a running gateway, until stopped.

Start-up never waits for the broker: meters are polled and their readings buffered from the
first second, and whatever an earlier run left in the buffer goes out once connected. A
clean stop (SIGINT, SIGTERM) ends the polls, publishes what the buffer holds for up to
``shutdown_timeout_s``, announces the gateway offline and disconnects; anything left
unacknowledged stays on disk for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from carbonflow.config import MqttSettings
from edge.adapters.base import MeterAdapter
from edge.buffer import BatchBuffer, OverflowPolicy
from edge.config import BackoffSettings, DeviceConfig, GatewayConfig, load_config
from edge.gateway.announcer import DeviceAnnouncer
from edge.gateway.devices import (
    AdapterFactory,
    AdapterUnavailableError,
    SimulationSettings,
    adapter_factory,
)
from edge.gateway.forwarding import Forwarder
from edge.gateway.link import MqttLink
from edge.gateway.metrics import GatewayMetrics
from edge.gateway.polling import DevicePoller
from edge.gateway.presence import DevicePresence, GatewayPresence
from edge.gateway.recorder import PollRecorder
from edge.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def new_session_id() -> str:
    """A fresh id per start (from the OS, never from a seed): ingest tells restarts by it."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class _Parts:
    """The gateway's parts, wired together."""

    presence: GatewayPresence
    link: MqttLink
    forwarder: Forwarder
    announcer: DeviceAnnouncer
    recorder: PollRecorder


class _LinkEvents:
    """Fans the link's events out to the parts that care."""

    def __init__(self, forwarder: Forwarder, announcer: DeviceAnnouncer) -> None:
        self._forwarder = forwarder
        self._announcer = announcer

    def connected(self) -> None:
        self._forwarder.connected()
        self._announcer.connected()

    def disconnected(self) -> None:
        self._forwarder.disconnected()

    def acknowledged(self, mid: int, error: str | None) -> None:
        self._forwarder.acknowledged(mid, error)

    def unrouted(self, mid: int) -> None:
        self._forwarder.unrouted(mid)


class Gateway:
    """One gateway, as its config file describes it."""

    def __init__(
        self,
        config: GatewayConfig,
        settings: GatewaySettings,
        *,
        password: SecretStr | None = None,
        metrics: GatewayMetrics | None = None,
        adapters: AdapterFactory | None = None,
        session_id: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._config = config
        self._settings = settings
        self._metrics = metrics if metrics is not None else GatewayMetrics()
        self._adapters = adapters or adapter_factory(
            SimulationSettings(
                gateway_id=config.gateway_id,
                seed=settings.sim_seed,
                counter_origin=settings.sim_counter_origin,
            )
        )
        self._session_id = session_id or new_session_id()
        self._clock = clock
        broker = config.broker
        self._mqtt = MqttSettings(
            host=broker.host,
            port=broker.port,
            username=broker.username,
            password=password,
            topic_root=config.topic_root,
            keepalive_s=broker.keepalive_s,
        )

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def metrics(self) -> GatewayMetrics:
        return self._metrics

    @property
    def mqtt(self) -> MqttSettings:
        """Where this gateway connects and the topics it uses."""
        return self._mqtt

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly."""
        settings = self._config.buffer
        settings.path.parent.mkdir(parents=True, exist_ok=True)
        buffer = BatchBuffer.open(
            settings.path,
            max_bytes=settings.max_bytes,
            policy=OverflowPolicy(settings.overflow_policy),
        )
        try:
            await self._run(buffer, stop)
        finally:
            buffer.close()

    async def _run(self, buffer: BatchBuffer, stop: asyncio.Event) -> None:
        config, metrics = self._config, self._metrics
        logger.info(
            "gateway %s session %s: %d meters, broker %s:%d, buffer %s",
            config.gateway_id,
            self._session_id,
            len(config.devices),
            config.broker.host,
            config.broker.port,
            config.buffer.path,
        )
        stats = buffer.stats()
        metrics.pending_batches.set(stats.entries)
        metrics.buffer_bytes.set(stats.bytes)
        metrics.buffer_max_bytes.set(buffer.max_bytes)
        metrics.broker_connected.set(0)
        parts = self._assemble(buffer)
        adapters = self._make_adapters(parts.recorder)
        parts.link.start(asyncio.get_running_loop(), _LinkEvents(parts.forwarder, parts.announcer))
        poll_stop, forward_stop = asyncio.Event(), asyncio.Event()
        pollers = [
            asyncio.create_task(
                DevicePoller(
                    adapter,
                    parts.recorder,
                    poll_interval_s=device.poll_interval_s,
                    timeout_s=device.timeout_s,
                    backoff=device.backoff,
                    clock=self._clock,
                ).run(poll_stop),
                name=f"poll {device.device_id}",
            )
            for device, adapter in adapters
        ]
        forwarding = asyncio.create_task(parts.forwarder.run(forward_stop), name="forward")
        try:
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({stopping, forwarding}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if forwarding.done():
                forwarding.result()  # the forwarder never ends on its own: say why it did
        finally:
            await self._shut_down(pollers, poll_stop, adapters, forwarding, forward_stop)
            await self._say_goodbye(parts)

    def _assemble(self, buffer: BatchBuffer) -> _Parts:
        config, settings, metrics = self._config, self._settings, self._metrics
        gateway_id = config.gateway_id
        gateway_presence = GatewayPresence(
            self._mqtt, gateway_id, self._session_id, [d.device_id for d in config.devices]
        )
        link = MqttLink(
            self._mqtt,
            client_id=gateway_id,
            tls=config.broker.tls,
            presence=gateway_presence,
            clock=self._clock,
            max_inflight=settings.max_inflight,
            reconnect_min_s=settings.reconnect_min_s,
            reconnect_max_s=settings.reconnect_max_s,
        )
        forwarder = Forwarder(
            buffer,
            link,
            self._mqtt,
            session_id=self._session_id,
            batch_interval_s=config.publish.batch_interval_s,
            max_batch_readings=config.publish.max_batch_readings,
            max_inflight=settings.max_inflight,
            rejected_retry_s=settings.rejected_retry_s,
            unrouted_retry=BackoffSettings(
                initial_s=settings.unrouted_retry_initial_s,
                max_s=settings.unrouted_retry_max_s,
            ),
            metrics=metrics,
            clock=self._clock,
        )
        announcer = DeviceAnnouncer(
            link, DevicePresence(self._mqtt, gateway_id, self._session_id), self._clock
        )
        recorder = PollRecorder(
            buffer,
            gateway_id=gateway_id,
            session_id=self._session_id,
            max_batch_readings=config.publish.max_batch_readings,
            metrics=metrics,
            announcer=announcer,
            clock=self._clock,
        )
        return _Parts(gateway_presence, link, forwarder, announcer, recorder)

    def _make_adapters(self, recorder: PollRecorder) -> list[tuple[DeviceConfig, MeterAdapter]]:
        """An adapter per device; a device without one is reported offline, not fatal."""
        made: list[tuple[DeviceConfig, MeterAdapter]] = []
        for device in self._config.devices:
            try:
                made.append((device, self._adapters(device)))
            except AdapterUnavailableError as exc:
                logger.error("meter %s cannot be polled: %s", device.device_id, exc.reason)
                recorder.failed(device.device_id, f"cannot be polled: {exc.reason}")
            except Exception as exc:
                logger.exception("meter %s: building its adapter failed", device.device_id)
                recorder.failed(device.device_id, f"adapter error: {type(exc).__name__}: {exc}")
        return made

    async def _shut_down(
        self,
        pollers: list[asyncio.Task[None]],
        poll_stop: asyncio.Event,
        adapters: list[tuple[DeviceConfig, MeterAdapter]],
        forwarding: asyncio.Task[None],
        forward_stop: asyncio.Event,
    ) -> None:
        poll_stop.set()
        # A poll in progress finishes (it is stored) within its timeout; no new poll starts.
        await asyncio.gather(*pollers, return_exceptions=True)
        await asyncio.gather(*(self._close(adapter) for _, adapter in adapters))
        forward_stop.set()
        await asyncio.gather(forwarding, return_exceptions=True)

    async def _close(self, adapter: MeterAdapter) -> None:
        try:
            async with asyncio.timeout(self._settings.shutdown_timeout_s):
                await adapter.close()
        except Exception:
            logger.exception("closing meter %s failed", adapter.device_id)

    async def _say_goodbye(self, parts: _Parts) -> None:
        timeout_s = self._settings.shutdown_timeout_s
        if await parts.forwarder.drain(timeout_s):
            logger.info("buffer empty: every reading was acknowledged by the broker")
        else:
            logger.warning("stopping with readings still buffered; they go out on the next start")
        death = parts.presence.death(self._clock())
        await asyncio.to_thread(parts.link.close, death, min(timeout_s, 5.0))
        await parts.forwarder.settle()


def run_gateway(config_path: Path, settings: GatewaySettings, environ: Mapping[str, str]) -> None:
    """Entry point: load the config, serve metrics, run until SIGINT or SIGTERM.

    Raises ``ConfigFileError`` or ``SecretUnavailableError`` (both ``EdgeError``) before
    anything starts if the config file or the broker password is unusable.
    """
    config = load_config(config_path)
    password = config.broker.read_password(environ)
    metrics = GatewayMetrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_host, settings.metrics_port)
        logger.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    gateway = Gateway(config, settings, password=password, metrics=metrics)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await gateway.run(stop)

    asyncio.run(main())
