"""Descriptions of the problem types that error responses point to with their `type`."""

from __future__ import annotations

from fastapi import APIRouter

from services.api.errors import PROBLEM_PATH, PROBLEM_TYPES, NotFoundError
from services.api.models import ProblemTypeInfo
from services.api.routes.common import problem_responses

router = APIRouter(prefix=PROBLEM_PATH, tags=["problems"])


@router.get("/{slug}", summary="Describe a problem type", responses=problem_responses(404, 422))
async def describe_problem(slug: str) -> ProblemTypeInfo:
    """What a problem type means and what a client can do about it."""
    problem = PROBLEM_TYPES.get(slug)
    if problem is None:
        raise NotFoundError(f"no problem type {slug!r}; known: {', '.join(PROBLEM_TYPES)}")
    return ProblemTypeInfo(
        type=problem.uri,
        title=problem.title,
        status=problem.status,
        description=problem.description,
    )
