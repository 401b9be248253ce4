"""Contractual instruments for market-based Scope 2: the registry in PostgreSQL (migration 0007).

An instrument (energy attribute certificate, PPA, supplier-specific factor) is held by a site,
or by an organisation for all its sites. Like emission factors, versions are only ever added:
recording an id that exists records its next version (a correction, with a reason), and the
latest version of each id is the one allocations use. Periods are calendar dates, first day
to last day inclusive, read in each site's local time.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Self

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from carbonflow.emissions.scope2_market import InstrumentKind
from carbonflow.errors import CarbonFlowError

logger = logging.getLogger(__name__)

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)]


class InstrumentError(CarbonFlowError):
    """An instrument was refused (bad values, unknown holder, a correction without reason)."""


class NewInstrument(BaseModel):
    """What is recorded: an instrument, or a correction of one (same id)."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True)

    instrument_id: Identifier
    org_id: Identifier | None = None
    site_id: Identifier | None = None
    kind: InstrumentKind
    first_day: date
    last_day: date  # inclusive
    volume_kwh: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)] | None
    kg_co2e_per_kwh: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
    evidence: Annotated[str, Field(min_length=1)]
    reason: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.org_id is None) == (self.site_id is None):
            raise ValueError("an instrument is held by a site or by an organisation: name one")
        if self.last_day < self.first_day:
            raise ValueError(f"last day {self.last_day} is before first day {self.first_day}")
        if self.volume_kwh is None and self.kind is not InstrumentKind.SUPPLIER:
            raise ValueError(f"a {self.kind.value} needs a volume in kWh")
        return self


class InstrumentVersion(BaseModel):
    """One stored version."""

    model_config = ConfigDict(frozen=True)

    instrument_id: str
    version: int
    org_id: str | None
    site_id: str | None
    kind: InstrumentKind
    first_day: date
    until_day: date  # exclusive
    volume_kwh: Decimal | None
    kg_co2e_per_kwh: Decimal
    evidence: str
    reason: str
    recorded_at: datetime

    @property
    def last_day(self) -> date:
        return self.until_day - timedelta(days=1)

    @property
    def holder(self) -> str:
        return f"site {self.site_id}" if self.site_id else f"organisation {self.org_id}"


_COLUMNS = """
    instrument_id, version, org_id, site_id, kind, lower(period) AS first_day,
    upper(period) AS until_day, volume_kwh, kg_co2e_per_kwh, evidence, reason, recorded_at
"""
_LATEST = (
    "version = (SELECT max(version) FROM contractual_instruments w"
    " WHERE w.instrument_id = i.instrument_id)"
)
_INSERT = f"""
INSERT INTO contractual_instruments AS i (instrument_id, version, org_id, site_id, kind, period,
    volume_kwh, kg_co2e_per_kwh, evidence, reason)
VALUES (%(instrument_id)s, %(version)s, %(org_id)s, %(site_id)s, %(kind)s,
    daterange(%(first_day)s, %(until_day)s, '[)'), %(volume_kwh)s, %(kg_co2e_per_kwh)s,
    %(evidence)s, %(reason)s)
RETURNING {_COLUMNS}
"""


def validate(**fields: object) -> NewInstrument:
    """A ``NewInstrument`` from loose values; every problem in one ``InstrumentError``."""
    try:
        return NewInstrument.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'instrument'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise InstrumentError(f"instrument refused: {problems}") from exc


def record(conn: psycopg.Connection[Any], new: NewInstrument) -> InstrumentVersion:
    """Record version 1 of a new id, or the next version of an existing one (a correction:
    needs a reason, and stays with the same holder)."""
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            # Serialise versions of one id without a row to lock for its first one.
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", (new.instrument_id,)
            )
            cur.execute(
                f"SELECT {_COLUMNS} FROM contractual_instruments i WHERE instrument_id = %s"
                " ORDER BY version DESC LIMIT 1",
                (new.instrument_id,),
            )
            latest = cur.fetchone()
            if latest is not None:
                if not new.reason:
                    raise InstrumentError(
                        f"{new.instrument_id} exists (v{latest['version']}): a correction needs"
                        " a reason"
                    )
                if (latest["org_id"], latest["site_id"]) != (new.org_id, new.site_id):
                    raise InstrumentError(
                        f"{new.instrument_id} is held by "
                        f"{latest['site_id'] or latest['org_id']}; a correction keeps its holder"
                    )
            version = 1 if latest is None else latest["version"] + 1
            cur.execute(
                _INSERT,
                {
                    **new.model_dump(exclude={"last_day"}),
                    "kind": new.kind.value,
                    "version": version,
                    "until_day": new.last_day + timedelta(days=1),
                    "reason": new.reason or "recorded",
                },
            )
            stored = InstrumentVersion.model_validate(cur.fetchone())
    except psycopg.errors.ForeignKeyViolation as exc:
        raise InstrumentError(
            f"unknown {'site' if new.site_id else 'organisation'}: {exc}"
        ) from exc
    except psycopg.Error as exc:
        raise InstrumentError(f"recording {new.instrument_id} failed: {exc}") from exc
    logger.info("recorded instrument %s v%d", stored.instrument_id, stored.version)
    return stored


def listing(
    conn: psycopg.Connection[Any],
    *,
    site_id: str | None = None,
    org_id: str | None = None,
    all_versions: bool = False,
) -> list[InstrumentVersion]:
    """Instruments (latest versions, or all), optionally of one site or organisation."""
    where = [] if all_versions else [_LATEST]
    params: dict[str, object] = {}
    if site_id is not None:
        where.append("site_id = %(site)s")
        params["site"] = site_id
    if org_id is not None:
        where.append("org_id = %(org)s")
        params["org"] = org_id
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return _fetch(
        conn,
        f"SELECT {_COLUMNS} FROM contractual_instruments i {clause}"
        " ORDER BY instrument_id, version",
        params,
    )


def for_organisation(conn: psycopg.Connection[Any], org_id: str) -> list[InstrumentVersion]:
    """The latest version of every instrument held by the organisation or by its sites."""
    return _fetch(
        conn,
        f"SELECT {_COLUMNS} FROM contractual_instruments i WHERE {_LATEST} AND (org_id = %(org)s"
        " OR site_id IN (SELECT site_id FROM sites WHERE org_id = %(org)s))"
        " ORDER BY instrument_id",
        {"org": org_id},
    )


def _fetch(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, object]
) -> list[InstrumentVersion]:
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return [InstrumentVersion.model_validate(r) for r in cur.fetchall()]
    except psycopg.Error as exc:
        raise InstrumentError(f"reading instruments failed: {exc}") from exc
