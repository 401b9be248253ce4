"""Assembles telemetry batches (contract v1) with per-device sequence numbers.

Pure domain code: the caller supplies the session id and the send time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime

from edge.simulator.factory import Machine
from schemas.telemetry import Reading, TelemetryBatch


def new_session_id(rng: random.Random) -> str:
    """A fresh session id; pass a seeded generator for a reproducible one."""
    return f"sim-{rng.getrandbits(64):016x}"


class BatchBuilder:
    """Numbers each device's batches 0, 1, 2, ... within one session."""

    def __init__(self, session_id: str) -> None:
        self._session_id = session_id
        self._next_seq: dict[str, int] = {}

    @property
    def session_id(self) -> str:
        return self._session_id

    def next_seq(self, device_id: str) -> int:
        return self._next_seq.get(device_id, 0)

    def build(
        self, machine: Machine, readings: Sequence[Reading], sent_at: datetime
    ) -> TelemetryBatch:
        """The next batch of ``machine``; raises ``pydantic.ValidationError`` if invalid."""
        seq = self.next_seq(machine.device_id)
        batch = TelemetryBatch(
            gateway_id=machine.gateway_id,
            device_id=machine.device_id,
            session_id=self._session_id,
            seq=seq,
            sent_at=sent_at,
            readings=list(readings),
        )
        # Only a batch that validated uses up a sequence number.
        self._next_seq[machine.device_id] = seq + 1
        return batch
