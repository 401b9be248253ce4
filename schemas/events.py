"""Device events contract v1: what happened to an edge source, as ingest saw it.

Ingest writes one ``DeviceEvent`` to the events topic (Kafka key: ``source_id``) for every
presence status message and Sparkplug birth or death it receives, and for every sequence
problem it detects; the stream processor stores them in the ``device_events`` table.

Identity: an event is identified by ``(source_kind, source_id, event, ts)``, where ``ts`` is a
time the source itself wrote into its message (the status message's ``ts``, the Sparkplug
payload timestamp, the batch's ``sent_at``); only when a source gives no time at all is it the
time ingest received the message. So a redelivered message, or a retained status seen again
after an ingest restart, converges on the row already stored.

Transitions: presence events (``online`` / ``offline``) carry the source's ``session``. The
store records one only if it changes the source's last recorded state or session, so a
retained status, or a Sparkplug rebirth within the same session, is not a new transition.

``source_id`` by ``source_kind``:

- ``gateway``: the gateway id; ``device``: the device id (a meter behind a gateway);
- ``sparkplug_node``: ``{group_id}/{edge_node_id}``;
- ``sparkplug_device``: ``{group_id}/{edge_node_id}/{device_id}``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class SourceKind(StrEnum):
    GATEWAY = "gateway"
    DEVICE = "device"
    SPARKPLUG_NODE = "sparkplug_node"
    SPARKPLUG_DEVICE = "sparkplug_device"


class EventKind(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    #: Sequence numbers were skipped: messages of the source never arrived.
    SEQ_GAP = "seq_gap"
    #: A Sparkplug NDEATH whose bdSeq is not that of the node's current birth (a stale death).
    BDSEQ_MISMATCH = "bdseq_mismatch"
    #: Sparkplug data from a node or device whose birth ingest has not seen; a rebirth was asked.
    DATA_BEFORE_BIRTH = "data_before_birth"


PRESENCE_EVENTS: Final = frozenset({EventKind.ONLINE, EventKind.OFFLINE})

DetailValue = str | int | float | bool | None | list[str]


class DeviceEvent(BaseModel):
    """One thing that happened to a gateway, a meter, or a Sparkplug edge node or device."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: Literal[1] = 1
    source_kind: SourceKind
    source_id: Annotated[str, Field(min_length=1, max_length=300)]
    event: EventKind
    ts: AwareDatetime = Field(description="Event time, from the source's own message")
    session: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None,
        description="The source's session (gateway session id, Sparkplug 'bdseq-<n>')",
    )
    details: dict[str, DetailValue] = Field(
        default_factory=dict, description="Event-specific facts, e.g. expected/received seq"
    )
    observed_at: AwareDatetime = Field(description="When ingest received the message")
    topic: str = Field(description="The MQTT topic of the message")
