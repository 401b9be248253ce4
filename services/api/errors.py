"""Errors of the API and their translation into RFC 9457 problem details.

Every error raised on purpose is an :class:`ApiError` (a ``CarbonFlowError``) carrying its
problem type; :func:`add_problem_handlers` turns those, FastAPI's request validation errors,
plain HTTP errors (unknown route, wrong method) and anything unexpected into
``application/problem+json`` bodies with a detail a client can act on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from carbonflow.errors import CarbonFlowError, ServiceUnavailableError
from services.api.models import ParameterError, Problem

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_PATH = "/problems"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str
    description: str

    @property
    def uri(self) -> str:
        # Relative, so the identifier is the same wherever the API is deployed, and it
        # resolves against the API itself, which serves the description.
        return f"{PROBLEM_PATH}/{self.slug}"


NOT_FOUND = ProblemType(
    "not-found",
    404,
    "Resource not found",
    "The site or device named in the request is not registered. GET /v1/sites and "
    "GET /v1/devices list what exists.",
)
INVALID_PARAMETERS = ProblemType(
    "invalid-parameters",
    422,
    "Invalid request parameters",
    "One or more parameters are missing, malformed or out of range; `errors` names each "
    "one and says why. Sending the same request again will fail the same way.",
)
SERVICE_UNAVAILABLE = ProblemType(
    "service-unavailable",
    503,
    "Service unavailable",
    "The database is unreachable or every connection is busy. The request was fine: retry "
    "after the number of seconds in the Retry-After header.",
)
QUERY_TIMEOUT = ProblemType(
    "query-timeout",
    503,
    "Query took too long",
    "The database gave up on the query. Ask for a shorter range, a smaller limit or a "
    "larger energy bucket, or retry later if the database is busy.",
)
INTERNAL_ERROR = ProblemType(
    "internal-error",
    500,
    "Internal error",
    "The API failed unexpectedly; the server log has the details. Retrying may not help.",
)
PROBLEM_TYPES: Mapping[str, ProblemType] = {
    p.slug: p
    for p in (NOT_FOUND, INVALID_PARAMETERS, SERVICE_UNAVAILABLE, QUERY_TIMEOUT, INTERNAL_ERROR)
}


class ApiError(CarbonFlowError):
    """Root of the errors the API raises on purpose; each maps to one problem type."""

    problem: ClassVar[ProblemType] = INTERNAL_ERROR

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[ParameterError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})


class NotFoundError(ApiError):
    problem = NOT_FOUND


class InvalidParametersError(ApiError):
    problem = INVALID_PARAMETERS

    @classmethod
    def one(cls, location: str, name: str, code: str, detail: str) -> InvalidParametersError:
        """The common case: a single parameter is wrong."""
        error = ParameterError(location=location, name=name, code=code, detail=detail)
        return cls(f"{name}: {detail}", errors=[error])


class DatabaseUnavailableError(ApiError, ServiceUnavailableError):
    problem = SERVICE_UNAVAILABLE


class QueryTimeoutError(ApiError, ServiceUnavailableError):
    problem = QUERY_TIMEOUT


def problem_response(
    request: Request,
    status: int,
    *,
    type_: str,
    title: str,
    detail: str,
    errors: Sequence[ParameterError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = Problem(
        type=type_,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=list(errors) if errors is not None else None,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _from_problem_type(
    request: Request,
    problem: ProblemType,
    detail: str,
    errors: Sequence[ParameterError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return problem_response(
        request,
        problem.status,
        type_=problem.uri,
        title=problem.title,
        detail=detail,
        errors=errors,
        headers=headers,
    )


def validation_errors(raw: Sequence[Any]) -> list[ParameterError]:
    """FastAPI/pydantic error dicts as :class:`ParameterError` with readable details."""
    errors = []
    for item in raw:
        loc = [str(part) for part in item.get("loc", ())]
        location = loc[0] if loc else "request"
        name = ".".join(loc[1:]) or location
        code = str(item.get("type", "invalid"))
        if code == "missing":
            detail = f"required {location} parameter '{name}' is missing"
        else:
            detail = str(item.get("msg", "invalid value"))
        errors.append(ParameterError(location=location, name=name, detail=detail, code=code))
    return errors


def add_problem_handlers(app: FastAPI, *, retry_after_s: int) -> None:
    retry_headers = {"Retry-After": str(retry_after_s)}

    async def on_carbonflow_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ApiError):
            headers = dict(exc.headers)
            if exc.problem.status == 503:
                headers = {**retry_headers, **headers}
                logger.warning("%s %s: %s", request.method, request.url.path, exc.detail)
            elif exc.problem.status >= 500:
                logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return _from_problem_type(request, exc.problem, exc.detail, exc.errors, headers)
        if isinstance(exc, ServiceUnavailableError):
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
            return _from_problem_type(request, SERVICE_UNAVAILABLE, str(exc), None, retry_headers)
        return await on_unexpected(request, exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = validation_errors(exc.errors())
        detail = "; ".join(f"{e.name}: {e.detail}" for e in errors) or "invalid request"
        return _from_problem_type(request, INVALID_PARAMETERS, detail, errors)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        phrase = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if exc.detail != phrase else _http_detail(request, exc.status_code)
        return problem_response(
            request,
            exc.status_code,
            type_="about:blank",
            title=phrase,
            detail=str(detail),
            headers=exc.headers,
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _from_problem_type(
            request, INTERNAL_ERROR, "unexpected error; see the server log", None, None
        )

    app.add_exception_handler(CarbonFlowError, on_carbonflow_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def _http_detail(request: Request, status: int) -> str:
    if status == 404:
        return f"no such path: {request.url.path}; /docs lists every endpoint"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}; see the Allow header"
    return HTTPStatus(status).description
