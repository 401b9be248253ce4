"""Devices, their raw readings and their energy per local-time bucket."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query

from services.api import queries
from services.api.deps import Db, Settings
from services.api.errors import InvalidParametersError, NotFoundError
from services.api.models import (
    BucketWidth,
    Device,
    EnergyBucket,
    EnergySeries,
    EnergyTotals,
    Reading,
    ReadingsPage,
)
from services.api.routes.common import ID_PATTERN, DeviceId, From, To, problem_responses
from services.api.settings import ApiSettings
from services.api.timeseries import (
    check_range,
    check_whole_minutes,
    estimate_bucket_count,
    local_buckets,
    site_zone,
    split_page,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/devices", tags=["devices"])


def _device_not_found(device_id: str) -> NotFoundError:
    return NotFoundError(
        f"no device {device_id!r} is registered; GET /v1/devices lists the registered devices"
    )


@router.get("", summary="List devices", responses=problem_responses(404, 422, 503))
async def list_devices(
    db: Db,
    site_id: Annotated[
        str | None,
        Query(
            pattern=ID_PATTERN,
            max_length=200,
            description="Only the devices of this site; an unknown site is a 404",
        ),
    ] = None,
) -> list[Device]:
    """Registered devices, ordered by device_id, each with the site of its asset."""
    async with db.connection() as conn:
        if site_id is not None and not await queries.site_exists(conn, site_id):
            raise NotFoundError(
                f"no site {site_id!r} is registered; GET /v1/sites lists the registered sites"
            )
        rows = await queries.list_devices(conn, site_id)
    return [
        Device(
            device_id=r.device_id,
            asset_id=r.asset_id,
            site_id=r.site_id,
            gateway_id=r.gateway_id,
            metric=r.metric,
            unit=r.unit,
            energy_carrier=r.energy_carrier,
            description=r.description,
        )
        for r in rows
    ]


@router.get(
    "/{device_id}/readings",
    summary="Raw readings of a device",
    responses=problem_responses(404, 422, 503),
)
async def get_readings(
    device_id: DeviceId,
    from_: From,
    to: To,
    db: Db,
    settings: Settings,
    metric: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="Only this metric, e.g. active_power"),
    ] = None,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            description="Most readings to return (server default 10,000; the maximum is a "
            "server setting, 100,000 unless configured otherwise)",
        ),
    ] = None,
) -> ReadingsPage:
    """Readings with from <= ts < to, ordered by ts then metric.

    When more than `limit` readings fall in the range, the response is `truncated` and
    `next_from` says where to continue (ask again with from=next_from and the same to).
    A page never splits the readings of one timestamp. The range is at most 31 days
    (a server setting).
    """
    check_range(from_, to, max_days=settings.readings_max_range_days)
    if limit is None:
        limit = settings.readings_default_limit
    elif limit > settings.readings_max_limit:
        raise InvalidParametersError.one(
            "query",
            "limit",
            "limit_too_large",
            f"limit {limit} is above the maximum of {settings.readings_max_limit}; "
            "page through the range with next_from instead",
        )
    async with db.connection() as conn:
        if await queries.get_device(conn, device_id) is None:
            raise _device_not_found(device_id)
        rows = await queries.fetch_readings(
            conn, device_id, from_, to, metric=metric, limit=limit + 1
        )
    page = split_page(rows, limit)
    return ReadingsPage(
        device_id=device_id,
        metric=metric,
        from_=from_,
        to=to,
        limit=limit,
        count=len(page.items),
        truncated=page.truncated,
        next_from=page.next_from,
        readings=[
            Reading(ts=r.ts, metric=r.metric, value=r.value, quality=r.quality) for r in page.items
        ],
    )


@router.get(
    "/{device_id}/energy",
    summary="Energy of a device per bucket of site-local time",
    responses=problem_responses(404, 422, 503),
)
async def get_energy(
    device_id: DeviceId,
    from_: From,
    to: To,
    db: Db,
    settings: Settings,
    bucket: Annotated[
        BucketWidth, Query(description="Bucket size, aligned to the site's local clock")
    ] = BucketWidth.HOUR,
) -> EnergySeries:
    """Energy from the per-minute series, summed per bucket of the site's local time.

    A `1d` bucket runs from local midnight to local midnight, so it has 1380 or 1500
    minutes on DST change days; `coverage` is the measured share of the bucket's real
    minutes inside from..to. Buckets without data are included (kwh 0, coverage 0).
    from and to must be whole minutes; the range is at most 366 days and 10,000 buckets
    (server settings).
    """
    check_range(from_, to, max_days=settings.energy_max_range_days)
    check_whole_minutes("from", from_)
    check_whole_minutes("to", to)
    if estimate_bucket_count(from_, to, bucket) > settings.energy_max_buckets + 2:
        raise _too_many_buckets(bucket, estimate_bucket_count(from_, to, bucket), settings)
    async with db.connection() as conn:
        device = await queries.get_device(conn, device_id)
        if device is None:
            raise _device_not_found(device_id)
        buckets = local_buckets(from_, to, bucket, site_zone(device.timezone))
        if len(buckets) > settings.energy_max_buckets:
            raise _too_many_buckets(bucket, len(buckets), settings)
        rows = await queries.energy_by_bucket(conn, device_id, from_, to, [b.lo for b in buckets])
    sums = {row.bucket - 1: row for row in rows}
    out = []
    for index, b in enumerate(buckets):
        row = sums.get(index)
        kwh = row.kwh if row else 0.0
        covered = row.covered_minutes if row else 0.0
        out.append(
            EnergyBucket(
                start=b.start,
                end=b.end,
                minutes=b.minutes,
                kwh=kwh,
                coverage=_share(covered, b.minutes),
                minutes_with_data=row.minutes_with_data if row else 0,
            )
        )
    total_minutes = sum(b.minutes for b in buckets)
    return EnergySeries(
        device_id=device_id,
        site_id=device.site_id,
        timezone=device.timezone,
        bucket=bucket,
        from_=from_,
        to=to,
        buckets=out,
        totals=EnergyTotals(
            kwh=sum(row.kwh for row in rows),
            coverage=_share(sum(row.covered_minutes for row in rows), total_minutes),
            minutes=total_minutes,
            minutes_with_data=sum(row.minutes_with_data for row in rows),
        ),
    )


def _share(covered_minutes: float, minutes: int) -> float:
    # Summing per-minute floats can overshoot 1 by a rounding error.
    return min(1.0, covered_minutes / minutes) if minutes > 0 else 0.0


def _too_many_buckets(
    bucket: BucketWidth, count: int, settings: ApiSettings
) -> InvalidParametersError:
    return InvalidParametersError.one(
        "query",
        "bucket",
        "too_many_buckets",
        f"{bucket.value} buckets over this range would be about {count}; at most "
        f"{settings.energy_max_buckets} per request: use a larger bucket or a shorter range",
    )
