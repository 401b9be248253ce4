"""What the gateway needs from a meter adapter, whatever protocol it speaks.

An adapter owns the connection to one meter. The gateway calls :meth:`MeterAdapter.read`
once per poll, under its own timeout, and never from two tasks at once; an adapter does not
retry or sleep on its own, because backoff is the poller's job and must not stall others.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from edge.errors import EdgeError
from schemas.telemetry import Reading


class MeterReadError(EdgeError):
    """One poll of one meter failed (unreachable, refused, timed out, undecodable)."""

    def __init__(self, device_id: str, reason: str) -> None:
        self.device_id = device_id
        self.reason = reason
        super().__init__(f"{device_id}: {reason}")


class MeterAdapter(Protocol):
    """One meter, read over one protocol."""

    @property
    def device_id(self) -> str: ...

    async def read(self, now: datetime) -> list[Reading]:
        """Read every configured metric once, stamped with ``now`` (UTC) unless the meter
        gives its own source timestamp; canonical units (see ``schemas.telemetry``).

        Raises MeterReadError for anything that went wrong; partial reads return the metrics
        that were read and mark nothing as good that was not.
        """
        ...

    async def close(self) -> None:
        """Release the connection; safe to call more than once, and after a failed read."""
        ...
