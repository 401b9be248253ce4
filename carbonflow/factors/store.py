"""The factor registry in PostgreSQL (migration 0004): seed, restate, read, look up.

Versions are only ever added. Seeding records version 1 of each factor in the data file and
is idempotent; ``restate`` records version n+1. Lookups follow ``carbonflow.factors.selection``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from carbonflow.factors.codes import NO_CARRIER, GwpSet, Parameter
from carbonflow.factors.errors import (
    FactorError,
    FactorNotFoundError,
    RestatementError,
    UnknownUnitError,
)
from carbonflow.factors.model import DEFAULT_FACTORS_FILE, FactorRow, load_factors, substance_of
from carbonflow.factors.model import valid_until as _valid_until
from carbonflow.factors.selection import (
    FactorKey,
    FactorMatch,
    FactorVersion,
    reference_day,
    region_chain,
    select,
)
from carbonflow.factors.units import normalise

logger = logging.getLogger(__name__)

SEED_REASON = "initial version from the project's factor data"

_VERSION_COLUMNS = """
    f.factor_id, v.version, f.region_code, f.carrier, f.parameter, f.gas, f.variant, f.gwp_set,
    f.unit, v.value, v.source_value, v.source_unit, lower(v.valid) AS valid_from,
    upper(v.valid) AS valid_until, v.source, v.source_detail, v.reason, v.recorded_at
"""
_FROM = "FROM emission_factors f JOIN emission_factor_versions v USING (factor_id)"
#: Every column of ``FactorVersion``, for readers elsewhere (e.g. async) to add a WHERE to.
SELECT_VERSIONS = f"SELECT {_VERSION_COLUMNS} {_FROM}"

_INSERT_FACTOR = """
INSERT INTO emission_factors (factor_id, scope, category, region_code, carrier, parameter, gas,
    variant, gwp_set, unit, region_label, fuel_label, gas_label)
VALUES (%(factor_id)s, %(scope)s, %(category)s, %(region_code)s, %(carrier)s, %(parameter)s,
    %(gas)s, %(variant)s, %(gwp_set)s, %(unit)s, %(region_label)s, %(fuel_label)s, %(gas_label)s)
ON CONFLICT (factor_id) DO NOTHING
"""
_INSERT_VERSION = """
INSERT INTO emission_factor_versions (factor_id, version, value, source_value, source_unit,
    valid, source, source_detail, reason)
VALUES (%(factor_id)s, %(version)s, %(value)s, %(source_value)s, %(source_unit)s,
    daterange(%(valid_from)s::date, %(valid_until)s::date, '[)'), %(source)s,
    %(source_detail)s, %(reason)s)
