"""Dependencies shared by the routes: settings and database access.

Routes take ``db: Db`` and open a connection with ``async with db.connection() as conn``
only once their parameters are valid. (FastAPI resolves dependencies before it validates
query parameters, so a dependency that acquired a connection would turn a malformed request
into a 503 whenever the database is down, and hold a pooled connection for nothing.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from services.api.errors import DatabaseUnavailableError
from services.api.settings import ApiSettings


class Database:
    """Connections from the app's pool, with pool failures reported as 503 problems."""

    def __init__(self, pool: AsyncConnectionPool[Any] | None) -> None:
        self._pool = pool

    @asynccontextmanager
    async def connection(
        self, timeout_s: float | None = None
    ) -> AsyncIterator[AsyncConnection[Any]]:
        if self._pool is None:
            raise DatabaseUnavailableError("the API has no database pool (it is not started)")
        try:
            conn = await self._pool.getconn(timeout=timeout_s)
        except PoolTimeout as exc:
            raise DatabaseUnavailableError(
                "no database connection became available in time; the database may be down "
                "or overloaded"
            ) from exc
        except PoolClosed as exc:
            raise DatabaseUnavailableError("the API is shutting down") from exc
        try:
            yield conn
        finally:
            await self._pool.putconn(conn)


def get_settings(request: Request) -> ApiSettings:
    settings = request.app.state.settings
    assert isinstance(settings, ApiSettings)
    return settings


def get_database(request: Request) -> Database:
    # The pool exists only while the app's lifespan runs; without it every query is a 503.
    return Database(getattr(request.app.state, "pool", None))


Settings = Annotated[ApiSettings, Depends(get_settings)]
Db = Annotated[Database, Depends(get_database)]
