"""Which devices wait before their batches go out again, after reaching no subscriber.

A v5 broker answers a QoS 1 publish that matched no subscription with PUBACK reason 0x10
"No matching subscribers" and drops the message. That is no delivery: the entries stay in
the buffer and the device's batches are held back for a while, longer after each answer
in a row (``BackoffSettings``), so a broker without its subscriber (say ingest has not
subscribed again after a broker restart) is not hammered. Other devices go on meanwhile.

Batches already in flight when a hold starts come back with the same answer; they belong
to the same try and do not lengthen the hold. Pure bookkeeping: times come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import BackoffSettings
from edge.gateway.polling import backoff_delay

Device = tuple[str, str]


@dataclass(frozen=True, slots=True)
class _Hold:
    tries: int
    since: float
    until: float


class UnroutedHolds:
    def __init__(self, backoff: BackoffSettings) -> None:
        self._backoff = backoff
        self._holds: dict[Device, _Hold] = {}
        self._episode_batches = 0

    @property
    def active(self) -> bool:
        """True from the first unrouted batch until a batch is delivered again."""
        return self._episode_batches > 0

    @property
    def episode_batches(self) -> int:
        """Unrouted answers since the episode began."""
        return self._episode_batches

    def unrouted(self, device: Device, *, published_at: float, now: float) -> float:
        """Record an unrouted batch of ``device`` published at ``published_at``; the hold (s)."""
        self._episode_batches += 1
        hold = self._holds.get(device)
        if hold is not None and published_at < hold.since:
            return hold.until - now  # in flight before this hold began: the same try
        tries = 1 if hold is None else hold.tries + 1
        delay = backoff_delay(self._backoff, tries)
        self._holds[device] = _Hold(tries=tries, since=now, until=now + delay)
        return delay

    def delivered(self, device: Device) -> int:
        """A batch of ``device`` reached a subscriber; returns the ended episode's count."""
        self._holds.pop(device, None)
        ended, self._episode_batches = self._episode_batches, 0
        return ended

    def held(self, now: float) -> dict[Device, float]:
        """Devices to leave out now, with when each may go again."""
        return {d: hold.until for d, hold in self._holds.items() if hold.until > now}
