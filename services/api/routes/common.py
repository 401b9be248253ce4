"""Parameters and documented error responses shared by the routers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BeforeValidator

from services.api.errors import PROBLEM_MEDIA_TYPE
from services.api.models import Problem
from services.api.timeseries import parse_timestamp

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp)]

From = Annotated[
    Timestamp,
    Query(
        alias="from",
        description="Start of the range, inclusive: RFC 3339 with an offset, e.g. "
        "2026-03-29T00:00:00Z (percent-encode a '+' offset as %2B)",
    ),
]
To = Annotated[
    Timestamp,
    Query(description="End of the range, exclusive: RFC 3339 with an offset; later than from"),
]
DeviceId = Annotated[
    str, Path(pattern=ID_PATTERN, max_length=200, description="A registered device's id")
]


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error responses; main.py moves them to application/problem+json."""
    descriptions = {
        404: "Not registered",
        422: "Invalid parameters; `errors` lists each one",
        503: "Database unavailable or query too slow; retry after Retry-After seconds",
    }
    return {
        status: {
            "model": Problem,
            "description": descriptions[status],
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for status in statuses
    }