"""
# Two seeders at once (two services starting) both find version 1 missing: one inserts it.
_SEED_VERSION = _INSERT_VERSION + "ON CONFLICT (factor_id, version) DO NOTHING"


@dataclass
class SeedReport:
    """What seeding did. ``differs``: factors whose stored version 1 is not what the file
    says now; they are left alone (history is not rewritten) and should be restated."""

    added: list[str] = field(default_factory=list)
    unchanged: int = 0
    differs: list[str] = field(default_factory=list)


def seed(conn: psycopg.Connection[Any], rows: Sequence[FactorRow]) -> SeedReport:
    """Record version 1 of every factor not yet in the registry; idempotent."""
    report = SeedReport()
    try:
        with conn.transaction():
            stored = {v.factor_id: v for v in _fetch(conn, "WHERE v.version = 1", {})}
            for row in rows:
                version_1 = stored.get(row.factor_id)
                if version_1 is None:
                    _insert(conn, row)
                    report.added.append(row.factor_id)
                elif _matches(version_1, row):
                    report.unchanged += 1
                else:
                    report.differs.append(row.factor_id)
    except psycopg.Error as exc:
        raise FactorError(f"seeding emission factors failed: {exc}") from exc
    if report.differs:
        logger.warning(
            "stored version 1 differs from the factor data for %s; restate them to apply",
            ", ".join(report.differs),
        )
    logger.info("emission factors: %d added, %d unchanged", len(report.added), report.unchanged)
    return report


def seed_from_file(conn: psycopg.Connection[Any], path: Path = DEFAULT_FACTORS_FILE) -> SeedReport:
    return seed(conn, load_factors(path))


def restate(
    conn: psycopg.Connection[Any],
    factor_id: str,
    value: Decimal | float | str,
    unit: str,
    valid_from: date | None,
    valid_to: date | None,
    reason: str,
    source: str,
    source_detail: str = "",
) -> FactorVersion:
    """Record version n+1 of a factor; earlier versions stay as they are.

    ``valid_to`` is the last day of the period, inclusive (None: open-ended). ``unit`` may be
    any unit that converts to the factor's canonical unit (gCO2/kWh for a kgCO2/kWh factor).
    """
    if not reason.strip() or not source.strip():
        raise RestatementError("a restatement needs a reason and a source")
    if valid_from is not None and valid_to is not None and valid_to < valid_from:
        raise RestatementError(f"valid_to {valid_to} is before valid_from {valid_from}")
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise RestatementError(f"not a number: {value!r}") from exc
    if not number.is_finite() or number < 0:
        raise RestatementError(f"a factor value must be finite and not negative: {value}")
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            # Locking the factor serialises concurrent restatements of it.
            cur.execute(
                "SELECT parameter, gas, unit FROM emission_factors WHERE factor_id = %s FOR UPDATE",
                (factor_id,),
            )
            factor = cur.fetchone()
            if factor is None:
                raise FactorNotFoundError(f"unknown factor {factor_id}")
            cur.execute(
                "SELECT max(version) AS latest FROM emission_factor_versions WHERE factor_id = %s"
                " GROUP BY factor_id",
                (factor_id,),
            )
            latest = cur.fetchone()
            next_version = (latest["latest"] if latest else 0) + 1
            normalised = _normalise_for(factor, number, unit)
            cur.execute(
                _INSERT_VERSION,
                {
                    "factor_id": factor_id,
                    "version": next_version,
                    "value": normalised,
                    "source_value": number,
                    "source_unit": unit.strip(),
                    "valid_from": valid_from,
                    "valid_until": _valid_until(valid_to),
                    "source": source.strip(),
                    "source_detail": source_detail.strip(),
                    "reason": reason.strip(),
                },
            )
    except psycopg.Error as exc:
        raise FactorError(f"restating {factor_id} failed: {exc}") from exc
    logger.info("restated %s as version %d: %s", factor_id, next_version, reason)
    return get_version(conn, factor_id, next_version)


def versions(conn: psycopg.Connection[Any], factor_id: str) -> list[FactorVersion]:
    """Every version of a factor, oldest first."""
    found = _fetch(conn, "WHERE f.factor_id = %(id)s ORDER BY v.version", {"id": factor_id})
    if not found:
        raise FactorNotFoundError(f"unknown factor {factor_id}")
    return found


def get_version(
    conn: psycopg.Connection[Any], factor_id: str, version: int | None = None
) -> FactorVersion:
    """One version of a factor (default: its latest), e.g. the one an emissions row names."""
    every = versions(conn, factor_id)
    if version is None:
        return every[-1]
    for candidate in every:
        if candidate.version == version:
            return candidate
    raise FactorNotFoundError(f"{factor_id} has no version {version}")


def list_factors(
    conn: psycopg.Connection[Any],
    *,
    region: str | None = None,
    carrier: str | None = None,
    parameter: Parameter | None = None,
) -> list[FactorVersion]:
    """The latest version of each factor, optionally filtered, ordered by factor id."""
    where = [
        "v.version = (SELECT max(version) FROM emission_factor_versions w"
        " WHERE w.factor_id = f.factor_id)"
    ]
    params: dict[str, object] = {}
    if region is not None:
        where.append("lower(f.region_code) = lower(%(region)s)")
        params["region"] = region
    if carrier is not None:
        where.append("f.carrier = %(carrier)s")
        params["carrier"] = carrier
    if parameter is not None:
        where.append("f.parameter = %(parameter)s")
        params["parameter"] = parameter.value
    return _fetch(conn, f"WHERE {' AND '.join(where)} ORDER BY f.factor_id", params)


def lookup(
    conn: psycopg.Connection[Any],
    key: FactorKey,
    at: datetime,
    *,
    grid_region: str | None,
    country: str | None,
    timezone: str = "UTC",
    known_at: datetime | None = None,
    allow_proxy: bool = True,
) -> FactorMatch:
    """The factor version in force for a place, a key and a moment (see ``selection``).

    ``timezone`` (the site's) decides the calendar date of ``at``. ``known_at`` answers as
    the registry stood then (versions recorded later are ignored), to reproduce a figure.
    """
    chain = region_chain(grid_region, country)
    day = reference_day(at, timezone)
    where = [
        "lower(f.region_code) = ANY(%(regions)s)",
        "f.carrier = %(carrier)s",
        "f.parameter = %(parameter)s",
        "f.gas = %(gas)s",
        "f.variant = %(variant)s",
        "f.gwp_set = %(gwp_set)s",
        "(lower(v.valid) IS NULL OR lower(v.valid) <= %(day)s)",  # never a future factor
    ]
    params: dict[str, object] = {
        "regions": [code.casefold() for code, _ in chain],
        "carrier": key.carrier,
        "parameter": key.parameter.value,
        "gas": key.gas,
        "variant": key.variant,
        "gwp_set": key.gwp_set,
        "day": day,
    }
    if key.unit is not None:
        where.append("f.unit = %(unit)s")
        params["unit"] = key.unit
    if known_at is not None:
        where.append("v.recorded_at <= %(known_at)s")
        params["known_at"] = known_at
    candidates = _fetch(conn, f"WHERE {' AND '.join(where)}", params)
    try:
        return select(candidates, chain, day, allow_proxy=allow_proxy)
    except FactorNotFoundError as exc:
        raise FactorNotFoundError(f"{_describe(key)}: {exc}") from exc


def lookup_for_site(
    conn: psycopg.Connection[Any],
    site_id: str,
    key: FactorKey,
    at: datetime,
    *,
    known_at: datetime | None = None,
    allow_proxy: bool = True,
) -> FactorMatch:
    """``lookup`` with the grid region, country and time zone of a registered site."""
    row = conn.execute(
        "SELECT grid_region, country, timezone FROM sites WHERE site_id = %s", (site_id,)
    ).fetchone()
    if row is None:
        raise FactorNotFoundError(f"unknown site {site_id}")
    grid_region, country, timezone = row
    return lookup(
        conn,
        key,
        at,
        grid_region=grid_region,
        country=country,
        timezone=timezone,
        known_at=known_at,
        allow_proxy=allow_proxy,
    )


def gwp(conn: psycopg.Connection[Any], gwp_set: GwpSet | str, gas: str) -> FactorVersion:
    """The latest version of the global warming potential of ``gas`` in a GWP set.

    Gas keys: CO2, CH4, N2O, SF6, and CH4_fossil / CH4_non_fossil where the set tells them
    apart (see ``COMBUSTION_CH4``).
    """
    try:
        chosen = GwpSet(gwp_set)
    except ValueError as exc:
        raise FactorNotFoundError(f"unknown GWP set {gwp_set!r} (AR5 or AR6)") from exc
    found = _fetch(
        conn,
        "WHERE f.parameter = 'gwp' AND f.gwp_set = %(set)s AND f.gas = %(gas)s"
        " ORDER BY v.version DESC LIMIT 1",
        {"set": chosen.value, "gas": gas},
    )
    if not found:
        raise FactorNotFoundError(f"no {gwp_set} GWP for {gas}")
    return found[0]


# The CH4 GWP to apply to combustion emissions, per set: AR5's CH4 value, and AR6's
# non-fossil value, which the GHG Protocol (GWP values v2.0, 2024) prescribes for all
# combustion CH4 including fossil fuels (the fossil values are for fugitive methane).
COMBUSTION_CH4: dict[GwpSet, str] = {GwpSet.AR5: "CH4", GwpSet.AR6: "CH4_non_fossil"}


def _fetch(
    conn: psycopg.Connection[Any], clause: str, params: dict[str, object]
) -> list[FactorVersion]:
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {_VERSION_COLUMNS} {_FROM} {clause}", params)
            return [FactorVersion.model_validate(record) for record in cur.fetchall()]
    except psycopg.errors.UndefinedTable as exc:
        raise FactorError(
            "the database lacks the emission factor tables: run `carbonflow db migrate`"
        ) from exc
    except psycopg.Error as exc:
        raise FactorError(f"reading emission factors failed: {exc}") from exc


def _insert(conn: psycopg.Connection[Any], row: FactorRow) -> None:
    conn.execute(
        _INSERT_FACTOR,
        {
            "factor_id": row.factor_id,
            "scope": row.scope,
            "category": row.category,
            "region_code": row.region_code,
            "carrier": row.carrier,
            "parameter": row.parameter.value,
            "gas": row.gas_key,
            "variant": row.variant,
            "gwp_set": row.gwp_set.value if row.gwp_set else "",
            "unit": row.canonical_unit,
            "region_label": row.region,
            "fuel_label": row.fuel,
            "gas_label": row.gas,
        },
    )
    conn.execute(_SEED_VERSION, _version_params(row))


def _version_params(row: FactorRow) -> dict[str, object]:
    return {
        "factor_id": row.factor_id,
        "version": 1,
        "value": row.canonical_value,
        "source_value": row.value,
        "source_unit": row.unit,
        "valid_from": row.valid_from,
        "valid_until": row.valid_until,
        "source": row.source,
        "source_detail": row.source_detail,
        "reason": SEED_REASON,
    }


def _matches(stored: FactorVersion, row: FactorRow) -> bool:
    return (
        stored.value == row.canonical_value
        and stored.source_value == row.value
        and stored.source_unit == row.unit
        and stored.unit == row.canonical_unit
        and stored.valid_from == row.valid_from
        and stored.valid_until == row.valid_until
        and stored.source == row.source
        and stored.source_detail == row.source_detail
    )


def _normalise_for(factor: dict[str, Any], value: Decimal, unit: str) -> Decimal:
    parameter = Parameter(factor["parameter"])
    try:
        normalised = normalise(value, unit, substance_of(parameter, factor["gas"]))
    except UnknownUnitError as exc:
        raise RestatementError(str(exc)) from exc
    if normalised.unit != factor["unit"]:
        raise RestatementError(
            f"unit {unit!r} converts to {normalised.unit}, but the factor is in {factor['unit']}"
        )
    if parameter is Parameter.OXIDATION_FRACTION and normalised.value > 1:
        raise RestatementError(f"an oxidation fraction is at most 1, got {normalised.value}")
    return normalised.value


def _describe(key: FactorKey) -> str:
    parts = [
        key.carrier if key.carrier != NO_CARRIER else "",
        key.parameter.value,
        key.gas,
        key.variant,
        key.gwp_set,
        key.unit or "",
    ]
    return " ".join(part for part in parts if part)
