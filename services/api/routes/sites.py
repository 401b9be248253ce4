"""Sites of the registry."""

from __future__ import annotations

from fastapi import APIRouter

from services.api import queries
from services.api.deps import Db
from services.api.models import Site
from services.api.routes.common import problem_responses

router = APIRouter(prefix="/sites", tags=["sites"])


@router.get("", summary="List sites", responses=problem_responses(503))
async def list_sites(db: Db) -> list[Site]:
    """Every registered site, ordered by site_id, with the time zone its daily figures use."""
    async with db.connection() as conn:
        rows = await queries.list_sites(conn)
    return [
        Site(
            site_id=r.site_id,
            org_id=r.org_id,
            name=r.name,
            timezone=r.timezone,
            country=r.country,
            grid_region=r.grid_region,
        )
        for r in rows
    ]
