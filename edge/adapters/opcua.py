"""Meters and PLCs read over OPC UA, with asyncua.

One adapter holds one client session to one server. The first read opens it and checks the
configuration against the server once: every node must exist, and where a node publishes an
EngineeringUnits property it must name the unit the config says the value is in (a value
taken as W that is really kW would be wrong by a factor of 1000, silently). Every read after
that is a single Read service call for all of the device's nodes.

What a read reports, node by node:

- quality from the node's StatusCode: Good -> good, Uncertain -> uncertain, Bad -> bad;
- the value converted to the metric's canonical unit;
- the poll's time ``now`` as the reading's time: a polled value holds at the moment it was
  read, whereas many servers move SourceTimestamp only when the value changes, which would
  fold a steady load's polls into one stored sample and show gaps where the meter was fine;
- a sample without a usable number (a Bad status, which carries no value in OPC UA, or a
  null, NaN or infinite value) is dropped and logged when that starts and when it clears:
  the telemetry contract carries measured numbers only, any stand-in would be made up, and
  the missing sample lowers the interval's coverage downstream, so it shows.

A node that does not exist, cannot be read, or holds something other than a number (a
string, a Boolean, an array) is a configuration error rather than a bad sample: it will not
heal by itself, so the read fails with a :class:`MeterReadError` that names every such node,
and the device shows up as failing instead of quietly delivering a partial picture.

The adapter never retries or waits on its own. Any failure of the session (refused,
timed out, lost, closed by the server) drops it, and the next read opens a new one; a
cancelled read (the poller's timeout) drops it too, because a half-finished request leaves
the session in an unknown state. Sessions are closed in the background, each within the
device's timeout, so a hung server never holds up the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError, UaStringParsingError

from edge.adapters.base import MeterReadError
from edge.config import OpcUaDevice
from edge.errors import EdgeError
from edge.registermaps.units import UnitConversion, conversion
from schemas.telemetry import METRIC_UNITS, Quality, Reading

__all__ = [
    "UNECE_CODES",
    "UNECE_NAMESPACE",
    "MisconfiguredNodeError",
    "NodePoint",
    "OpcUaAdapter",
    "decode",
    "engineering_unit",
    "quality_of",
    "unece_unit_id",
]

logger = logging.getLogger(__name__)

#: EUInformation.NamespaceUri of units coded after UNECE Recommendation 20 (OPC UA Part 8).
UNECE_NAMESPACE: Final = "http://www.opcfoundation.org/UA/units/un/cefact"

#: UNECE common codes of the units a node may be configured in (edge.registermaps.units).
UNECE_CODES: Final = {
    "W": "WTT",
    "kW": "KWT",
    "MW": "MAW",
    "var": "D44",
    "kvar": "KVR",
    "VA": "D46",
    "kVA": "KVA",
    "MVA": "MVA",
    "Wh": "WHR",
    "kWh": "KWH",
    "MWh": "MWH",
    "mV": "2Z",
    "V": "VLT",
    "kV": "KVT",
    "mA": "4K",
    "A": "AMP",
    "1": "C62",
    "%": "P1",
    "Hz": "HTZ",
    "m3": "MTQ",
    "L": "LTR",
    "K": "KEL",
    "degC": "CEL",
}

# Read results that mean the node id or the config is wrong, not that a sample is bad.
_MISCONFIGURED: Final = frozenset(
    {
        StatusCodes.BadNodeIdUnknown,
        StatusCodes.BadNodeIdInvalid,
        StatusCodes.BadAttributeIdInvalid,
        StatusCodes.BadNotReadable,
        StatusCodes.BadUserAccessDenied,
    }
)
_NOT_FOUND: Final = frozenset({StatusCodes.BadNodeIdUnknown, StatusCodes.BadNodeIdInvalid})

# The property holding a variable's unit (OPC UA Part 8, AnalogItemType).
_ENGINEERING_UNITS: Final = ua.RelativePath.from_string("<HasProperty>0:EngineeringUnits")
# The server frees the session of a gateway that vanished after this long; the client's
# watchdog keeps a live session from expiring between polls.
_MIN_SESSION_TIMEOUT_S: Final = 60.0


def unece_unit_id(code: str) -> int:
    """EUInformation.UnitId of a UNECE common code, as OPC UA Part 8 encodes it."""
    unit_id = 0
    for char in code:
        unit_id = (unit_id << 8) | ord(char)
    return unit_id


_UNIT_BY_UNIT_ID: Final = {unece_unit_id(code): unit for unit, code in UNECE_CODES.items()}


def engineering_unit(info: object) -> str | None:
    """The unit an EngineeringUnits value names, spelled as in the config; None if unknown."""
    if not isinstance(info, ua.EUInformation):
        return None
    # Servers often leave the namespace empty while still using UNECE codes.
    if info.NamespaceUri not in (UNECE_NAMESPACE, "", None):
        return None
    return _UNIT_BY_UNIT_ID.get(info.UnitId)


def quality_of(status: ua.StatusCode) -> Quality:
    if status.is_good():
        return Quality.GOOD
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


@dataclass(frozen=True)
class NodePoint:
    """One configured node: which metric it feeds and how its value converts."""

    metric: str
    node_text: str
    node_id: ua.NodeId
    unit: str
    to_canonical: UnitConversion

    @property
    def label(self) -> str:
        return f"node {self.node_text} ({self.metric})"


class MisconfiguredNodeError(EdgeError):
    """A node's answer shows that the config is wrong (not that the sample is bad)."""


