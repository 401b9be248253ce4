"""paho-mqtt's network I/O on the asyncio event loop, instead of in a thread of paho's own.

With ``loop_start()`` paho reads in its own thread and every message crosses over to the
event loop: the two threads fight for the GIL, and paho's loop makes one ``select()`` per
packet. ``AsyncioNetworkLoop`` drives the same client through paho's external-loop API:
the event loop watches the socket and calls ``loop_read``/``loop_write`` (several packets
per wake-up, within a budget), and a timer calls ``loop_misc`` (keepalive). The client's
callbacks (on_connect, on_message, ...) run on the event loop, in the middle of a read.

    network = AsyncioNetworkLoop(client)     # client configured, callbacks set
    await network.connect(host, port, keepalive)
    ...                                      # on_message: remember network.connection
    network.ack(message.mid, message.qos, connection)
    await network.close()

Threads: everything that touches the client runs on the event loop's thread, with one
exception. Opening a connection (paho's ``reconnect()``: TCP connect and TLS handshake,
which block) runs in a worker thread; meanwhile the socket is not watched, the keepalive
timer leaves the client alone, ``ack`` sends nothing and ``connected`` is False. Callers
must not publish, subscribe or unsubscribe while ``connected`` is False; on_connect runs
once the broker has accepted the connection and is the place to subscribe.

Reconnecting: ``loop_start()`` would reconnect by itself; here this class does, with
backoff, until ``close()``. A persistent session (MQTT 3.1.1 clean session off, MQTT 5
clean start off) is resumed by the broker, which delivers unacknowledged messages again.
End the connection with ``close()``, not ``client.disconnect()``, which would be taken
for a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
from typing import TYPE_CHECKING, Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.client import CallbackOnConnect, CallbackOnConnect_v2
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from carbonflow.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

logger = logging.getLogger(__name__)


class ConnectionAttemptError(ServiceUnavailableError):
    """The broker could not be reached, refused the connection or did not answer in time."""


class _State(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"  # an attempt is under way (first connection or reconnecting)
    CONNECTED = "connected"  # CONNACK accepted
    CLOSING = "closing"
    CLOSED = "closed"


class AsyncioNetworkLoop:
    """Runs a paho client's network I/O on the running asyncio event loop.

    Create it for a configured client (callback API 2, not yet connected, no
    ``loop_start()``), before ``connect()``. ``read_budget`` bounds the packets handled per
    wake-up, so a flood of messages cannot starve the event loop. ``connect_timeout_s``
    bounds one connection attempt (TCP, TLS and CONNACK); after a lost connection attempts
    are spaced from ``reconnect_min_s`` doubling up to ``reconnect_max_s``.

    The client's callbacks should not raise: an exception goes to the event loop's
    exception handler, and paho hands the same packet to them again on its next read.
    """

    def __init__(
        self,
        client: mqtt.Client,
        *,
        read_budget: int = 256,
        connect_timeout_s: float = 15.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        misc_interval_s: float = 1.0,
    ) -> None:
        if client.callback_api_version is not CallbackAPIVersion.VERSION2:
            raise ValueError("AsyncioNetworkLoop needs a client with callback API version 2")
        if read_budget < 1:
            raise ValueError("read_budget must be at least 1")
        self._client = client
        self._read_budget = read_budget
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._misc_interval_s = misc_interval_s
        self._state = _State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._target: tuple[str, int, int, dict[str, Any]] | None = None
        self._user_on_connect: CallbackOnConnect | None = None
        self._fd: int | None = None  # the socket's descriptor, while the loop watches it
        self._writing = False
        self._connection = 0
        self._session_present = False
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._socket_closed = asyncio.Event()
        self._misc_timer: asyncio.TimerHandle | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    @property
    def client(self) -> mqtt.Client:
        """The client it drives; publish, subscribe and unsubscribe only while connected."""
        return self._client

    @property
    def connected(self) -> bool:
        """The broker has accepted the current connection (CONNACK) and it is up."""
        return self._state is _State.CONNECTED

    @property
    def connection(self) -> int:
        """Number of the current connection, counting from 1; a new one on every reconnect.

        Read it when a message arrives and give it back to ``ack``.
        """
        return self._connection

    async def connect(self, host: str, port: int, keepalive: int = 60, **options: Any) -> None:
        """Open the connection and wait until the broker accepts it (CONNACK).

        ``options`` go to paho's ``connect_async`` (MQTT 5: ``clean_start``,
        ``properties``). The client's on_connect runs before this returns, and again on
        every reconnection; set it before calling. Raises ``ServiceUnavailableError`` when
        the broker cannot be reached, refuses the connection or does not answer within
        ``connect_timeout_s``; nothing is left watched then, and connect() may be tried again.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"connect() on a network loop that is {self._state.value}")
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._target = (host, port, keepalive, options)
        client = self._client
        self._user_on_connect = client.on_connect
        client.on_connect = self._on_connect
        self._state = _State.CONNECTING
        try:
            await self._connect_once()
        except BaseException:
            client.on_connect = self._user_on_connect
            self._state = _State.NEW
            raise
        self._misc_timer = loop.call_later(self._misc_interval_s, self._misc)
        logger.info(
            "MQTT connected to %s (connection %d, session present: %s)",
            self._address,
            self._connection,
            self._session_present,
        )

    def ack(self, mid: int, qos: int, connection: int) -> bool:
        """Acknowledge a message (PUBACK for QoS 1, PUBCOMP for QoS 2) that arrived on
        ``connection``; the packet leaves after whatever is queued before it.

        False, and nothing sent, when that connection is gone: the broker delivers the
        message again on a later connection, and an acknowledgement sent there could name
        another message that got the same packet id (a broker that lost the session
        reuses them), or reach the broker before the CONNECT.
        """
        if connection != self._connection or self._state is not _State.CONNECTED:
            return False
        self._client.ack(mid, qos)
        return True

    async def close(
        self,
        *,
        reasoncode: ReasonCode | None = None,
        properties: Properties | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        """Stop reconnecting, send DISCONNECT after what is queued (acknowledgements,
        publishes), wait until it is written, and detach from the client.

        A clean DISCONNECT: the broker does not publish the will, and keeps a persistent
        session (MQTT 5: unless ``properties`` set its expiry to 0). Nothing is delivered
        once close() has begun. Call it after connect() has returned or failed.
        """
        if self._state in (_State.NEW, _State.CLOSED):
            self._detach()
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSING
        reconnecting = self._reconnecting
        if reconnecting is not None and not reconnecting.done():
            reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconnecting
        fd = self._fd
        if fd is not None:
            self._event_loop.remove_reader(fd)
            self._client.disconnect(reasoncode, properties)
            try:
                async with asyncio.timeout(timeout_s):
                    await self._socket_closed.wait()
            except TimeoutError:
                logger.warning(
                    "MQTT DISCONNECT to %s not written within %gs; closing the socket",
                    self._address,
                    timeout_s,
                )
                self._abandon_socket()
        self._detach()
        self._state = _State.CLOSED
        logger.info("MQTT disconnected from %s", self._address)

    # -- connecting ---------------------------------------------------------------------

    async def _connect_once(self) -> None:
        """One attempt: open the socket, send CONNECT, wait for the CONNACK."""
        host, port, keepalive, options = self._require_target()
        # Records where to connect, and closes (here, on the loop thread) any socket an
        # earlier attempt left open.
        self._client.connect_async(host, port, keepalive, **options)
        connack = self._connack = self._event_loop.create_future()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._open_socket()
                reason = await connack
        except TimeoutError as exc:
            self._abandon_socket()
            raise ConnectionAttemptError(
                f"MQTT at {host}:{port}: no answer within {self._connect_timeout_s:g}s"
            ) from exc
        except asyncio.CancelledError:
            self._abandon_socket()
            raise
        finally:
            self._connack = None
        if reason.is_failure:
            raise ConnectionAttemptError(f"MQTT at {host}:{port} refused the connection: {reason}")

    async def _open_socket(self) -> None:
        """paho's ``reconnect()`` (TCP connect, TLS handshake, CONNECT queued) in a worker
        thread, since it blocks; then the socket is watched from the loop."""
        host, port, _, _ = self._require_target()
        worker = self._event_loop.run_in_executor(None, self._client.reconnect)
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            # A thread cannot be interrupted: let it finish (paho bounds it by the client's
            # connect_timeout), then the caller closes what it opened.
            with contextlib.suppress(Exception):
                await worker
            raise
        except OSError as exc:  # refused, unreachable, name lookup, TLS
            raise ConnectionAttemptError(f"MQTT at {host}:{port}: {exc}") from exc
        sock = self._client.socket()
        if sock is None:
            raise ConnectionAttemptError(f"MQTT at {host}:{port}: the connection closed at once")
        self._watch(sock)

    def _abandon_socket(self) -> None:
        """Close paho's socket now, without a DISCONNECT, and without reconnecting.

        paho's only public way to drop a connection that is hung or not yet accepted:
        ``connect_async()`` terminates an existing connection immediately (and records
        where to connect next, which is where it already was).
        """
        if self._client.socket() is None:
            return
        if self._state is _State.CONNECTED:
            self._state = _State.CONNECTING  # so the closing socket starts no reconnection
        host, port, keepalive, options = self._require_target()
        self._client.connect_async(host, port, keepalive, **options)

    async def _reconnect(self) -> None:
        """Connect again after a lost connection, with backoff, until connected or closed."""
        # A pause before the first attempt too: a broker that drops the client right after
        # accepting it (another client took over its client id, say) gets no reconnect storm.
        await asyncio.sleep(self._reconnect_min_s)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(ConnectionAttemptError),
            wait=wait_exponential_jitter(
                multiplier=self._reconnect_min_s,
                max=self._reconnect_max_s,
                jitter=self._reconnect_min_s,
            ),
            before_sleep=self._log_failed_attempt,
        )
        async for attempt in retrying:
            with attempt:
                await self._connect_once()
                if self._state is not _State.CONNECTED:
                    raise ConnectionAttemptError(
                        f"MQTT at {self._address}: the connection was lost right after CONNACK"
                    )
        logger.info(
            "MQTT reconnected to %s (connection %d, session present: %s)",
            self._address,
            self._connection,
            self._session_present,
        )

    def _log_failed_attempt(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "MQTT reconnection attempt %d failed (%s); next in %.1fs",
            state.attempt_number,
            error,
            wait,
        )

    def _reconnect_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("MQTT reconnecting stopped by an unexpected error", exc_info=error)

    # -- paho's callbacks -----------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Connected before the client's own on_connect runs, so it may subscribe and publish.
        if not reason.is_failure and self._state is _State.CONNECTING:
            self._state = _State.CONNECTED
            self._session_present = flags.session_present
        try:
            if self._user_on_connect is not None:
                user_on_connect = cast(CallbackOnConnect_v2, self._user_on_connect)
                user_on_connect(client, userdata, flags, reason, properties)
        finally:
            connack = self._connack
            if connack is not None and not connack.done():
                connack.set_result(reason)

    def _on_socket_open(self, _client: mqtt.Client, _userdata: Any, sock: SocketLike) -> None:
        # paho opens sockets in reconnect(): normally in the worker thread, where
        # _open_socket watches the socket once the thread is done; on the loop thread only
        # when paho reconnects by itself on a CONNACK (protocol downgrade).
        if self._on_loop_thread():
            self._watch(sock)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: SocketLike) -> None:
        if self._loop is None or self._loop.is_closed():
            return  # a client dropped without close(), after its event loop ended
        # Called just before paho closes the socket, so its descriptor is still its own.
        if self._on_loop_thread():
            self._socket_gone(sock.fileno())
        else:
            self._loop.call_soon_threadsafe(self._socket_gone, sock.fileno())

    def _on_socket_register_write(
        self, _client: mqtt.Client, _userdata: Any, _sock: SocketLike
    ) -> None:
        # From the worker thread (CONNECT queued) this is left to _watch.
        if self._on_loop_thread() and self._fd is not None and not self._writing:
            self._writing = True
            self._event_loop.add_writer(self._fd, self._on_writable)

    def _on_socket_unregister_write(
        self, _client: mqtt.Client, _userdata: Any, _sock: SocketLike
    ) -> None:
        if self._on_loop_thread():
            self._stop_writing()

    # -- the socket -----------------------------------------------------------------------

    def _watch(self, sock: SocketLike) -> None:
        fd = sock.fileno()
        loop = self._event_loop
        self._fd = fd
        self._connection += 1
        self._socket_closed.clear()
        loop.add_reader(fd, self._on_readable)
        # The CONNECT waits to be written: paho asked for that from the worker thread, where
        # the request was left for here. paho now takes its write interest as registered.
        self._writing = True
        loop.add_writer(fd, self._on_writable)

    def _stop_writing(self) -> None:
        if self._writing and self._fd is not None:
            self._event_loop.remove_writer(self._fd)
        self._writing = False

    def _socket_gone(self, fd: int) -> None:
        """paho closed the socket: connection lost, refused, dropped or ended by close()."""
        if fd != self._fd:
            return  # one an attempt opened and dropped before the loop watched it
        self._stop_writing()
        self._event_loop.remove_reader(fd)
        self._fd = None
        self._socket_closed.set()
        connack = self._connack
        if connack is not None and not connack.done():
            connack.set_exception(
                ConnectionAttemptError(
                    f"MQTT at {self._address} closed the connection before accepting it"
                )
            )
        if self._state is _State.CONNECTED:
            self._state = _State.CONNECTING
            logger.warning("MQTT connection to %s lost; reconnecting", self._address)
            # A reconnection still under way (lost again right after its CONNACK) notices
            # by itself and tries again.
            if self._reconnecting is None or self._reconnecting.done():
                self._reconnecting = self._event_loop.create_task(self._reconnect())
                self._reconnecting.add_done_callback(self._reconnect_done)

    def _on_readable(self) -> None:
        client = self._client
        for _ in range(self._read_budget):
            rc, whole_packet = _read_packet(client)
            if rc is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # paho has closed the socket; _socket_gone has run
            if not whole_packet:
                break  # nothing more to read now
        # Past the budget the loop calls again while the socket has data; bytes TLS has
        # already decrypted do not show on the socket, so those get a call of their own.
        sock = client.socket()
        pending = getattr(sock, "pending", None)
        if pending is not None and pending() > 0:
            self._event_loop.call_soon(self._on_readable)

    def _on_writable(self) -> None:
        # paho withdraws its write interest once its queue is empty (unregister_write) and
        # closes the socket on errors; the check below keeps an empty queue from waking the
        # loop again should paho's note of its interest ever disagree with ours.
        self._client.loop_write()
        if not self._client.want_write():
            self._stop_writing()

    def _misc(self) -> None:
        """Keepalive: PINGREQ when idle, and a lost connection noticed when PINGRESP fails."""
        if self._state is _State.CONNECTED and self._fd is not None:
            self._client.loop_misc()
        self._misc_timer = self._event_loop.call_later(self._misc_interval_s, self._misc)

    def _detach(self) -> None:
        if self._misc_timer is not None:
            self._misc_timer.cancel()
            self._misc_timer = None
        if self._fd is not None:
            self._stop_writing()
            self._event_loop.remove_reader(self._fd)
            self._fd = None
        client = self._client
        client.on_socket_open = None
        client.on_socket_close = None
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None
        if client.on_connect == self._on_connect:
            client.on_connect = self._user_on_connect

    # -- small helpers --------------------------------------------------------------------

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    @property
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the network loop has not connected yet")
        return self._loop

    @property
    def _address(self) -> str:
        return f"{self._target[0]}:{self._target[1]}" if self._target else "(not connected)"

    def _require_target(self) -> tuple[str, int, int, dict[str, Any]]:
        if self._target is None:
            raise RuntimeError("the network loop has not connected yet")
        return self._target


def _read_packet(client: mqtt.Client) -> tuple[MQTTErrorCode, bool]:
    """``client.loop_read()`` once; also whether it handled a whole packet (True) or found
    nothing more to read (False).

    loop_read() answers MQTT_ERR_SUCCESS both after handling a packet and when a read would
    block, and paho has no public way to tell these apart short of a select() per packet
    (what its own loop does, and what reading on the event loop avoids). paho keeps the
    packet being read in ``_in_packet`` and replaces that dict with a fresh one after each
    whole packet, while a read that would block leaves it as it was. Should a paho release
    do otherwise, this answers False every time: one packet per wake-up, still correct.
    """
    reading = getattr(client, "_in_packet", None)
    rc = client.loop_read()
    return rc, reading is not None and getattr(client, "_in_packet", None) is not reading
