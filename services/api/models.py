"""Response bodies of the API, kept apart from the database rows they are built from."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Site(BaseModel):
    site_id: str
    org_id: str
    name: str
    timezone: str = Field(description="IANA time zone; daily figures use the site's local days")
    country: str = Field(description="ISO 3166-1 alpha-2 country code")
    grid_region: str


class Device(BaseModel):
    device_id: str
    asset_id: str
    site_id: str = Field(description="Site of the device's asset")
    gateway_id: str
    metric: str = Field(description="Main metric the device reports")
    unit: str
    energy_carrier: Literal["electricity", "natural_gas", "diesel", "coal", "steam", "heat"]
    description: str


class Reading(BaseModel):
    ts: datetime = Field(description="Read time at the meter, UTC")
    metric: str
    value: float
    quality: Literal["good", "uncertain", "bad"]


class ReadingsPage(BaseModel):
    # "from" is a Python keyword: the field is from_ and speaks "from" on the wire.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    device_id: str
    metric: str | None = Field(description="The metric filter, or null for every metric")
    from_: datetime = Field(alias="from", description="Start of the range (inclusive)")
    to: datetime = Field(description="End of the range (exclusive)")
    limit: int
    count: int = Field(description="Readings in this response")
    truncated: bool = Field(description="True when more readings exist before `to`")
    next_from: datetime | None = Field(
        description="When truncated: ask again with from=next_from (same to) for the rest"
    )
    readings: list[Reading] = Field(description="Ordered by ts, then metric")


class BucketWidth(StrEnum):
    """Energy bucket sizes; buckets are aligned to the site's local clock."""

    MINUTE = "1m"
    QUARTER_HOUR = "15m"
    HOUR = "1h"
    DAY = "1d"


class EnergyBucket(BaseModel):
    start: datetime = Field(description="Bucket start, with the site's UTC offset at that time")
    end: datetime = Field(description="Bucket end (exclusive), with the site's UTC offset")
    minutes: int = Field(
        description="Minutes of the bucket inside from..to: 1380 for a whole 23-hour DST day"
    )
    kwh: float = Field(description="Energy measured in the bucket")
    coverage: float = Field(
        ge=0, le=1, description="Share of `minutes` actually measured (sum of per-minute coverage)"
    )
    minutes_with_data: int = Field(description="Minutes with any measured energy")


class EnergyTotals(BaseModel):
    kwh: float
    coverage: float = Field(ge=0, le=1, description="Share of from..to actually measured")
    minutes: int
    minutes_with_data: int


class EnergySeries(BaseModel):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    device_id: str
    site_id: str
    timezone: str = Field(description="The site's time zone, which the buckets follow")
    bucket: BucketWidth
    from_: datetime = Field(alias="from", description="Start of the range (inclusive)")
    to: datetime = Field(description="End of the range (exclusive)")
    buckets: list[EnergyBucket] = Field(
        description="Every bucket overlapping from..to, in order, including ones without data"
    )
    totals: EnergyTotals


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    database: Literal["ok"] = "ok"


class ParameterError(BaseModel):
    location: str = Field(description="Where the parameter is: query or path")
    name: str = Field(description="The parameter's name as sent, e.g. from")
    detail: str = Field(description="What is wrong with it and how to fix it")
    code: str = Field(description="Machine-readable reason, e.g. timestamp_without_offset")


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (media type application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="URI reference identifying the problem type; GET it for a description"
    )
    title: str = Field(description="Short summary of the problem type")
    status: int = Field(description="HTTP status code")
    detail: str = Field(description="What went wrong in this request and what to do about it")
    instance: str | None = Field(default=None, description="The request path")
    errors: list[ParameterError] | None = Field(
        default=None, description="For invalid requests: each offending parameter"
    )


class ProblemTypeInfo(BaseModel):
    type: str
    title: str
    status: int
    description: str
