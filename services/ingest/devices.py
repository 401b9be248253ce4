"""The set of registered device ids, read from the registry and refreshed in the background."""

from __future__ import annotations

import logging
import time

import psycopg

from carbonflow.config import DatabaseSettings
from carbonflow.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3


class DeviceDirectory:
    """Known device ids; an unknown id triggers at most one early refresh per interval."""

    def __init__(self, db: DatabaseSettings, refresh_s: float) -> None:
        self._db = db
        self._refresh_s = refresh_s
        self._ids: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._ids

    async def refresh(self) -> None:
        # Counted as an attempt even if it fails: an unreachable registry is asked again only
        # after the interval, not on every batch.
        self._loaded_at = time.monotonic()
        try:
            async with await psycopg.AsyncConnection.connect(
                self._db.conninfo(), connect_timeout=CONNECT_TIMEOUT_S
            ) as conn:
                rows = await (await conn.execute("SELECT device_id FROM devices")).fetchall()
        except psycopg.Error as exc:
            raise ServiceUnavailableError(f"cannot read the device registry: {exc}") from exc
        self._ids = frozenset(row[0] for row in rows)
        logger.debug("device directory holds %d devices", len(self._ids))

    async def refresh_if_stale(self, *, wanted: set[str] | None = None) -> None:
        """Refresh when the interval has passed, or sooner (rate-limited) for unknown ids."""
        age = time.monotonic() - self._loaded_at
        unknown = bool(wanted and not wanted <= self._ids)
        if age >= self._refresh_s or (unknown and age >= min(self._refresh_s, 2.0)):
            try:
                await self.refresh()
            except ServiceUnavailableError:
                logger.warning("device registry unreachable; keeping %d known ids", len(self._ids))
