"""What the stream processor does with one batch of Kafka records, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from schemas import DeadLetterReason, DeadLetterRecord, ReadingsRecord
from services.stream import emission_store, hourly_store, metrics, rollup_store, store
from services.stream.counter_intervals import COUNTER_METRICS, counter_intervals
from services.stream.counter_routes import (
    FuelIntervals,
    counter_points,
    power_points,
    register_for,
    split_counter_intervals,
)
from services.stream.counters import COUNTER_DELTA_METHOD
from services.stream.emissions import DeviceSite, Unpriced, scope2_location
from services.stream.energy import (
    DeviceWindow,
    EnergyIntervals,
    affected_windows,
    energy_intervals,
)
from services.stream.fuel_emissions import scope1_fuel_minutes
from services.stream.hourly_emissions import scope2_location_hourly
from services.stream.lateness import split_late

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchResult:
    records: int
    new_readings: int
    energy_minutes: int
    emission_minutes: int = 0
    unpriced_minutes: int = 0  # energy and fuel minutes no factor could price
    rollup_rows: int = 0
    fuel_minutes: int = 0
    scope1_minutes: int = 0  # Scope 1 emissions rows written (emission_minutes: Scope 2)
    counter_events: int = 0
    late_readings: int = 0  # stored, but past the lateness: figures left alone, reported

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )  # counter anomalies recorded as device events (added or changed)


M = TypeVar("M", bound=BaseModel)


def decode_values(
    model: type[M], what: str, payloads: Sequence[bytes], source: str, now: datetime
) -> tuple[list[M], list[DeadLetterRecord]]:
    """Parse Kafka values as ``model``; anything undecodable becomes a dead letter naming
    ``what`` it should have been, instead of a crash."""
    decoded: list[M] = []
    rejects: list[DeadLetterRecord] = []
    for payload in payloads:
        try:
            decoded.append(model.model_validate_json(payload))
        except ValidationError as exc:
            rejects.append(
                DeadLetterRecord.of(
                    DeadLetterReason.SCHEMA_VIOLATION,
                    f"not a {what}: {exc.errors()[0]['msg']}",
                    source=source,
                    received_at=now,
                    payload=payload,
                )
            )
    return decoded, rejects


def decode_records(
    payloads: Sequence[bytes], source: str, now: datetime
) -> tuple[list[ReadingsRecord], list[DeadLetterRecord]]:
    return decode_values(ReadingsRecord, "readings record v1", payloads, source, now)


async def process_batch(
    conn: psycopg.AsyncConnection,
    records: Sequence[ReadingsRecord],
    max_gap_s: float,
    cutoff: datetime | None = None,
) -> BatchResult:
    """Store the readings and recompute every minute of energy and fuel they can have changed,
    with its emissions and the hours above it."""
    async with conn.transaction():
        new_readings = await store.insert_readings(conn, records)
        taken = len(records)
        late_count = 0
        if cutoff is not None:
            records, late = split_late(records, cutoff)
            await store.record_late_readings(conn, late, cutoff)
            late_count = sum(item.count for item in late)
        registered = await store.registered_metrics(conn, [r.device_id for r in records])
        power_windows = affected_windows(power_points(records, registered), max_gap_s)
        counter_windows = affected_windows(counter_points(records, registered), max_gap_s)
        if not power_windows and not counter_windows:
            return BatchResult(
                records=taken,
                new_readings=new_readings,
                energy_minutes=0,
                late_readings=late_count,
            )
        await store.lock_devices(conn, [w.device_id for w in (*power_windows, *counter_windows)])
        power = EnergyIntervals([], [], [], [], [])
        if power_windows:
            samples = await store.fetch_power_samples(conn, power_windows, max_gap_s)
            power = energy_intervals(power_windows, samples, max_gap_s)
            await store.upsert_energy(conn, power)
        counted = await _count(conn, counter_windows, registered, max_gap_s)
        await store.upsert_energy(conn, counted.energy, COUNTER_DELTA_METHOD)
        await store.upsert_fuel(conn, counted.fuel)
        energy = _concat(power, counted.energy)
        priced = await price_minutes(conn, energy, counted.fuel)
        rollup_rows = await rollup_store.recompute_hours(
            conn,
            rollup_store.hours_touched(
                [*energy.device_id, *counted.fuel.device_id, *(d for d, _ in counted.stale)],
                [*energy.minute, *counted.fuel.minute, *(m for _, m in counted.stale)],
            ),
        )
    return BatchResult(
        records=taken,
        new_readings=new_readings,
        energy_minutes=len(energy),
        emission_minutes=priced.scope2,
        unpriced_minutes=priced.scope2_unpriced + priced.scope1_unpriced,
        rollup_rows=rollup_rows,
        fuel_minutes=len(counted.fuel),
        scope1_minutes=priced.scope1,
        counter_events=counted.events,
        late_readings=late_count,
    )


@dataclass(frozen=True, slots=True)
class _Counted:
    energy: EnergyIntervals
    fuel: FuelIntervals
    stale: list[tuple[str, int]]
    events: int


async def _count(
    conn: psycopg.AsyncConnection,
    windows: Sequence[DeviceWindow],
    registered: dict[str, str],
    max_gap_s: float,
) -> _Counted:
    """Energy and fuel minutes of counter devices, with their anomalies recorded."""
    energy = EnergyIntervals([], [], [], [], [])
    fuel = FuelIntervals([], [], [], [], [], [])
    if not windows:
        return _Counted(energy, fuel, [], 0)
    settings = await store.register_settings(conn, [w.device_id for w in windows])
    registers = []
    for window in windows:
        register, warning = register_for(settings[window.device_id], max_gap_s)
        if warning:
            logger.warning("counter of %s: %s", window.device_id, warning)
        registers.append(register)
    metrics_of = [registered[w.device_id] for w in windows]
    readings = await store.fetch_counter_readings(conn, windows, metrics_of, max_gap_s)
    intervals, anomalies = counter_intervals(windows, readings, registers, max_gap_s)
    energy, fuel = split_counter_intervals(intervals, registered)
    stale = await store.delete_stale_counter_minutes(conn, windows, energy, fuel)
    units = {d: COUNTER_METRICS[m] for d, m in registered.items() if m in COUNTER_METRICS}
    events = await store.record_counter_anomalies(conn, anomalies, units)
    return _Counted(energy, fuel, stale, events)


def _concat(a: EnergyIntervals, b: EnergyIntervals) -> EnergyIntervals:
    return EnergyIntervals(
        device_id=[*a.device_id, *b.device_id],
        minute=[*a.minute, *b.minute],
        kwh=[*a.kwh, *b.kwh],
        sample_count=[*a.sample_count, *b.sample_count],
        coverage=[*a.coverage, *b.coverage],
    )


@dataclass(frozen=True, slots=True)
class Priced:
    """Emissions rows written and minutes left unpriced, per scope."""

    scope2: int
    scope2_unpriced: int
    scope1: int
    scope1_unpriced: int


async def price_minutes(
    conn: psycopg.AsyncConnection, energy: EnergyIntervals, fuel: FuelIntervals
) -> Priced:
    """Emissions of recomputed energy minutes (Scope 2) and fuel minutes (Scope 1), with the
    devices' sites looked up once for both."""
    if not len(energy) and not len(fuel):
        return Priced(0, 0, 0, 0)
    sites = await emission_store.device_sites(conn, [*energy.device_id, *fuel.device_id])
    scope2, scope2_unpriced = await _price_energy(conn, energy, sites)
    scope1, scope1_unpriced = await _price_fuel(conn, fuel, sites)
    return Priced(scope2, scope2_unpriced, scope1, scope1_unpriced)