def decode(point: NodePoint, value: ua.DataValue, now: datetime) -> Reading | None:
    """One node's DataValue as a reading in canonical units; None if it carries no number."""
    status = value.StatusCode if value.StatusCode is not None else ua.StatusCode()
    if status.value in _MISCONFIGURED:
        raise MisconfiguredNodeError(f"{point.label}: {status.name}")
    variant = value.Value
    raw = variant.Value if variant is not None else None
    if raw is None:
        return None
    # bool is an int in Python, but a Boolean node is never a meter value.
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        kind = variant.VariantType.name if variant is not None else type(raw).__name__
        if variant is not None and variant.is_array:
            kind = f"an array of {kind}"
        raise MisconfiguredNodeError(f"{point.label} holds {kind}, not a number")
    number = point.to_canonical.apply(float(raw))
    if not math.isfinite(number):
        return None
    return Reading(
        ts=now,
        metric=point.metric,
        value=number,
        unit=METRIC_UNITS[point.metric],
        quality=quality_of(status),
    )


@dataclass(frozen=True)
class _Session:
    client: Client
    nodes: list[Node]


class OpcUaAdapter:
    """One OPC UA server, read as one meter (see the module docstring for the rules)."""

    def __init__(
        self,
        device_id: str,
        endpoint: str,
        points: list[NodePoint],
        *,
        timeout_s: float,
        session_timeout_s: float = _MIN_SESSION_TIMEOUT_S,
    ) -> None:
        if not points:
            raise ValueError("an OPC UA device needs at least one node")
        self._device_id = device_id
        self._endpoint = endpoint
        self._points = points
        self._timeout_s = timeout_s
        self._session_timeout_s = session_timeout_s
        self._session: _Session | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._without_value: set[str] = set()

    @classmethod
    def from_config(cls, device: OpcUaDevice) -> OpcUaAdapter:
        points = []
        for metric in device.metrics:
            text = device.nodes[metric]
            try:
                node_id = ua.NodeId.from_string(text)
            except UaStringParsingError as exc:
                raise EdgeError(f"{device.device_id}: cannot parse node id {text!r}") from exc
            unit = device.source_unit(metric)
            to_canonical = conversion(unit, METRIC_UNITS[metric])
            if to_canonical is None:  # the config's validation rules this out
                raise EdgeError(f"{device.device_id}: cannot convert {unit!r} for {metric}")
            points.append(NodePoint(metric, text, node_id, unit, to_canonical))
        return cls(
            device.device_id,
            device.endpoint,
            points,
            timeout_s=device.timeout_s,
            session_timeout_s=max(_MIN_SESSION_TIMEOUT_S, 4 * device.poll_interval_s),
        )

    @property
    def device_id(self) -> str:
        return self._device_id

    async def read(self, now: datetime) -> list[Reading]:
        session = await self._open_session()
        try:
            values = await session.client.read_attributes(session.nodes, AttributeIds.Value)
        except asyncio.CancelledError:
            self._drop_session()
            raise
        except Exception as exc:
            self._drop_session()
            raise self._error(f"read failed: {self._describe(exc)}") from exc
        if len(values) != len(self._points):
            self._drop_session()
            raise self._error(f"server answered {len(values)} values for {len(self._points)} nodes")
        readings: list[Reading] = []
        problems: list[str] = []
        without_value: set[str] = set()
        for point, value in zip(self._points, values, strict=True):
            try:
                reading = decode(point, value, now)
            except MisconfiguredNodeError as problem:
                problems.append(str(problem))
                continue
            if reading is None:
                without_value.add(point.metric)
            else:
                readings.append(reading)
        if problems:
            raise self._error("; ".join(problems))
        self._log_missing_values(without_value)
        return readings

    def _log_missing_values(self, metrics: set[str]) -> None:
        # Logged when a metric starts or stops coming without a number, not on every poll.
        for metric in sorted(metrics - self._without_value):
            logger.warning("%s %s: the server sends no usable number", self._device_id, metric)
        for metric in sorted(self._without_value - metrics):
            logger.info("%s %s reads normally again", self._device_id, metric)
        self._without_value = metrics

    async def close(self) -> None:
        self._drop_session()
        if self._closing:
            await asyncio.gather(*self._closing)

    # --- the session ----------------------------------------------------------------------

    async def _open_session(self) -> _Session:
        if self._session is not None:
            if self._session.client.state is UaClientState.CONNECTED:
                return self._session
            # The transport went away since the last read (the client noticed the socket
            # closing); no request is pending on it, so a new session is no retry.
            self._drop_session()
        client = Client(
            self._endpoint,
            timeout=self._timeout_s,
            watchdog_intervall=self._session_timeout_s / 4,
        )
        client.session_timeout = int(self._session_timeout_s * 1000)
        client.description = f"CarbonFlow {self._device_id}"  # names the session on the server
        try:
            await client.connect()
            nodes, problems = await self._resolve_nodes(client)
            if not problems:
                problems = await self._check_nodes(client, nodes)
        except asyncio.CancelledError:
            self._discard(client)
            raise
        except Exception as exc:
            self._discard(client)
            reason = f"cannot open a session with {self._endpoint}: {self._describe(exc)}"
            raise self._error(reason) from exc
        if problems:
            # Closed again so that the next poll checks afresh, e.g. after the PLC program
            # that adds the node has been downloaded.
            self._discard(client)
            raise self._error("; ".join(problems))
        logger.info("%s: OPC UA session open with %s", self._device_id, self._endpoint)
        self._session = _Session(client, nodes)
        return self._session

    async def _resolve_nodes(self, client: Client) -> tuple[list[Node], list[str]]:
        """Node ids with a namespace URI ("nsu=") get the index the server uses today."""
        namespaces: list[str] | None = None
        nodes: list[Node] = []
        problems: list[str] = []
        for point in self._points:
            node_id = point.node_id
            uri = node_id.NamespaceUri if isinstance(node_id, ua.ExpandedNodeId) else None
            if uri:
                if namespaces is None:
                    namespaces = await client.get_namespace_array()
                if uri not in namespaces:
                    problems.append(f"{point.label}: the server has no namespace {uri!r}")
                    continue
                index = ua.Int16(namespaces.index(uri))
                node_id = ua.NodeId(node_id.Identifier, index, node_id.NodeIdType)
            nodes.append(client.get_node(node_id))
        return nodes, problems

    async def _check_nodes(self, client: Client, nodes: list[Node]) -> list[str]:
        """Every node exists; every EngineeringUnits the server publishes matches the config."""
        paths = [
            ua.BrowsePath(StartingNode=node.nodeid, RelativePath=_ENGINEERING_UNITS)
            for node in nodes
        ]
        results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
        problems: list[str] = []
        with_units: list[tuple[NodePoint, Node]] = []
        for point, result in zip(self._points, results, strict=True):
            if result.StatusCode.value in _NOT_FOUND:
                problems.append(f"{point.label} does not exist on the server")
            elif result.StatusCode.is_good() and result.Targets:
                with_units.append((point, client.get_node(result.Targets[0].TargetId)))
        if not with_units:
            return problems
        infos = await client.read_attributes([node for _, node in with_units])
        for (point, _), info in zip(with_units, infos, strict=True):
            server_unit = engineering_unit(info.Value.Value if info.Value is not None else None)
            if server_unit is None:
                logger.debug("%s: units of %s not checked", self._device_id, point.label)
            elif server_unit != point.unit:
                problems.append(self._unit_mismatch(point, server_unit))
        return problems

    @staticmethod
    def _unit_mismatch(point: NodePoint, server_unit: str) -> str:
        canonical = METRIC_UNITS[point.metric]
        where = f"{point.label} is in {server_unit} by its EngineeringUnits, not {point.unit}"
        if conversion(server_unit, canonical) is None:
            return f"{where}, and {server_unit} cannot be converted to {canonical}"
        return f'{where}; set units.{point.metric} = "{server_unit}" if the server is right'

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            self._discard(session.client)

    def _discard(self, client: Client) -> None:
        task = asyncio.create_task(self._dispose(client), name=f"close-opcua-{self._device_id}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _dispose(self, client: Client) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await client.disconnect()
        except Exception as exc:  # the session is being thrown away; nothing to save
            logger.debug("%s: closing the OPC UA session: %r", self._device_id, exc)
        finally:
            client.disconnect_socket()

    # --- errors ---------------------------------------------------------------------------

    def _error(self, reason: str) -> MeterReadError:
        return MeterReadError(self._device_id, reason)

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {self._timeout_s} s"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (is the server running?)"
        if isinstance(exc, ConnectionError):
            return f"connection lost ({exc})"
        if isinstance(exc, OSError):
            return f"network error: {exc.strerror or exc}"
        if isinstance(exc, UaStatusCodeError):
            return f"the server answered {exc}"
        if isinstance(exc, UaError):
            return f"OPC UA error: {exc}"
        # asyncua can raise anything while decoding a malformed answer.
        return f"unexpected {type(exc).__name__}: {exc}"
