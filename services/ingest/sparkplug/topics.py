"""The Sparkplug B topic namespace (pure).

``spBv1.0/{group_id}/{message_type}/{edge_node_id}[/{device_id}]``; node messages (N...)
have no device id, device messages (D...) must have one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from carbonflow.errors import CarbonFlowError

NAMESPACE: Final = "spBv1.0"


class MessageType(StrEnum):
    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    NDATA = "NDATA"
    DDATA = "DDATA"
    NCMD = "NCMD"
    DCMD = "DCMD"

    @property
    def is_device_message(self) -> bool:
        return self.value.startswith("D")


#: Births and deaths: every ingest instance takes all of them, so each knows every session.
LIFECYCLE_TYPES: Final = (
    MessageType.NBIRTH,
    MessageType.NDEATH,
    MessageType.DBIRTH,
    MessageType.DDEATH,
)
#: Data: spread over the instances through a shared subscription.
DATA_TYPES: Final = (MessageType.NDATA, MessageType.DDATA)


class InvalidTopicError(CarbonFlowError):
    """A topic in the Sparkplug namespace that does not follow its structure."""


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    group_id: str
    message_type: MessageType
    edge_node_id: str
    device_id: str | None = None

    @property
    def node_key(self) -> tuple[str, str]:
        return (self.group_id, self.edge_node_id)

    @property
    def node_source_id(self) -> str:
        """The edge node as a device-event source: ``{group_id}/{edge_node_id}``."""
        return f"{self.group_id}/{self.edge_node_id}"

    @property
    def device_source_id(self) -> str:
        """The device as a device-event source: ``{group_id}/{edge_node_id}/{device_id}``."""
        return f"{self.group_id}/{self.edge_node_id}/{self.device_id}"

    @property
    def command_topic(self) -> str:
        """Where the node takes commands (NCMD), e.g. a rebirth request."""
        return f"{NAMESPACE}/{self.group_id}/{MessageType.NCMD}/{self.edge_node_id}"


def is_sparkplug(topic: str) -> bool:
    return topic.startswith(f"{NAMESPACE}/")


def parse_topic(topic: str) -> SparkplugTopic:
    """Split a Sparkplug topic into its parts; raise InvalidTopicError if it does not fit."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        raise InvalidTopicError(
            f"{topic!r} is not {NAMESPACE}/<group>/<type>/<edge node>[/<device>]"
        )
    try:
        message_type = MessageType(parts[2])
    except ValueError:
        raise InvalidTopicError(f"{parts[2]!r} is not a Sparkplug message type") from None
    if any(not part for part in parts):
        raise InvalidTopicError(f"{topic!r} has an empty id")
    device_id = parts[4] if len(parts) == 5 else None
    if message_type.is_device_message != (device_id is not None):
        raise InvalidTopicError(
            f"{message_type} needs {'a' if message_type.is_device_message else 'no'} device id"
        )
    return SparkplugTopic(parts[1], message_type, parts[3], device_id)


def subscriptions(groups: Iterable[str], share_group: str) -> tuple[list[str], list[str]]:
    """Topic filters for ``groups`` ('+' for all): (births and deaths, shared data filters).

    Births and deaths go to every instance, so each one knows every node's aliases and
    bdSeq; data goes to one instance of the share group.
    """
    lifecycle: list[str] = []
    data: list[str] = []
    for group in groups:
        for message_type in LIFECYCLE_TYPES:
            device = "/+" if message_type.is_device_message else ""
            lifecycle.append(f"{NAMESPACE}/{group}/{message_type}/+{device}")
        for message_type in DATA_TYPES:
            device = "/+" if message_type.is_device_message else ""
            data.append(f"$share/{share_group}/{NAMESPACE}/{group}/{message_type}/+{device}")
    return lifecycle, data