async def _price_energy(
    conn: psycopg.AsyncConnection, intervals: EnergyIntervals, sites: Mapping[str, DeviceSite]
) -> tuple[int, int]:
    """Scope 2 location-based emissions of the recomputed minutes: (rows, minutes unpriced)."""
    if not len(intervals):
        return 0, 0
    # An hourly grid-intensity series prices the minutes it covers; the annual factors the rest.
    start, end = hourly_store.minute_range(intervals.minute)
    series = await hourly_store.series_covering(conn, hourly_store.regions_of(sites), start, end)
    hourly = scope2_location_hourly(intervals, sites, series)
    await emission_store.upsert_emissions(conn, hourly.rows)
    for gap in hourly.unpriced:
        logger.warning(
            "%d minutes of %s have no hourly grid intensity: %s",
            gap.minutes,
            gap.device_id,
            gap.reason,
        )
    factors = await emission_store.grid_factors(conn)
    rows, unpriced = scope2_location(hourly.rest, sites, factors)
    await emission_store.upsert_emissions(conn, rows)
    _log_unpriced(unpriced)
    return (
        len(rows) + len(hourly.rows),
        sum(gap.minutes for gap in unpriced) + hourly.unpriced_minutes,
    )


async def _price_fuel(
    conn: psycopg.AsyncConnection, fuel: FuelIntervals, sites: Mapping[str, DeviceSite]
) -> tuple[int, int]:
    """Scope 1 emissions (China's method, else IPCC's) of the recomputed fuel minutes."""
    if not len(fuel):
        return 0, 0
    parameters = await emission_store.fuel_parameters(
        conn, [site.carrier for site in sites.values()]
    )
    rows, unpriced = scope1_fuel_minutes(fuel, sites, parameters)
    await emission_store.upsert_fuel_emissions(conn, rows)
    _log_unpriced(unpriced)
    return len(rows), sum(gap.minutes for gap in unpriced)


