"""Liveness and readiness probes (outside /v1: they are about the process, not the data)."""

from __future__ import annotations

from fastapi import APIRouter

from services.api import queries
from services.api.deps import Db, Settings
from services.api.models import Liveness, Readiness
from services.api.routes.common import problem_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Liveness:
    """The process serves requests. Never touches the database, so a database outage does
    not get a healthy API restarted."""
    return Liveness()


@router.get("/readyz", summary="Readiness", responses=problem_responses(503))
async def readyz(db: Db, settings: Settings) -> Readiness:
    """The database answers a ping within the readiness budget; 503 problem otherwise."""
    async with db.connection(timeout_s=settings.ready_timeout_s) as conn:
        await queries.ping(conn)
    return Readiness()
