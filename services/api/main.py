"""Composition root of the API: settings -> pool -> FastAPI app -> uvicorn.

``run(settings, db)`` is what the ``carbonflow api`` command calls. ``create_app`` builds an
app without touching the database; the pool is opened by the app's lifespan, so tests can
drive the app with or without one. For ``uvicorn --factory services.api.main:app``,
:func:`app` builds one from the environment.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import uvicorn
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from carbonflow.config import DatabaseSettings
from services.api.errors import PROBLEM_MEDIA_TYPE, add_problem_handlers
from services.api.routes import devices, health, problems, sites
from services.api.settings import ApiSettings

logger = logging.getLogger(__name__)

DESCRIPTION = """
Registry, raw readings and energy of CarbonFlow's monitored devices.

* Times are RFC 3339 with an offset (`2026-03-29T00:00:00Z`; percent-encode `+` as `%2B`).
  Ranges are `[from, to)`.
* Energy buckets follow the site's local clock: a `1d` bucket is a local calendar day,
  23 or 25 hours long on DST change days, and `coverage` says how much of it was measured.
* Errors are RFC 9457 problem details (`application/problem+json`): `type` points to a
  description of the problem (`GET /problems/{slug}`), `detail` says what to change.
"""

TAGS = [
    {"name": "sites", "description": "Factory sites and their time zones"},
    {"name": "devices", "description": "Meters, their readings and their energy"},
    {"name": "health", "description": "Probes for orchestrators and load balancers"},
    {"name": "problems", "description": "What each error type means"},
]


def _package_version() -> str:
    try:
        return version("carbonflow")
    except PackageNotFoundError:
        return "0+unknown"


class _ProblemDocumentingApp(FastAPI):
    """FastAPI documents every response as application/json; errors are problem+json."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            _document_problems(super().openapi())
        assert self.openapi_schema is not None
        return self.openapi_schema


def _document_problems(schema: dict[str, Any]) -> None:
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[:1] in "45" and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")


def _lifespan(
    settings: ApiSettings, db: DatabaseSettings
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        kwargs: dict[str, Any] = {
            # Read-only statements: no transaction to hold open between them.
            "autocommit": True,
            "application_name": "carbonflow-api",
            # UTC sessions: timestamps leave the database as UTC whatever the server's zone.
            "options": f"-c statement_timeout={settings.statement_timeout_ms} -c TimeZone=UTC",
        }
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            db.conninfo(),
            min_size=db.pool_min_size,
            max_size=db.pool_max_size,
            kwargs=kwargs,
            timeout=settings.db_acquire_timeout_s,
            # A connection broken by a database restart is replaced, not handed out.
            check=AsyncConnectionPool.check_connection,
            name="carbonflow-api",
            open=False,
        )
        # Not waiting: the API starts (and /healthz answers) while the database is down;
        # /readyz tells the difference.
        await pool.open(wait=False)
        try:
            async with pool.connection(timeout=settings.ready_timeout_s):
                logger.info("database %s on %s:%s is reachable", db.name, db.host, db.port)
        except PoolTimeout:
            logger.warning(
                "database %s on %s:%s is not reachable yet; /readyz answers 503 until it is",
                db.name,
                db.host,
                db.port,
            )
        app.state.pool = pool
        try:
            yield
        finally:
            app.state.pool = None
            await pool.close()

    return lifespan


def create_app(settings: ApiSettings, db: DatabaseSettings) -> FastAPI:
    """The API app; its lifespan opens and closes the database pool."""
    app = _ProblemDocumentingApp(
        title="CarbonFlow API",
        version=_package_version(),
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=_lifespan(settings, db),
    )
    app.state.settings = settings
    app.state.pool = None
    add_problem_handlers(app, retry_after_s=settings.retry_after_s)
    app.include_router(sites.router, prefix="/v1")
    app.include_router(devices.router, prefix="/v1")
    app.include_router(health.router)
    app.include_router(problems.router)
    return app


def run(settings: ApiSettings, db: DatabaseSettings) -> None:
    """Serve the API until SIGINT/SIGTERM; logging is configured by the caller."""
    logger.info("CarbonFlow API on http://%s:%s (docs at /docs)", settings.host, settings.port)
    uvicorn.run(
        create_app(settings, db),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the caller's logging set-up
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        server_header=False,
    )


def app() -> FastAPI:
    """Factory for ``uvicorn --factory services.api.main:app``: settings from the environment."""
    return create_app(ApiSettings(), DatabaseSettings())