def _log_unpriced(unpriced: Sequence[Unpriced]) -> None:
    for gap in unpriced:
        logger.warning(
            "%d minutes of %s on %s have no emission factor: %s",
            gap.minutes,
            gap.device_id,
            gap.day,
            gap.reason,
        )


# Errors that say "this data", not "the database is away": retrying would never succeed.
DATA_REFUSED = (psycopg.IntegrityError, psycopg.DataError)


async def store_batch(
    pool: AsyncConnectionPool,
    records: Sequence[ReadingsRecord],
    max_gap_s: float,
    *,
    source: str,
    now: datetime,
    lateness: timedelta | None = None,
) -> tuple[BatchResult, list[DeadLetterRecord]]:
    """Process a batch, waiting out database outages; records it refuses become dead letters.

    Nothing is skipped while the database is unreachable (the caller's offsets do not move),
    and one record the database refuses does not hold back the records around it.
    """
    cutoff = None if lateness is None else now - lateness
    try:
        return await _with_retry(pool, records, max_gap_s, cutoff), []
    except DATA_REFUSED as exc:
        logger.warning("batch refused (%s); storing its %d records one by one", exc, len(records))
    stored = BatchResult(records=0, new_readings=0, energy_minutes=0)
    rejects: list[DeadLetterRecord] = []
    for record in records:
        try:
            result = await _with_retry(pool, [record], max_gap_s, cutoff)
        except DATA_REFUSED as exc:
            rejects.append(
                DeadLetterRecord.of(
                    DeadLetterReason.STORAGE_REJECTED,
                    f"{type(exc).__name__}: {exc}".strip(),
                    source=source,
                    received_at=now,
                    device_id=record.device_id,
                    payload=record.model_dump_json(),
                )
            )
            continue
        stored += result
    return stored, rejects


async def _with_retry(
    pool: AsyncConnectionPool,
    records: Sequence[ReadingsRecord],
    max_gap_s: float,
    cutoff: datetime | None,
) -> BatchResult:
    return await with_db_retry(pool, lambda conn: process_batch(conn, records, max_gap_s, cutoff))


async def with_db_retry(
    pool: AsyncConnectionPool, work: Callable[[psycopg.AsyncConnection], Awaitable[T]]
) -> T:
    """Run ``work`` on a pooled connection until it succeeds or the data itself is refused."""
    async for attempt in AsyncRetrying(
        # Everything but a refusal of the data itself is waited out (connection lost, failover
        # to a read-only replica, a migration in progress): the batch is never skipped.
        retry=retry_if_exception(_is_transient),
        wait=wait_exponential(multiplier=0.5, max=30),
        before_sleep=_log_db_retry,
        reraise=True,
    ):
        with attempt:
            async with pool.connection() as conn:
                return await work(conn)
    raise AssertionError("unreachable: AsyncRetrying either returns or raises")


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, PoolTimeout) or (
        isinstance(exc, psycopg.Error) and not isinstance(exc, DATA_REFUSED)
    )


def _log_db_retry(state: RetryCallState) -> None:
    metrics.DB_RETRIES.inc()
    logger.warning(
        "database unavailable (%s); retrying", state.outcome and state.outcome.exception()
    )
