"""Sparkplug B host-side session state: births, aliases, seq and bdSeq (pure: no I/O, no clock).

``SparkplugSessions`` keeps, per edge node, what its last NBIRTH and its devices' DBIRTHs
declared (metric names, aliases, datatypes, units) and the last seq seen. ``observe`` takes
one decoded message and says what it means: its metrics resolved against the births, the
presence events and sequence problems it reveals, whether it must be refused, and whether
to ask the node for a rebirth. The caller supplies the receive time.

Rules (Sparkplug B 3.0):

- seq runs 0..255 per edge node over NBIRTH, DBIRTH, NDATA, DDATA and DDEATH and wraps to 0.
  NBIRTH sets it (normally to 0). A seq other than the previous + 1 (mod 256) means that
  many messages went missing: a ``seq_gap`` event. The previous seq again is a redelivery,
  not a gap. A message without a valid seq is taken without a check.
- bdSeq: NBIRTH carries the node's bdSeq, one per MQTT session, and so does the NDEATH (its
  last will). An NDEATH with another bdSeq than the current birth is the stale will of an
  older session: a ``bdseq_mismatch`` event, and the node stays online.
- DBIRTH, DDEATH, NDATA and DDATA need the node's birth, DDATA also its device's birth
  (aliases and datatypes are declared there): without it the message is refused and the
  node is asked to publish its births again (NCMD ``Node Control/Rebirth``), at most once per
  ``rebirth_interval`` per node; each request is a ``data_before_birth`` event.
- NDEATH ends the node and its devices; a new NBIRTH forgets the device births of the last.

Presence events carry the session ``bdseq-<n>``; the store records a transition only when
state or session change, so a rebirth within the same session adds no ``online`` row.

Several ingest instances: births and deaths reach every instance (a plain subscription),
so all know every node's aliases and bdSeq (each also forwards a birth's readings, which the
idempotent store takes once); data messages are spread over the instances (a shared
subscription), so each sees only part of a node's seq. Seq checking is therefore
exact only when one instance takes a node's data; with more, turn it off
(``CARBONFLOW_INGEST_TRACK_SEQUENCES=false``) or the instances report gaps that are the
other instances' messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from schemas import DeadLetterReason, DeviceEvent, EventKind, SourceKind
from schemas.events import DetailValue
from services.ingest.sparkplug.codec import BDSEQ_METRIC, INTEGER_TYPES, SpMetric, SpPayload
from services.ingest.sparkplug.mapping import declared_unit
from services.ingest.sparkplug.topics import MessageType, SparkplugTopic

SEQ_MODULUS: Final = 256


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    """What a birth declared about one metric."""

    name: str
    alias: int | None
    datatype: int
    unit: str | None  # engineering unit from the birth's properties


@dataclass(frozen=True, slots=True)
class ResolvedMetric:
    metric: SpMetric
    definition: MetricDefinition


@dataclass(frozen=True, slots=True)
class MetricProblem:
    metric: SpMetric
    reason: DeadLetterReason
    detail: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """The whole message is refused."""

    reason: DeadLetterReason
    detail: str


@dataclass(slots=True)
class Observation:
    """What one message means."""

    resolved: list[ResolvedMetric] = field(default_factory=list)
    problems: list[MetricProblem] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    refusal: Refusal | None = None
    rebirth: bool = False  # ask the node for its births (NCMD Node Control/Rebirth)
    session: str | None = None  # the node's session, "bdseq-<n>"


@dataclass(slots=True)
class _Definitions:
    by_alias: dict[int, MetricDefinition] = field(default_factory=dict)
    by_name: dict[str, MetricDefinition] = field(default_factory=dict)

    def resolve(self, metric: SpMetric) -> MetricDefinition | None:
        if metric.alias is not None:
            return self.by_alias.get(metric.alias)
        return self.by_name.get(metric.name) if metric.name is not None else None


@dataclass(slots=True)
class _Node:
    bd_seq: int
    seq: int | None
    definitions: _Definitions
    online: bool = True
    devices: dict[str, _Definitions] = field(default_factory=dict)  # devices born and alive

    @property
    def session(self) -> str:
        return session_name(self.bd_seq)


def session_name(bd_seq: int) -> str:
    return f"bdseq-{bd_seq}"


class SparkplugSessions:
    """The state of every edge node ingest has heard of, fed one message at a time."""

    def __init__(self, *, rebirth_interval: timedelta, track_seq: bool = True) -> None:
        self._rebirth_interval = rebirth_interval
        self._track_seq = track_seq
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._rebirth_asked: dict[tuple[str, str], datetime] = {}

    def observe(
        self, topic: SparkplugTopic, payload: SpPayload, *, mqtt_topic: str, received_at: datetime
    ) -> Observation:
        context = _Context(topic, payload, mqtt_topic, received_at)
        match topic.message_type:
            case MessageType.NBIRTH:
                return self._node_birth(context)
            case MessageType.NDEATH:
                return self._node_death(context)
            case MessageType.DBIRTH:
                return self._device_birth(context)
            case MessageType.DDEATH:
                return self._device_death(context)
            case MessageType.NDATA | MessageType.DDATA:
                return self._data(context)
        detail = f"{topic.message_type} is sent by host applications, not taken by ingest"
        return Observation(refusal=Refusal(DeadLetterReason.SCHEMA_VIOLATION, detail))

    # -- message kinds ------------------------------------------------------------------------

    def _node_birth(self, c: _Context) -> Observation:
        seq = c.payload.seq
        if seq is None or not 0 <= seq < SEQ_MODULUS:
            return _refused(DeadLetterReason.SCHEMA_VIOLATION, f"NBIRTH seq {seq} is not 0..255")
        bd_seq = _bd_seq(c.payload)
        if bd_seq is None:
            detail = f"NBIRTH has no integer {BDSEQ_METRIC} metric"
            return _refused(DeadLetterReason.SCHEMA_VIOLATION, detail)
        definitions, observation = _define(c.payload)
        node = _Node(bd_seq=bd_seq, seq=seq, definitions=definitions)
        self._nodes[c.topic.node_key] = node
        observation.session = node.session
        observation.events.append(
            c.event(SourceKind.SPARKPLUG_NODE, EventKind.ONLINE, node.session, bd_seq=bd_seq)
        )
        return observation

    def _node_death(self, c: _Context) -> Observation:
        bd_seq = _bd_seq(c.payload)
        node = self._nodes.get(c.topic.node_key)
        alive = node is not None and node.online
        if node is not None and alive and bd_seq is not None and bd_seq != node.bd_seq:
            event = c.event(
                SourceKind.SPARKPLUG_NODE,
                EventKind.BDSEQ_MISMATCH,
                node.session,
                birth_bd_seq=node.bd_seq,
                death_bd_seq=bd_seq,
            )
            return Observation(events=[event], session=node.session)
        # Without a birth (or without a bdSeq) the death cannot be checked; it is recorded
        # all the same, marked unverified.
        verified = node is not None and alive and bd_seq == node.bd_seq
        session = session_name(bd_seq) if bd_seq is not None else None
        observation = Observation(session=session)
        observation.events.append(
            c.event(
                SourceKind.SPARKPLUG_NODE,
                EventKind.OFFLINE,
                session,
                bd_seq=bd_seq,
                verified=verified,
            )
        )
        if node is not None and alive:
            for device_id in sorted(node.devices):
                observation.events.append(
                    c.event(
                        SourceKind.SPARKPLUG_DEVICE,
                        EventKind.OFFLINE,
                        session,
                        source_id=f"{c.topic.node_source_id}/{device_id}",
                        cause="node_death",
                    )
                )
            node.online = False
            node.devices.clear()
        return observation

    def _device_birth(self, c: _Context) -> Observation:
        node = self._born_node(c)
        if node is None:
            return self._before_birth(c)
        gap = self._check_seq(node, c)
        definitions, observation = _define(c.payload)
        assert c.topic.device_id is not None  # a device message always names its device
        node.devices[c.topic.device_id] = definitions
        observation.session = node.session
        observation.events.extend(gap)
        observation.events.append(
            c.event(SourceKind.SPARKPLUG_DEVICE, EventKind.ONLINE, node.session)
        )
        return observation

    def _device_death(self, c: _Context) -> Observation:
        node = self._born_node(c)
        if node is None:
            return self._before_birth(c)
        events = self._check_seq(node, c)
        assert c.topic.device_id is not None
        verified = node.devices.pop(c.topic.device_id, None) is not None
        events.append(
            c.event(SourceKind.SPARKPLUG_DEVICE, EventKind.OFFLINE, node.session, verified=verified)
        )
        return Observation(events=events, session=node.session)

    def _data(self, c: _Context) -> Observation:
        node = self._born_node(c)
        if node is None:
            return self._before_birth(c)
        events = self._check_seq(node, c)
        definitions = node.definitions
        if c.topic.device_id is not None:
            device = node.devices.get(c.topic.device_id)
            if device is None:
                observation = self._before_birth(c)
                observation.events[:0] = events
                return observation
            definitions = device
        observation = Observation(events=events, session=node.session)
        for metric in c.payload.metrics:
            definition = definitions.resolve(metric)
            if definition is None:
                label = f"alias {metric.alias}" if metric.alias is not None else repr(metric.name)
                detail = f"metric {label} is not declared by the birth"
                observation.problems.append(
                    MetricProblem(metric, DeadLetterReason.UNKNOWN_ALIAS, detail)
                )
            elif metric.datatype is not None and metric.datatype != definition.datatype:
                detail = (
                    f"metric {definition.name!r} has datatype {metric.datatype}; "
                    f"its birth declared {definition.datatype}"
                )
                observation.problems.append(
                    MetricProblem(metric, DeadLetterReason.DATATYPE_MISMATCH, detail)
                )
            else:
                observation.resolved.append(ResolvedMetric(metric, definition))
        return observation

    # -- helpers ------------------------------------------------------------------------------

    def _born_node(self, c: _Context) -> _Node | None:
        node = self._nodes.get(c.topic.node_key)
        return node if node is not None and node.online else None

    def _before_birth(self, c: _Context) -> Observation:
        """Refuse a message that needs a birth ingest has not seen, and maybe ask for one."""
        what = "device" if c.topic.device_id is not None and self._born_node(c) else "node"
        detail = f"{c.topic.message_type} before the {what}'s birth; a rebirth is requested"
        observation = _refused(DeadLetterReason.DATA_BEFORE_BIRTH, detail)
        last = self._rebirth_asked.get(c.topic.node_key)
        if last is not None and c.received_at - last < self._rebirth_interval:
            return observation
        self._rebirth_asked[c.topic.node_key] = c.received_at
        observation.rebirth = True
        device = what == "device"
        observation.events.append(
            c.event(
                SourceKind.SPARKPLUG_DEVICE if device else SourceKind.SPARKPLUG_NODE,
                EventKind.DATA_BEFORE_BIRTH,
                None,
                message_type=str(c.topic.message_type),
                rebirth_requested=True,
            )
        )
        return observation

    def _check_seq(self, node: _Node, c: _Context) -> list[DeviceEvent]:
        seq = c.payload.seq
        if seq is None or not 0 <= seq < SEQ_MODULUS:
            return []
        previous, node.seq = node.seq, seq
        if previous is None or not self._track_seq:
            return []
        expected = (previous + 1) % SEQ_MODULUS
        if seq in (expected, previous):
            return []
        missing = (seq - expected) % SEQ_MODULUS
        return [
            c.event(
                SourceKind.SPARKPLUG_NODE,
                EventKind.SEQ_GAP,
                node.session,
                expected=expected,
                received=seq,
                missing=missing,
                message_type=str(c.topic.message_type),
            )
        ]


@dataclass(frozen=True, slots=True)
class _Context:
    topic: SparkplugTopic
    payload: SpPayload
    mqtt_topic: str
    received_at: datetime

    def event(
        self,
        kind: SourceKind,
        event: EventKind,
        session: str | None,
        *,
        source_id: str | None = None,
        **details: DetailValue,
    ) -> DeviceEvent:
        if source_id is None:
            source_id = (
                self.topic.node_source_id
                if kind is SourceKind.SPARKPLUG_NODE
                else self.topic.device_source_id
            )
        return DeviceEvent(
            source_kind=kind,
            source_id=source_id,
            event=event,
            ts=payload_time(self.payload) or self.received_at,
            session=session,
            details=details,
            observed_at=self.received_at,
            topic=self.mqtt_topic,
        )


def payload_time(payload: SpPayload) -> datetime | None:
    """The payload's own timestamp (ms since the epoch, UTC), if it has a usable one."""
    return ms_to_datetime(payload.timestamp_ms)


def ms_to_datetime(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _refused(reason: DeadLetterReason, detail: str) -> Observation:
    return Observation(refusal=Refusal(reason, detail))


def _bd_seq(payload: SpPayload) -> int | None:
    metric = payload.metric_named(BDSEQ_METRIC)
    if metric is None or not isinstance(metric.value, int) or isinstance(metric.value, bool):
        return None
    if metric.datatype is not None and metric.datatype not in INTEGER_TYPES:
        return None
    return metric.value


def _define(payload: SpPayload) -> tuple[_Definitions, Observation]:
    """The metric definitions of a birth; its metrics (with their values) come out resolved."""
    definitions = _Definitions()
    observation = Observation()
    for metric in payload.metrics:
        problem = None
        if metric.name is None:
            problem = "a birth metric needs a name"
        elif metric.datatype is None:
            problem = f"birth metric {metric.name!r} has no datatype"
        elif metric.name in definitions.by_name:
            problem = f"birth declares metric {metric.name!r} twice"
        elif metric.alias is not None and metric.alias in definitions.by_alias:
            problem = f"birth gives alias {metric.alias} to two metrics"
        if problem is not None or metric.name is None or metric.datatype is None:
            reason = DeadLetterReason.SCHEMA_VIOLATION
            observation.problems.append(MetricProblem(metric, reason, problem or "invalid"))
            continue
        definition = MetricDefinition(
            metric.name, metric.alias, metric.datatype, declared_unit(metric.properties)
        )
        definitions.by_name[definition.name] = definition
        if definition.alias is not None:
            definitions.by_alias[definition.alias] = definition
        observation.resolved.append(ResolvedMetric(metric, definition))
    return definitions, observation
